"""The docs site and the README: the site built by tools/build_docs.py, opened in headless Chromium.

Every page must show its title and the sidebar with its search box, every internal link must reach an
existing page (and anchor), nothing may load from the network or link outside the repository (bar a few
deliberate references), no Quarto syntax may leak, stored outputs show no stderr, widget or build-machine
path, each API entry's `source` link sits in its own heading and reaches its `def`, the API reference gives
signatures and summaries, search finds `LLM.generate`, each page has its table of contents, and nothing
is cut off at the right edge at 1280 pixels. One Chromium process renders every page (in iframes of a
harness page) and measures its layout; three more take the screenshots of home, API reference and engine
(_site/screenshot-*.png, committed under docs/). The README's tests need no browser: its notebook list is
the notebooks, its pip section names the pins the code uses, its examples import what they use.
"""

import ast, builtins, configparser, json, re, shutil, struct, subprocess, sys, tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
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
    "--mute-audio",
]
QUARTO_LEAKS = [
    r"^\s*:::",
    r"\{[.#][A-Za-z]",
    r"\{\{<",
    r"^output-file:",
    r"^---\s*\n\s*(title|description):",
]
# hosts a page may link to on purpose (papers and the libraries we build on); anything else is a leak
EXTERNAL_OK = (
    "arxiv.org",
    "pytorch.org",
    "docs.python.org",
    "huggingface.co",
    "docs.vllm.ai",
    "triton-lang.org",
)
REQUIRED_API = ["LLM", "LLM.generate", "LLM.stream", "LLMEngine", "SamplingParams", "RequestOutput"]
REQUIRED_API += [
    "LLM.get_tokenizer",
    "LLM.reset_prefix_cache",
    "LLM.tokenizer",
    "SamplingParams.has_penalties",
]
WIDTH, HEIGHT = 1280, 900
SEARCHES = {"LLM.generate": "engine.html#llm.generate", "OutOfPagesError": "pages.html#outofpageserror"}


def chromium():
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        pytest.skip("chromium not found: `apt-get install chromium` (Debian) to run the browser tests")
    return exe


def run_chromium(exe, args, timeout=120):
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


def test_machine_paths_scrubbed():
    subs = build_docs.machine_paths("/src/clone")
    cases = {
        "wrote /src/clone/nbs/results/x.json": "wrote nbs/results/x.json",
        "cwd /src/clone": "cwd .",
        "/ci/venv/lib/python3.11/site-packages/torch/a.py:3": "site-packages/torch/a.py:3",
        "ran in /work/main/nbs/11_engine.ipynb": "ran in nbs/11_engine.ipynb",
        "cached in /root/.cache/paged_flex/SmolLM2": "cached in ~/.cache/paged_flex/SmolLM2",
        "folder /tmp/tmpk3_x9/model": "folder <tmp>/model",
        "home /home/ada/x": "home ~/x",
    }
    for before, after in cases.items():
        assert build_docs.scrub(before, subs) == after, before
    for url in ("https://github.com/a/b/blob/main/paged_flex/engine.py#L3", "see https://x.org/tmp/y"):
        assert build_docs.scrub(url, subs) == url


def test_shown_outputs():
    stream = lambda name, text: nbformat.v4.new_output("stream", name=name, text=text)
    widget = nbformat.v4.new_output(
        "display_data", {"application/vnd.jupyter.widget-view+json": {"model_id": "m"}, "text/plain": "0%|"}
    )
    plot = nbformat.v4.new_output("display_data", {"image/png": "iVBO", "text/plain": "<Figure>"})
    outs = [
        stream("stderr", "UserWarning: x\n"),
        stream("stdout", "saved /src/clone/nbs/a.json\n"),
        widget,
        plot,
    ]
    kept = build_docs.shown_outputs(outs, build_docs.machine_paths("/src/clone"))
    assert [o.get("name") or sorted(o["data"]) for o in kept] == ["stdout", ["image/png", "text/plain"]]
    assert kept[0]["text"] == "saved nbs/a.json\n"


