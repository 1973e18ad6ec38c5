"""tools/check_sync.py: the repo is in sync, and the check fails when a generated file drifts."""

import shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "tools" / "check_sync.py"
BIN = Path(sys.executable).parent


def check(root=ROOT):
    r = subprocess.run(
        [sys.executable, str(CHECK), "--root", str(root)], capture_output=True, text=True, timeout=120
    )
    return r.returncode, r.stdout + r.stderr


def test_repo_in_sync():
    rc, out = check()
    assert rc == 0, f"tools/check_sync.py failed:\n{out}"


@pytest.fixture
def synced_copy(tmp_path):
    "A copy of the repo's sources in which cell ids, modules and README were just regenerated."
    for name in ("settings.ini", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, tmp_path / name)
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")
    shutil.copytree(ROOT / "nbs", tmp_path / "nbs", ignore=ignore)
    shutil.copytree(ROOT / "paged_flex", tmp_path / "paged_flex", ignore=ignore)
    for cmd in (
        [str(BIN / "nbdev_clean")],
        [str(BIN / "nbdev_export")],
        [sys.executable, str(ROOT / "tools" / "make_readme.py"), "--root", str(tmp_path)],
    ):
        r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{cmd}: {r.stderr}"
    return tmp_path


def test_synced_copy_passes(synced_copy):
    rc, out = check(synced_copy)
    assert rc == 0, out
    assert "in sync" in out


def test_edited_module_fails(synced_copy):
    mod = next(p for p in sorted((synced_copy / "paged_flex").glob("*.py")) if not p.name.startswith("_"))
    lines = mod.read_text().splitlines(keepends=True)
    i = next(i for i, l in enumerate(lines) if l.strip() and not l.startswith("#"))
    lines[i] = lines[i].rstrip("\n") + "  # hand edit\n"
    mod.write_text("".join(lines))
    rc, out = check(synced_copy)
    assert rc != 0
    assert f"paged_flex/{mod.name}" in out and "nbdev_export" in out


def test_stale_version_and_modidx_fail(synced_copy):
    init, idx = synced_copy / "paged_flex" / "__init__.py", synced_copy / "paged_flex" / "_modidx.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "9'))
    idx.write_text(idx.read_text() + "\n")
    rc, out = check(synced_copy)
    assert rc != 0 and "paged_flex/__init__.py" in out and "paged_flex/_modidx.py" in out


def test_extra_or_missing_module_fails(synced_copy):
    (synced_copy / "paged_flex" / "handwritten.py").write_text("x = 1\n")
    next(p for p in sorted((synced_copy / "paged_flex").glob("*.py")) if not p.name.startswith("_")).unlink()
    rc, out = check(synced_copy)
    assert rc != 0 and "handwritten.py: not written by nbdev_export" in out and "missing" in out


def test_edited_readme_fails(synced_copy):
    readme = synced_copy / "README.md"
    readme.write_text(readme.read_text() + "\nA hand-written line.\n")
    rc, out = check(synced_copy)
    assert rc != 0 and "README.md" in out and "make_readme.py" in out


def test_notebook_without_cell_ids_fails(synced_copy):
    import json

    nb_path = sorted((synced_copy / "nbs").glob("*.ipynb"))[0]
    nb = json.loads(nb_path.read_text())
    for c in nb["cells"]:
        c.pop("id", None)
    nb["nbformat_minor"] = 4
    nb_path.write_text(json.dumps(nb, indent=1))
    rc, out = check(synced_copy)
    assert rc != 0 and "without ids" in out and "nbdev_clean" in out


def test_readme_text_rules(tmp_path):
    "What make_readme keeps from a notebook, and how it renders it."
    import nbformat as nbf

    sys.path.insert(0, str(ROOT / "tools"))
    from make_readme import readme_text

    out = lambda kind, **kw: nbf.v4.new_output(kind, **kw)
    png = {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure size 640x480 with 1 Axes>"}
    nb = nbf.v4.new_notebook(
        cells=[
            nbf.v4.new_code_cell("#| default_exp core"),
            nbf.v4.new_code_cell("#| hide\nimport secret"),
            nbf.v4.new_markdown_cell("# demo\n\n> One line.\n\n![diagram](images/d.png)"),
            nbf.v4.new_code_cell(
                "#| export\nx = 1\nprint(x)\nx",
                outputs=[
                    out("stream", name="stdout", text="1\n"),
                    out("stream", name="stderr", text="warning\n"),
                    out("execute_result", data={"text/plain": "1"}, execution_count=1),
                ],
            ),
            nbf.v4.new_code_cell("plot()", outputs=[out("display_data", data=png)]),
            nbf.v4.new_code_cell(
                "#| echo: false\nshown_output()", outputs=[out("stream", name="stdout", text="only\n")]
            ),
            nbf.v4.new_code_cell("#| include: false\ngone()"),
        ]
    )
    (tmp_path / "nbs").mkdir()
    nbf.write(nb, tmp_path / "nbs" / "index.ipynb")
    text = readme_text(tmp_path / "nbs" / "index.ipynb", root=tmp_path)
    body = text.split("\n", 1)[1]  # after the autogenerated warning
    assert body == (
        "\n# demo\n\n> One line.\n\n![diagram](nbs/images/d.png)\n\n"
        "```python\nx = 1\nprint(x)\nx\n```\n\n```\n1\n1\n```\n\n"
        "```python\nplot()\n```\n\n```\nonly\n```\n"
    )
    assert text == readme_text(tmp_path / "nbs" / "index.ipynb", root=tmp_path)
