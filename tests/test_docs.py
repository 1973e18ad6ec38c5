"""The docs site: built by tools/build_docs.py, opened page by page in headless Chromium.

Every page must show its title and the sidebar, every internal link must reach an existing page (and
anchor), nothing may load from the network, and no Quarto syntax may leak. The home page is
screenshotted to _site/screenshot.png (committed as docs/screenshot.png by `make docs-screenshot`).
"""

import re, shutil, struct, subprocess, sys, tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote

import pytest
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_docs  # noqa: E402

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
]
QUARTO_LEAKS = [
    r"^\s*:::",
    r"\{[.#][A-Za-z]",
    r"\{\{<",
    r"^output-file:",
    r"^---\s*\n\s*(title|description):",
]


def chromium():
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        pytest.skip("chromium not found: `apt-get install chromium` (Debian) to run the browser tests")
    return exe


def run_chromium(exe, args, timeout=60):
    with tempfile.TemporaryDirectory(prefix="pf_chromium_") as profile:
        r = subprocess.run(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    assert r.returncode == 0, f"chromium {args} failed ({r.returncode}):\n{r.stderr[-2000:]}"
    return r.stdout


# ---------------------------------------------------------------- pure helpers, no browser


def test_pandoc_ids():
    assert build_docs.pandoc_id("BlockTables.extend") == "blocktables.extend"
    assert build_docs.pandoc_id("slots_of") == "slots_of"
    assert build_docs.pandoc_id("3 Numbers & Symbols!") == "numbers-symbols"
    assert build_docs.pandoc_id("Index arithmetic") == "index-arithmetic"


def test_clean_quarto():
    md = (
        "::: {.callout-note}\nA **note**.\n:::\n\n## Head {#my-id .unnumbered}\n\n"
        "[small]{.smallcaps} ![x](a.png){width=50%} {{< "
        "include x.md >}}\n\n```python\nd = {.5: 1}{.keep}\n```"
    )
    out = build_docs.clean_quarto(md)
    assert '<div class="callout callout-note">' in out and '<div class="callout-title">Note</div>' in out
    assert "</div>" in out and ":::" not in out
    assert '## Head <span data-pf-id="my-id"></span>' in out
    assert "small ![x](a.png) " in out and "{{<" not in out
    assert "d = {.5: 1}{.keep}" in out  # code blocks are left alone


# ---------------------------------------------------------------- the built site in a browser


@pytest.fixture(scope="module")
def site():
    try:
        return build_docs.build(ROOT)
    except SystemExit as e:
        pytest.fail(f"tools/build_docs.py failed: {e}")


@pytest.fixture(scope="module")
def doms(site):
    "Page path under _site -> the DOM Chromium rendered for it."
    exe = chromium()
    pages = sorted(p.relative_to(site.out).as_posix() for p in site.out.rglob("*.html"))
    with ThreadPoolExecutor(3) as ex:
        html = ex.map(lambda p: run_chromium(exe, ["--dump-dom", (site.out / p).as_uri()]), pages)
        return {p: BeautifulSoup(h, "html.parser") for p, h in zip(pages, html)}


def test_every_notebook_has_a_page(site):
    nbs = build_docs.notebooks(site.nbs)
    assert [p["rel"] for p in site.pages if p["rel"] is not None] == nbs
    assert site.pages[0]["out"] == "index.html"
    for p in site.pages:
        assert (site.out / p["out"]).is_file(), p["out"]


def test_pages_show_title_and_nav(site, doms):
    assert set(doms) == {p["out"] for p in site.pages}
    for p in site.pages:
        dom, title = doms[p["out"]], build_docs.plain(p["title"])
        assert title in dom.title.get_text(), (p["out"], dom.title)
        assert dom.find(id="page-title").get_text(" ", strip=True) == title, p["out"]
        nav = dom.find("nav", id="sidebar")
        assert nav is not None, f"{p['out']}: no sidebar"
        nav_links = [a["href"] for a in nav.select("li.page > a")]
        assert len(nav_links) == len(site.pages), (p["out"], nav_links)
        assert nav.select_one("li.page.active > a").get_text(strip=True) == title


def test_api_reference_in_nav(site, doms):
    documented = [p for p in site.pages if p["api"]]
    assert documented, "no show_doc output found in any notebook"
    nav = doms["index.html"].find("nav", id="sidebar")
    api_links = [a["href"] for a in nav.select("ul.api a")]
    assert len(api_links) == sum(len(p["api"]) for p in documented)
    ref = doms[build_docs.REFERENCE].find("main")
    assert len(ref.select("li a")) == len(api_links)


def _ids(dom):
    return {t["id"] for t in dom.find_all(id=True)}


def test_internal_links_resolve(site, doms):
    broken = []
    for page, dom in doms.items():
        here = (site.out / page).parent
        refs = [("a", a["href"]) for a in dom.find_all("a", href=True)]
        refs += [("img", i["src"]) for i in dom.find_all("img", src=True)]
        for tag, url in refs:
            if re.match(r"^([a-z][a-z0-9+.-]*:|//)", url, re.I):
                continue  # external or data: URL
            path, _, frag = url.partition("#")
            target = (here / unquote(path)).resolve() if path else (site.out / page).resolve()
            if not target.is_file():
                broken.append(f"{page}: {tag} {url} -> missing {target}")
            elif frag and target.suffix == ".html":
                tdom = doms.get(target.relative_to(site.out.resolve()).as_posix())
                if tdom is None or unquote(frag) not in _ids(tdom):
                    broken.append(f"{page}: {url} -> no #{frag}")
    assert not broken, "broken internal links:\n" + "\n".join(broken)


def test_no_network_and_no_quarto_leftovers(doms):
    for page, dom in doms.items():
        for tag in dom.find_all(["script", "link", "img", "iframe"]):
            url = tag.get("src") or tag.get("href") or ""
            assert not re.match(r"^(https?:)?//", url), f"{page} loads {url} from the network"
        for pre in dom.select(".input_area pre"):
            assert not re.search(r"^\s*#\|", pre.get_text(), re.M), (
                f"{page} shows a #| directive:\n{pre.get_text()}"
            )
        main = BeautifulSoup(str(dom.find("main")), "html.parser")
        for code in main.find_all(["pre", "code"]):
            code.decompose()
        prose = main.get_text("\n")
        for leak in QUARTO_LEAKS:
            m = re.search(leak, prose, re.M)
            assert not m, f"{page} shows Quarto syntax: {prose[max(0, m.start() - 60) : m.end() + 60]!r}"


def test_home_screenshot(site, doms):
    shot = site.out / "screenshot.png"  # docs/screenshot.png is a committed copy (make docs-screenshot)
    shot.parent.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    run_chromium(
        chromium(), [f"--screenshot={shot}", "--window-size=1280,900", (site.out / "index.html").as_uri()]
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == (1280, 900), (w, h)
    assert len(data) > 10_000, f"screenshot is only {len(data)} bytes"
    from PIL import Image

    with Image.open(shot) as im:
        colors = im.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 50, "screenshot looks blank"