def test_show_docs_in_source_order():
    def doc(name, path, line):
        md = f"---\n\n[source](https://h/x/blob/main/{path}#L{line})\n\n### {name}"
        return nbformat.v4.new_code_cell(
            f"show_doc({name})", outputs=[nbformat.v4.new_output("execute_result", {"text/markdown": md})]
        )

    prose = nbformat.v4.new_markdown_cell("text")
    cells = [
        doc("A.c", "m.py", 30),
        doc("A.b", "m.py", 20),
        doc("A.a", "m.py", 10),
        prose,
        doc("f", "m.py", 5),
    ]
    names = lambda cs: [c.source for c in cs]
    ordered = build_docs.in_source_order(cells, lambda c: c.cell_type == "code")
    assert names(ordered) == names([cells[2], cells[1], cells[0], prose, cells[4]])
    mixed = [doc("g", "b.py", 9), doc("h", "a.py", 1)]  # two files: the notebook's order stays
    assert names(build_docs.in_source_order(mixed, lambda c: True)) == names(mixed)


# ---------------------------------------------------------------- the README


def _readme():
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_lists_every_notebook():
    listed = re.findall(r"^- \*\*(\w+)\*\* \[[^\n]*\]\(nbs/(\w+\.ipynb)\)$", _readme(), re.M)
    notebooks = sorted(p.name for p in (ROOT / "nbs").glob("[0-9]*.ipynb"))
    assert [name for _, name in listed] == notebooks, (
        "README.md's notebook list is not the notebooks: run `jupyter nbconvert --execute --inplace "
        "nbs/index.ipynb` and `python tools/make_readme.py`"
    )
    assert all(name.startswith(num + "_") for num, name in listed)


def test_readme_pip_section_uses_the_pins():
    section = _readme().split("## Install with pip", 1)[1].split("\n## ", 1)[0]
    shell = "\n".join(re.findall(r"^```sh\n(.*?)^```", section, re.S | re.M))
    install = re.search(r'^SMOLLM2_INSTALL = "(.+)"$', (ROOT / "paged_flex/assets.py").read_text(), re.M)[1]
    torch = re.search(r"^TORCH_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)[1]
    for command in (install, f"pip install {torch}", "paged-flex assets"):
        assert re.search(rf"^{re.escape(command)}(\s|$)", shell, re.M), f"the pip section lacks `{command}`"
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "settings.ini")
    for extras in re.findall(r"\.\[([\w,]+)\]", section):
        for extra in extras.split(","):
            assert cfg.has_option("DEFAULT", f"{extra}_requirements"), f"no extra [{extra}] in settings.ini"
    cli = (ROOT / "paged_flex/cli.py").read_text()
    for cmd in re.findall(r"^paged-flex (\w+)", shell, re.M):
        assert f'add_parser(\n        "{cmd}"' in cli or f'add_parser("{cmd}"' in cli, (
            f"no `paged-flex {cmd}`"
        )


def test_readme_examples_import_what_they_use():
    "A reader runs the README's Python blocks in order in a fresh interpreter: nothing may be undefined."
    bound = set(dir(builtins))
    for i, code in enumerate(re.findall(r"^```python\n(.*?)^```", _readme(), re.S | re.M)):
        tree = ast.parse(code)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                bound.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        assert used <= bound, f"README python block {i} uses {sorted(used - bound)} without defining them"


# ---------------------------------------------------------------- the built site in a browser


@pytest.fixture(scope="module")
def site():
    try:
        return build_docs.build(ROOT)
    except SystemExit as e:
        pytest.fail(f"tools/build_docs.py failed: {e}")


HARNESS = """<!DOCTYPE html><html><body><pre id="result"></pre><script>
const urls = %s, W = %d, H = %d, out = {};
// An element is cut off when it reaches past the right edge of the box that clips it (or of the window),
// unless that box scrolls on purpose (code, outputs, tables).
function cut(d, w) {
  const bad = [];
  for (const el of d.querySelectorAll("#page-header *, main *, #sidebar *, #toc *")) {
    const r = el.getBoundingClientRect();
    if (!r.width || !r.height) continue;
    let box = el.parentElement;
    while (box && box !== d.body && w.getComputedStyle(box).overflowX === "visible") box = box.parentElement;
    if (box && box.closest("pre, .highlight, table, .output_area")) continue;
    const right = box && box !== d.body ? box.getBoundingClientRect().right : w.innerWidth;
    if (r.right > right + 1) bad.push(`${el.tagName}.${el.className} '${el.textContent.slice(0, 50)}'`);
  }
  return bad.slice(0, 5);
}
let left = urls.length;
for (const u of urls) {
  const f = document.createElement("iframe");
  f.style.width = W + "px"; f.style.height = H + "px";
  f.onload = () => {
    const d = f.contentDocument, w = f.contentWindow;
    const sigs = [...d.querySelectorAll(".output_markdown .highlight pre")];
    out[u] = {html: d.documentElement.outerHTML, width: d.documentElement.scrollWidth, window: w.innerWidth,
              cut: cut(d, w), unwrapped: sigs.filter(p => p.scrollWidth > p.clientWidth + 1).length};
    f.remove();
    if (--left === 0) document.getElementById("result").textContent = JSON.stringify(out);
  };
  f.src = u;
  document.body.appendChild(f);
}
</script></body></html>"""


