#!/usr/bin/env bash
# Create a virtual environment and install paged_flex with its development tools.
# usage: tools/setup_env.sh [VENV_DIR] [TORCH_SPEC]
set -euo pipefail
venv=${1:-.venv}
torch_spec=${2:-torch==2.13.0}
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "$torch_spec"
"$venv/bin/python" -m pip install -q -e ".[dev]"
"$venv/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
"$venv/bin/python" -m pip check
echo "paged_flex environment ready in $venv"
