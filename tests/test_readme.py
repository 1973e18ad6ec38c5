"""The README's Python examples run as they are, in order, from the repository root.

They are the cells of nbs/index.ipynb, run in one fresh namespace (each imports what it uses); the
results examples read nbs/results. The first example loads the default model (SmolLM2-135M-Instruct), so
it needs `paged-flex assets` (or `make venv`) to have converted it once.

    python -m pytest -q tests/test_readme.py
"""

from __future__ import annotations
import json, os, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S | re.M)


def default_model_ready() -> bool:
    from paged_flex.assets import CONVERSION_MARKER, SMOLLM2_NAME, assets_dir

    return (assets_dir() / SMOLLM2_NAME / CONVERSION_MARKER).is_file()


def test_readme_examples_run(monkeypatch, capsys):
    blocks = python_blocks()
    assert len(blocks) >= 3, "README.md lost its examples"
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace = {}  # as a reader runs them: each example imports what it uses
    ran = 0
    for i, code in enumerate(blocks):
        if "LLM()" in code and not default_model_ready():
            continue  # reported below
        exec(compile(code, f"README.md python block {i}", "exec"), namespace)
        ran += 1
    out = capsys.readouterr().out
    assert "max deviation from gather + SDPA" in out
    if ran < len(blocks):
        pytest.skip(
            f"ran {ran} of {len(blocks)} README examples; the LLM() one needs `paged-flex assets` first"
        )