@pytest.fixture(scope="module")
def rendered(site):
    "URL under _site -> what Chromium made of it at 1280 pixels: DOM, widths, cut-off elements, signatures."
    exe = chromium()
    urls = [p["out"] for p in site.pages + site.extra if not p["out"].startswith(build_docs.SOURCES + "/")]
    urls += [f"{build_docs.SEARCH}?q={q}" for q in SEARCHES] + [f"{build_docs.SEARCH}?q=zzqqxx"]
    with tempfile.TemporaryDirectory(prefix="pf_harness_") as tmp:
        harness = Path(tmp) / "harness.html"
        abs_urls = [
            (site.out / u.split("?")[0]).as_uri() + ("?" + u.split("?")[1] if "?" in u else "") for u in urls
        ]
        harness.write_text(HARNESS % (json.dumps(abs_urls), WIDTH, HEIGHT))
        dump = run_chromium(
            exe,
            ["--allow-file-access-from-files", "--virtual-time-budget=60000", "--dump-dom", harness.as_uri()],
        )
    raw = BeautifulSoup(dump, "html.parser").find(id="result").get_text()
    assert raw, "the harness page did not finish loading every page"
    res = json.loads(raw)
    return {
        u: dict(res[a], dom=BeautifulSoup(res[a].pop("html"), "html.parser")) for u, a in zip(urls, abs_urls)
    }


@pytest.fixture(scope="module")
def doms(site, rendered):
    "Page path under _site -> its DOM: the rendered pages, and the source pages (no script) as written."
    d = {u: r["dom"] for u, r in rendered.items() if "?" not in u}
    for p in site.extra:
        if p["out"] not in d:
            d[p["out"]] = BeautifulSoup((site.out / p["out"]).read_text(encoding="utf-8"), "html.parser")
    return d


def test_every_notebook_has_a_page(site):
    nbs = build_docs.notebooks(site.nbs)
    assert [p["rel"] for p in site.pages if p["rel"] is not None] == nbs
    assert site.pages[0]["out"] == "index.html"
    for p in site.pages + site.extra:
        assert (site.out / p["out"]).is_file(), p["out"]


def test_home_links_every_notebook(site, doms):
    "The README's notebook list, on the home page, links each notebook's page."
    links = {a["href"] for a in doms["index.html"].find("main").find_all("a", href=True)}
    for p in site.pages[1:]:
        assert p["rel"] is None or p["out"] in links, f"the home page does not link {p['out']}"


def test_pages_show_title_nav_and_search(site, doms):
    assert set(doms) == {p["out"] for p in site.pages + site.extra}
    for p in site.pages + site.extra:
        dom, title = doms[p["out"]], build_docs.plain(p["title"])
        assert title in dom.title.get_text(), (p["out"], dom.title)
        assert dom.find(id="page-title").get_text(" ", strip=True) == title, p["out"]
        nav = dom.find("nav", id="sidebar")
        assert nav is not None, f"{p['out']}: no sidebar"
        nav_links = [a["href"] for a in nav.select("li.page > a")]
        assert len(nav_links) == len(site.pages), (p["out"], nav_links)
        if p in site.pages:
            assert nav.select_one("li.page.active > a").get_text(strip=True) == title
        assert nav.select_one("form.search input[name=q]") is not None, f"{p['out']}: no search box"


