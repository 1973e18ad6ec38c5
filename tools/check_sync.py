"""Check that the generated files match their notebooks; exit 1 naming each file that differs.

(a) paged_flex/**/*.py (modules, __init__.py with its __version__, _modidx.py) must equal what
    `nbdev_export` writes from nbs/: we export into a temporary copy of settings.ini + nbs/ with an
    empty library folder and compare every .py file both ways.
(b) README.md must equal `readme_text(<readme_nb>)` from tools/make_readme.py.

    python tools/check_sync.py [--root REPO]
"""

import argparse, configparser, difflib, json, os, re, shutil, subprocess, sys, tempfile
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
from make_readme import readme_nb_path, readme_text  # noqa: E402

_EXPORT = "from nbdev.doclinks import nbdev_export; nbdev_export()"


def _settings(root):
    cfg = configparser.ConfigParser()
    cfg.read(root / "settings.ini")
    d = cfg["DEFAULT"]
    return d.get("nbs_path", "nbs"), d.get("lib_path", d.get("lib_name", d.get("repo")))


def _py_files(lib):
    skip = ("__pycache__", ".ipynb_checkpoints")
    return {
        p.relative_to(lib).as_posix(): p
        for p in sorted(lib.rglob("*.py"))
        if not any(part in skip for part in p.relative_to(lib).parts)
    }


def _nbs_without_ids(nbs_dir):
    """Notebooks (as `nbs/...` paths) with code cells lacking an `id`:
    nbdev_export invents random ids for them."""
    res = []
    for nb in sorted(nbs_dir.rglob("*.ipynb")):
        if any(p.startswith((".", "_")) for p in nb.relative_to(nbs_dir).parts):
            continue
        cells = json.loads(nb.read_text(encoding="utf-8")).get("cells", [])
        if any(c.get("cell_type") == "code" and "id" not in c for c in cells):
            res.append(nb.relative_to(nbs_dir.parent).as_posix())
    return res


def _mask_ids(text, nb_paths):
    "Blank the cell ids in `# %% ../nbs/x.ipynb #id` headers of the notebooks in `nb_paths`."
    for nb in nb_paths:
        text = re.sub(r"^(# %% \S*" + re.escape(nb) + r") #[0-9a-zA-Z_-]+$", r"\1 #<no id>", text, flags=re.M)
    return text


def _diff(want, got, name, n=6):
    lines = list(
        difflib.unified_diff(
            want.splitlines(), got.splitlines(), f"expected/{name}", f"current/{name}", lineterm="", n=1
        )
    )
    more = f"\n      ... ({len(lines) - n} more diff lines)" if len(lines) > n else ""
    return "\n".join("      " + l for l in lines[:n]) + more


def export_problems(root):
    "List of messages, one per library .py file that differs from a fresh `nbdev_export`."
    nbs, lib = _settings(root)
    with tempfile.TemporaryDirectory(prefix="pf_sync_") as tmp:
        tmp = Path(tmp)
        shutil.copy2(root / "settings.ini", tmp / "settings.ini")
        shutil.copytree(
            root / nbs, tmp / nbs, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__")
        )
        (tmp / lib).mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if k != "IN_TEST"}  # IN_TEST makes nbdev_export a no-op
        r = subprocess.run([sys.executable, "-c", _EXPORT], cwd=tmp, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            return [
                f"nbdev_export failed in a temporary copy (exit {r.returncode}):\n{r.stderr.strip()[-3000:]}"
            ]
        want, have = _py_files(tmp / lib), _py_files(root / lib)
        no_ids = _nbs_without_ids(root / nbs)
        problems = [
            f"  {nb}: code cells without ids, so every nbdev_export writes new random ids into the "
            f"`# %%` headers (fix: `nbdev_clean` adds ids, then `nbdev_export`)"
            for nb in no_ids
        ]
        for name in sorted(set(want) | set(have)):
            if name not in have:
                problems.append(f"  {lib}/{name}: missing (nbdev_export would write it)")
            elif name not in want:
                problems.append(
                    f"  {lib}/{name}: not written by nbdev_export from {nbs}/ "
                    "(stale module of a renamed/removed notebook, or hand-written)"
                )
            else:
                w, h = (_mask_ids(f.read_text(encoding="utf-8"), no_ids) for f in (want[name], have[name]))
                if w != h:
                    problems.append(f"  {lib}/{name}: differs from nbdev_export output\n{_diff(w, h, name)}")
        return problems


def readme_problems(root):
    nb = readme_nb_path(root)
    readme = root / "README.md"
    if not nb.exists():
        return [f"  {nb.relative_to(root)}: readme notebook missing"]
    want = readme_text(nb, root=root)
    if not readme.exists():
        return ["  README.md: missing"]
    have = readme.read_text(encoding="utf-8")
    if want == have:
        return []
    return [f"  README.md: differs from {nb.relative_to(root)}\n{_diff(want, have, 'README.md')}"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(TOOLS.parent), help="repo root (holds settings.ini)")
    root = Path(ap.parse_args(argv).root).resolve()
    ok = True
    exp = export_problems(root)
    if exp:
        ok = False
        print("Library out of sync with the notebooks:\n" + "\n".join(exp))
        print(
            "  fix: run `nbdev_export` (edit nbs/*.ipynb, never "
            "the .py files; delete stale modules by hand)\n"
        )
    rd = readme_problems(root)
    if rd:
        ok = False
        print("README out of sync:\n" + "\n".join(rd))
        print("  fix: run `python tools/make_readme.py` (edit nbs/index.ipynb, never README.md)\n")
    if ok:
        print("in sync: library modules match nbdev_export, README.md matches the readme notebook")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