def class_members(module: str) -> list[str]:
    """`Class.name` of each public method and property in the body of a public class of `paged_flex/module.py`
    (nbdev documents the classes and their `@patch`ed methods, not these): `name = property(...)` counts."""
    is_property = lambda v: (
        isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "property"
    )
    members = []
    for cls in ast.parse((ROOT / f"paged_flex/{module}.py").read_text()).body:
        if not isinstance(cls, ast.ClassDef) or cls.name.startswith("_"):
            continue
        for node in cls.body:
            names = [node.name] if isinstance(node, ast.FunctionDef) else []
            if isinstance(node, ast.Assign) and is_property(node.value):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            members += [f"{cls.name}.{n}" for n in names if not n.startswith("_")]
    return members


def test_class_members_lists_methods_and_properties():
    members = class_members("engine")
    assert {"LLM.get_tokenizer", "LLM.stats", "ModelRunner.run", "IncrementalDetokenizer.text"} <= set(
        members
    )
    assert not [m for m in members if m.split(".")[0].startswith("_") or m.split(".")[1].startswith("_")]


def test_api_reference_signatures_and_summaries(site, doms):
    documented = [p for p in site.pages if p["api"]]
    assert documented, "no show_doc output found in any notebook"
    nav = doms["index.html"].find("nav", id="sidebar")
    assert len(nav.select("ul.api a")) == sum(len(p["api"]) for p in documented)
    ref = doms[build_docs.REFERENCE].find("main")
    entries = {dt.find("a").get_text(strip=True): dt for dt in ref.select("dl.api-ref > dt")}
    assert len(ref.select("dl.api-ref > dt")) == sum(len(p["api"]) for p in documented)
    engine = (ROOT / "paged_flex/engine.py").read_text()
    methods = re.findall(r"^def (\w+)\(\s*self: LLM\b", engine, re.M)  # LLM's patched methods (chat, ...)
    members = class_members("engine") + class_members("sampling")  # defined in class bodies: show_doc cells
    for name in REQUIRED_API + [f"LLM.{m}" for m in methods if not m.startswith("_")] + members:
        assert name in entries, f"{name} has no API entry"
        dt = entries[name]
        assert dt.select_one("code.sig").get_text().startswith("("), f"{name}: no signature"
        assert dt.find_next_sibling("dd").get_text(strip=True), f"{name}: no summary"
    assert "sampling_params" in entries["LLM.generate"].select_one("code.sig").get_text()


def test_source_links_sit_in_their_heading_and_reach_the_def(site, doms):
    checked, by_id = 0, {}
    tags = lambda page: by_id.setdefault(page, {t["id"]: t for t in doms[page].find_all(id=True)})
    for p in site.pages:
        main = doms[p["out"]].find("main")
        stray = [
            a
            for a in main.find_all("a")
            if a.get_text(strip=True) == "source" and not a.find_parent(["h2", "h3", "h4"])
        ]
        assert not stray, f"{p['out']}: a source link outside a heading: {stray[0].find_parent('p')}"
        for e in p["api"]:
            link = tags(p["out"])[e["id"]].select_one("a.source-link")
            if link is None:
                continue  # nbdev found no source for it (a compiled kernel, an alias)
            path, _, line = link["href"].partition("#L")
            target = (site.out / p["out"]).parent / path
            src = tags(target.resolve().relative_to(site.out.resolve()).as_posix())
            lines = [src.get(f"L{n}") for n in range(int(line), int(line) + 6)]
            text = "\n".join(t.get_text() for t in lines if t)
            last = e["name"].split(".")[-1]
            assert re.search(rf"(def|class) {re.escape(last)}\b|^\d*{re.escape(last)}\b", text, re.M), (
                f"{p['out']}: the source link of {e['name']} lands on:\n{text}"
            )
            checked += 1
    assert checked > 0.9 * sum(len(p["api"]) for p in site.pages), f"only {checked} entries have source links"


def test_internal_links_resolve(site, doms):
    broken, ids = [], {page: {t["id"] for t in dom.find_all(id=True)} for page, dom in doms.items()}
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
                if unquote(frag) not in ids.get(target.relative_to(site.out.resolve()).as_posix(), ()):
                    broken.append(f"{page}: {url} -> no #{frag}")
    assert not broken, "broken internal links:\n" + "\n".join(broken[:20])


def test_no_links_outside_the_repository(doms):
    outside = []
    for page, dom in doms.items():
        for a in dom.find_all("a", href=True):
            url = urlparse(a["href"])
            if url.scheme in ("http", "https") and not (url.hostname or "").endswith(EXTERNAL_OK):
                outside.append(f"{page}: {a['href']}")
    assert not outside, "links outside the repository:\n" + "\n".join(sorted(set(outside))[:20])


def test_no_network_and_no_quarto_leftovers(site, doms):
    for page, dom in doms.items():
        for tag in dom.find_all(["script", "link", "img", "iframe"]):
            url = tag.get("src") or tag.get("href") or ""
            assert not re.match(r"^(https?:)?//", url), f"{page} loads {url} from the network"
        for pre in dom.select(".input_area pre"):
            assert not re.search(r"^\s*#\|", pre.get_text(), re.M), (
                f"{page} shows a #| directive:\n{pre.get_text()}"
            )
        if page.startswith(build_docs.SOURCES + "/"):
            continue  # a source page is code
        main = BeautifulSoup(str(dom.find("main")), "html.parser")
        for code in main.find_all(["pre", "code"]):
            code.decompose()
        prose = main.get_text("\n")
        for leak in QUARTO_LEAKS:
            m = re.search(leak, prose, re.M)
            assert not m, f"{page} shows Quarto syntax: {prose[max(0, m.start() - 60) : m.end() + 60]!r}"


def test_outputs_show_no_warnings_paths_or_empty_panels(site, doms):
    machine = [
        re.escape(str(ROOT)),
        re.escape(sys.prefix),
        r"/root/",
        r"/home/",
        r"/tmp/",
        r"site-packages/",
        r"/work/",
        r"\w+Warning\b",
    ]
    for page, dom in doms.items():
        assert not dom.select(".output_stderr"), f"{page} shows stderr output"
        for area in dom.select(".output_area"):
            text = area.get_text(" ", strip=True)
            assert text or area.find(["img", "svg", "table"]), f"{page} has an empty output panel:\n{area}"
            for pattern in machine:
                m = re.search(pattern, text)
                assert not m, (
                    f"{page}: an output shows {m[0]!r}: ...{text[max(0, m.start() - 80) : m.end() + 80]}"
                )


def test_table_of_contents(site, doms):
    for p in site.pages:
        main = doms[p["out"]].find("main")
        heads = [h["id"] for h in main.find_all(["h2", "h3"])]
        toc = doms[p["out"]].find(id="toc")
        if len(heads) < 2:
            assert toc is None, p["out"]
            continue
        assert toc is not None, f"{p['out']} has {len(heads)} sections and no table of contents"
        assert [unquote(a["href"][1:]) for a in toc.find_all("a")] == heads, p["out"]


def test_search_finds_names_and_nothing_for_nonsense(rendered):
    for q, first in SEARCHES.items():
        hits = rendered[f"{build_docs.SEARCH}?q={q}"]["dom"].select("#search-results li.hit > a")
        assert hits, f"search for {q!r} found nothing"
        assert hits[0]["href"] == first, f"search for {q!r}: first hit {hits[0]['href']}, expected {first}"
    none = rendered[f"{build_docs.SEARCH}?q=zzqqxx"]["dom"]
    assert not none.select("#search-results li") and "0 results" in none.find(id="search-summary").get_text()


def test_nothing_cut_off_at_the_right_edge(rendered):
    for url, r in rendered.items():
        assert r["width"] <= r["window"], f"{url} is {r['width']} pixels wide in a {r['window']}-pixel window"
        assert not r["cut"], f"{url}: cut off at the right edge: {r['cut']}"
        assert not r["unwrapped"], f"{url}: {r['unwrapped']} signatures do not wrap"


@pytest.mark.parametrize(
    "name,page", [("home", "index.html"), ("api", "reference.html"), ("engine", "engine.html")]
)
def test_screenshots(site, rendered, name, page):
    shot = site.out / f"screenshot-{name}.png"  # docs/screenshot-*.png are committed copies
    shot.unlink(missing_ok=True)
    run_chromium(
        chromium(), [f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", (site.out / page).as_uri()]
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == (WIDTH, HEIGHT), (w, h)
    assert len(data) > 10_000, f"screenshot is only {len(data)} bytes"
    from PIL import Image

    with Image.open(shot) as im:
        colors = im.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 50, "screenshot looks blank"
