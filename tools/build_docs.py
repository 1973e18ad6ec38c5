"""Build the documentation site in `_site/` without Quarto: nbdev's `proc_nbs`, then nbconvert.

1. `nbdev.serve.proc_nbs()` writes `_proc/` (front matter from the title cell, `show_doc` rendered,
   `#| hide` cells dropped), as `nbdev_docs` does before it calls Quarto.
2. Each notebook (index first, then in file order) becomes `_site/<output-file>` (the name nbdev gives
   Quarto: `01_block_tables.ipynb` -> `block_tables.html`, `index.ipynb` -> `index.html`, the names the
   `_modidx.py` doc links use), rendered by nbconvert's `basic` template inside our own page
   (`nbs/styles.css`, `nbs/site.js`): output images embedded, nothing loaded from the network.
3. Stored outputs are shown as a reader needs them: no stderr (warnings, progress bars), no widgets (they
   need JavaScript the page does not run), the paths of the machine they ran on made portable.
4. What Quarto would have interpreted is translated or dropped: `#| echo/output/include: false`,
   `::: {.callout-*}` fenced divs, `{#id .class}` attributes, `{{< shortcodes >}}`, front matter.
   Headings get Pandoc's ids (`### BlockTables.extend` -> `#blocktables.extend`); links to `*.ipynb`
   and to the doc host become relative `.html` links; local images are copied.
5. API entries (`show_doc`): a cell's entries in source order, the `source` link in the entry's heading,
   pointing at the module's own page under `src/` (`src/paged_flex/engine.py.html#L12`), not a remote
   host; a link to an entry that does not exist (`#modelrunner.run`) goes to the nearest one (`#modelrunner`).
6. A left sidebar lists every page by its title (its first `# ` heading) with the API symbols its
   `show_doc` cells document, and a search box (`search_index.js`, one entry per section and API entry;
   Enter opens `search.html`); each page has its table of contents; `reference.html` lists every API
   entry with its signature and one-line summary.

    python tools/build_docs.py [--force]       # then open _site/index.html
"""

import argparse, configparser, copy, html, json, os, posixpath, re, shutil, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "reference.html"
SEARCH = "search.html"
SOURCES = "src"  # source pages: src/paged_flex/engine.py.html#L12
SEARCH_TEXT = 600  # characters of a section's prose in the search index

# ---------------------------------------------------------------- settings and notebooks


def settings(root):
    cfg = configparser.ConfigParser()
    cfg.read(Path(root) / "settings.ini")
    d = dict(cfg["DEFAULT"])
    d.setdefault("nbs_path", "nbs")
    d.setdefault("title", d.get("lib_name", d.get("repo", "docs")))
    d["site_url"] = (d.get("doc_host", "") + d.get("doc_baseurl", "")).rstrip("/")
    return d


def _skip(rel):
    return any(p.startswith((".", "_")) for p in rel.parts)


def notebooks(nbs_dir, recursive=True):
    "Notebooks nbdev documents, relative to `nbs_dir`: `index` first in each folder, then by name."
    found = nbs_dir.rglob("*.ipynb") if recursive else nbs_dir.glob("*.ipynb")
    rels = [p.relative_to(nbs_dir) for p in found if p.is_file() and not _skip(p.relative_to(nbs_dir))]
    return sorted(rels, key=lambda r: (r.parent.parts, r.stem != "index", r.name))


def run_proc_nbs(root, force=False):
    "Run nbdev's `proc_nbs` in a subprocess (its config is cached per process and per cwd)."
    env = {k: v for k, v in os.environ.items() if k != "IN_TEST"}
    code = f"from nbdev.serve import proc_nbs; proc_nbs(force={bool(force)})"
    r = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        errs = re.findall(r"^(?:[\w.]+(?:Error|Exception)|Exception): .*", r.stderr, re.M)
        where = re.search(
            r"^Exception: (Error in notebook.*?)(?=\n\n|\nThe above|\nTraceback|\Z)", r.stderr, re.M | re.S
        )
        if not (errs and where):
            sys.exit(f"proc_nbs failed (exit {r.returncode}):\n{r.stderr[-4000:]}")
        msg = where.group(1).strip().removesuffix(chr(34) * 3).strip()
        title = re.match(r"Error in notebook: (.*?) in cell \d+", msg)
        nbs = Path(root) / settings(root)["nbs_path"]
        files = [
            f"{nbs.name}/{r.as_posix()}"
            for r in notebooks(nbs)
            if title and _title_of(nbs / r) == title.group(1)
        ]
        sys.exit(
            f"proc_nbs failed{' on ' + ', '.join(files) if files else ''}: {msg}\n\ncause: {errs[0]}\n\n"
            "To render show_doc, nbdev runs only the exported cells, the show_doc cells and every cell that "
            "contains an import statement (its other lines too), not the cells in between: keep imports in "
            "the imports cell at the top of the notebook."
        )
    return Path(root) / "_proc"


# ---------------------------------------------------------------- Quarto syntax -> plain markdown

_directive = re.compile(r"^\s*#\|\s?(.*)$")
_shortcode = re.compile(r"\{\{<\s*.*?\s*>\}\}")
_ATTR_ITEM = r"""(?:[.#][\w:-]+|[\w-]+=(?:"[^"]*"|'[^']*'|[^\s}]+))"""
_ATTR = r"\{\s*" + _ATTR_ITEM + r"(?:\s+" + _ATTR_ITEM + r")*\s*\}"
_span = re.compile(r"(?<!!)\[([^\]\n]*)\]" + _ATTR)
_after = re.compile(r"(?<=[)`\]])" + _ATTR)
_heading_attr = re.compile(r"^(#{1,6}\s.*?)\s*(" + _ATTR + r")\s*$")
_div_line = re.compile(r"^\s*(:{3,})\s*(.*?)\s*$")
_fence = re.compile(r"^\s*(`{3,}|~{3,})")
_CALLOUT_TITLES = dict(note="Note", tip="Tip", warning="Warning", important="Important", caution="Caution")


def _front_matter(src):
    "Parsed YAML front matter (`---` ... `---`) or None."
    s = src.strip()
    if not s.startswith("---") or s.count("---") < 2:
        return None
    import yaml

    try:
        meta = yaml.safe_load(s.split("---", 2)[1])
    except yaml.YAMLError:
        return None
    return meta if isinstance(meta, dict) else None


def _attrs(text):
    "(classes, id, {key: value}) of a Pandoc attribute block `{.a #b k=v}` or a bare class name."
    text = text.strip()
    if not text.startswith("{"):
        return ([text] if text else []), None, {}
    items = re.findall(_ATTR_ITEM, text)
    classes = [i[1:] for i in items if i.startswith(".")]
    ids = [i[1:] for i in items if i.startswith("#")]
    kv = dict(
        (k, v.strip("\"'")) for k, v in (i.split("=", 1) for i in items if "=" in i and i[0] not in ".#")
    )
    return classes, (ids[0] if ids else None), kv


def clean_quarto(md):
    "Markdown with Quarto-only syntax turned into HTML or dropped; code blocks are left alone."
    out, in_code, divs = [], None, 0
    for line in md.splitlines():
        m = _fence.match(line)
        if in_code:
            if m and m.group(1)[0] == in_code[0] and len(m.group(1)) >= len(in_code):
                in_code = None
            out.append(line)
            continue
        if m:
            in_code = m.group(1)
            out.append(line)
            continue
        d = _div_line.match(line)
        if d:
            spec = d.group(2)
            if not spec:
                if divs:
                    divs -= 1
                    out += ["", "</div>", ""]
                continue
            classes, did, kv = _attrs(spec)
            kind = next((c.split("-", 1)[1] for c in classes if c.startswith("callout-")), None)
            cls = " ".join((["callout"] if kind else []) + classes)
            idattr = f' id="{html.escape(did)}"' if did else ""
            out += ["", f'<div class="{html.escape(cls)}"{idattr}>']
            title = kv.get("title") or (_CALLOUT_TITLES.get(kind, kind.title()) if kind else None)
            if title:
                out.append(f'<div class="callout-title">{html.escape(title)}</div>')
            out.append("")
            divs += 1
            continue
        line = _shortcode.sub("", line)
        h = _heading_attr.match(line)
        if h:
            _, hid, _ = _attrs(h.group(2))
            line = h.group(1) + (f' <span data-pf-id="{html.escape(hid)}"></span>' if hid else "")
        line = _span.sub(lambda m: m.group(1), line)
        line = _after.sub("", line)
        out.append(line)
    out += ["", "</div>"] * divs
    return "\n".join(out)


def _directives(source):
    "({name: value} of the `#|` lines, source without them)."
    opts, body = {}, []
    for line in source.splitlines():
        m = _directive.match(line)
        if m:
            name, _, value = m.group(1).strip().partition(":")
            if name.split():
                opts[name.split()[0].lower()] = value.strip().strip("\"'")
        else:
            body.append(line)
    return opts, "\n".join(body).strip("\n")


def _false(v):
    return str(v).lower() in ("false", "no", "0")


# ---------------------------------------------------------------- stored outputs as a page shows them


def machine_paths(root):
    """(pattern, replacement) pairs that turn the paths of the machine a notebook ran on into portable ones:
    `<venv>/lib/python3.11/site-packages/x` -> `site-packages/x`, `<a clone>/nbs/x` -> `nbs/x`, a home -> `~`,
    a temporary file -> `<tmp>`. URLs are left alone."""
    start, seg = r"(?<![\w/.:~-])", r"(?:/[^\s'\"/:]+)+"
    here = re.escape(str(Path(root).resolve()))
    return [
        (re.compile(start + seg + r"/site-packages/"), "site-packages/"),
        (re.compile(start + here + "/"), ""),
        (re.compile(start + here + r"\b"), "."),
        (re.compile(start + seg + r"/(?=nbs/|tests/|tools/|paged_flex/\w+\.py)"), ""),
        (re.compile(start + r"/(?:tmp|var/folders/[^\s'\"/]+/[^\s'\"/]+/T)/[^\s'\"/:]+"), "<tmp>"),
        (re.compile(start + r"/(?:root|home/[^\s'\"/:]+|Users/[^\s'\"/:]+)(?=[/\s'\":]|$)"), "~"),
    ]


def scrub(text, subs):
    "`text` with the build machine's paths replaced (`machine_paths`)."
    for pattern, replacement in subs:
        text = pattern.sub(replacement, text)
    return text


def shown_outputs(outputs, subs):
    """The outputs a static page shows, their paths scrubbed: no stderr (warnings, progress bars) and no
    widgets (a progress bar drawn by JavaScript the page does not run: an empty panel)."""
    kept = []
    for o in outputs:
        if o.get("output_type") == "stream":
            if o.get("name") == "stderr":
                continue
            o["text"] = scrub(o["text"], subs)
        data = o.get("data", {})
        if any(k.startswith("application/vnd.jupyter.widget") for k in data):
            continue
        for mime in ("text/plain", "text/markdown", "text/html"):
            if mime in data:
                data[mime] = scrub(data[mime], subs)
        kept.append(o)
    return kept


_heading_line = re.compile(r"^(#{1,6} +)(.+)$", re.M)
_source_link = re.compile(r"\[source\]\((\S+?)#L(\d+)\)")


def _source_line(cell):
    "(file URL, line) of a show_doc cell's `[source](...#L12)` link, or None."
    for o in cell.get("outputs", []):
        m = _source_link.search(o.get("data", {}).get("text/markdown", ""))
        if m:
            return m.group(1), int(m.group(2))
    return None


def in_source_order(cells, is_doc):
    """Runs of adjacent show_doc cells for one file, sorted by source line: nbdev adds the show_docs of an
    exported cell that defines several functions in reverse order."""
    out, run = [], []
    for cell in cells + [None]:
        if cell is not None and is_doc(cell) and _source_line(cell):
            run.append(cell)
            continue
        if len({_source_line(c)[0] for c in run}) == 1:
            run.sort(key=lambda c: _source_line(c)[1])
        out += run
        run = []
        if cell is not None:
            out.append(cell)
    return out


def prepare(nb, subs=()):
    "Notebook cells as nbconvert should show them; returns (cells, front matter, ids of show_doc cells)."
    import nbformat

    cells, meta, docs = [], {}, set()
    for i, cell in enumerate(nb.cells):
        cell = nbformat.from_dict(dict(cell))
        cell.id = f"c{i}"
        src = cell.source
        if cell.cell_type == "raw":
            fm = _front_matter(src)
            if fm is not None:
                meta.update(fm)
            elif cell.metadata.get("format", cell.metadata.get("raw_mimetype", "")) in ("text/html", "html"):
                cells.append(cell)
            continue
        if cell.cell_type == "markdown":
            fm = _front_matter(src)
            if fm is not None:
                meta.update(fm)
                continue
            # e.g. nbdev's "autogenerated" warning
            if re.fullmatch(r"\s*(<!--.*?-->\s*)*", src, re.S):
                continue
            cell.source = clean_quarto(src)
            cells.append(cell)
            continue
        if cell.cell_type != "code":
            continue
        opts, code = _directives(src)
        if "hide" in opts or _false(opts.get("include", "")):
            continue
        cell.source = code
        if _false(opts.get("echo", "")) or not code.strip():
            cell.metadata.setdefault("transient", {})["remove_source"] = True
        cell.outputs = [] if _false(opts.get("output", "")) else shown_outputs(cell.get("outputs", []), subs)
        for o in cell.outputs:
            if "text/markdown" in o.get("data", {}):
                o.data["text/markdown"] = clean_quarto(o.data["text/markdown"])
                if re.match(r"\s*show_doc\(", code):  # `### Scheduler.__repr__` is a name, not bold `repr`
                    o.data["text/markdown"] = _heading_line.sub(
                        lambda m: m[1] + m[2].replace("_", r"\_"), o.data["text/markdown"]
                    )
        if not code.strip() and not cell.outputs:
            continue
        if re.match(r"\s*show_doc\(", code):
            docs.add(cell.id)
        cells.append(cell)
        cap = opts.get("fig-cap") or opts.get("tbl-cap")
        if cap:
            cells.append(nbformat.v4.new_markdown_cell(f'<p class="caption">{html.escape(cap)}</p>'))
            cells[-1].id = f"c{i}-caption"
    cells = in_source_order(cells, lambda c: c.id in docs)
    return cells, meta, [c.id for c in cells if c.id in docs]


# ---------------------------------------------------------------- HTML post-processing


def pandoc_id(text):
    """Pandoc's auto identifier: keep alphanumerics, `_-.`; spaces to `-`; lowercase;
    drop up to the first letter."""
    s = "".join(ch for ch in text.strip() if ch.isalnum() or ch in "_-." or ch.isspace())
    s = re.sub(r"\s+", "-", s).lower()
    while s and not s[0].isalpha():
        s = s[1:]
    return s or "section"


def _unique(base, used):
    i, cand = 0, base
    while cand in used:
        i += 1
        cand = f"{base}-{i}"
    used.add(cand)
    return cand


def _is_external(url):
    return bool(re.match(r"^([a-z][a-z0-9+.-]*:|//)", url, re.I))


class Site:
    "Everything one build knows: pages in order, their titles, and where their sources live."

    def __init__(self, root, out):
        self.root, self.out = Path(root), Path(out)
        self.cfg = settings(root)
        self.nbs = self.root / self.cfg["nbs_path"]
        # dicts: rel (nb path under nbs), out (page path under _site), title, description, body, api, toc
        self.pages = []
        self.copied = set()
        self.sources = set()  # repository files that source links point at, shown under src/
        self.search = []  # search index entries: page title, heading, url, text, kind
        self.extra = []  # pages outside the sidebar: search.html and the source pages
        self._ids = None  # page -> the ids in its body, once every page is rendered

    def page_of_nb(self, nb_rel):
        return next((p for p in self.pages if p["rel"] == nb_rel), None)

    def _copy_asset(self, src):
        "Copy a local file next to the pages; returns its path under _site."
        try:
            rel = src.resolve().relative_to(self.nbs.resolve())
        except ValueError:
            rel = Path("_assets") / src.name
        if rel not in self.copied:
            dst = self.out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            self.copied.add(rel)
        return rel.as_posix()

    def _source_page(self, url):
        "`src/<path>.html#L<n>` for a link into this repository's sources (nbdev's `[source]`), else None."
        m = re.match(re.escape(self.cfg.get("git_url", "").rstrip("/")) + r"/blob/[^/]+/([^#?]+)(#.*)?$", url)
        if not self.cfg.get("git_url") or not m or not (self.root / m.group(1)).is_file():
            return None
        self.sources.add(m.group(1))
        return f"{SOURCES}/{m.group(1)}.html{m.group(2) or ''}"

    def _rewrite_url(self, url, page):
        "Relative URL (from `page`) for `url` written in the notebook, or `url` when it is not ours."
        site = self.cfg["site_url"]
        here = posixpath.dirname(page["out"]) or "."
        if site and url.startswith(site + "/"):
            target = url[len(site) + 1 :] or "index.html"
            path, _, frag = target.partition("#")
            return posixpath.relpath(path or "index.html", here) + (f"#{frag}" if frag else "")
        source = self._source_page(url)
        if source:
            path, _, frag = source.partition("#")
            return posixpath.relpath(path, here) + (f"#{frag}" if frag else "")
        if _is_external(url) or url.startswith(("#", "/")) or not url:
            return url
        path, _, frag = url.partition("#")
        path = path.split("?")[0]
        src = (self.nbs / page["rel"]).parent / path
        if not src.exists() and (self.root / path).exists():  # written for the README, from the repo root
            src = self.root / path
        if path.endswith((".ipynb", ".qmd", ".md")):
            try:
                nb_rel = src.resolve().relative_to(self.nbs.resolve())
            except ValueError:
                nb_rel = None
            target = self.page_of_nb(nb_rel.with_suffix(".ipynb")) if nb_rel else None
            dest = (
                target["out"]
                if target
                else posixpath.normpath(posixpath.join(here, str(Path(path).with_suffix(".html"))))
            )
            return posixpath.relpath(dest, here) + (f"#{frag}" if frag else "")
        if src.is_file():
            return posixpath.relpath(self._copy_asset(src), here) + (f"#{frag}" if frag else "")
        return url

    def fix_fragments(self, page):
        """The page's body with links to a missing anchor of another page sent to the nearest one there:
        nbdev links `ModelRunner.run` to `#modelrunner.run` even when only `ModelRunner` has an entry."""
        here = posixpath.dirname(page["out"])
        ids = self._ids or {p["out"]: _ids_of(p["body"]) for p in self.pages}
        self._ids = ids

        def fix(m):
            path, frag = m[1], html.unescape(m[2])
            target = posixpath.normpath(posixpath.join(here, path)) if path else page["out"]
            if target not in ids or frag in ids[target]:
                return m[0]
            while "." in frag and frag not in ids[target]:
                frag = frag.rsplit(".", 1)[0]
            return (
                f'href="{path}#{html.escape(frag, quote=True)}"'
                if frag in ids[target]
                else f'href="{path or "#"}"'
            )

        return re.sub(r'href="([^"#:]*\.html|)#([^"]+)"', fix, page["body"])

    def postprocess(self, page, body, api_ids):
        """Pandoc heading ids, working links, copied images, no remote scripts, source links in their
        headings; collects the page's API entries, its table of contents and its search entries."""
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(body, "html.parser")
        used = {"page-title", "sidebar", "content", "toc"}
        used |= {t["id"] for t in soup.find_all(id=True) if not re.match(r"h[1-6]$", t.name)}
        for a in soup.select("a.anchor-link"):
            a.decompose()
        for h in soup.find_all(re.compile(r"^h[1-6]$")):
            marker = h.find("span", attrs={"data-pf-id": True})
            if marker:
                hid = marker["data-pf-id"]
                marker.decompose()
                used.add(hid)
            else:
                hid = _unique(pandoc_id(h.get_text(" ")), used)
            h["id"] = hid
            anchor = soup.new_tag("a", href=f"#{hid}", attrs={"class": "anchor-link", "aria-label": "link"})
            anchor.string = "¶"
            h.append(anchor)
        for a in soup.find_all("a", href=True):
            if "anchor-link" not in (a.get("class") or []):
                a["href"] = self._rewrite_url(a["href"], page)
        for img in soup.find_all("img", src=True):
            if not img["src"].startswith("data:"):
                img["src"] = self._rewrite_url(img["src"], page)
        for tag in soup.find_all(["script", "link", "iframe"]):  # nothing may load from the network
            url = tag.get("src") or tag.get("href") or ""
            if _is_external(url) or (tag.name == "script" and "require" in tag.get_text()):
                tag.decompose()
        api = [e for e in (api_entry(soup, cid) for cid in api_ids) if e]
        page["toc"] = [
            (int(h.name[1]), heading_text(h), h["id"], h.find_parent(class_="output_markdown") is not None)
            for h in soup.find_all(["h2", "h3"])
        ]
        self.search += search_entries(soup, page, api)
        return str(soup), api


def _ids_of(body):
    return set(re.findall(r'\sid="([^"]+)"', body))


def heading_text(h):
    "A heading's text without its anchor and source links."
    h = copy.copy(h)
    for a in h.select("a.anchor-link, a.source-link"):
        a.decompose()
    return re.sub(r"\s+", " ", h.get_text()).strip()


def api_entry(soup, cell_id):
    """name, id, signature and one-line summary of the symbol a show_doc cell documents; moves its
    `source` link (a paragraph above the heading in nbdev's markdown) into the heading."""
    cell = soup.find(id=f"cell-id={cell_id}")
    h = cell.find(re.compile(r"^h[1-6]$")) if cell else None
    if h is None:
        return None
    link = next((a for a in cell.find_all("a", href=True) if a.get_text(strip=True) == "source"), None)
    if link is not None:
        holder = link.parent
        link["class"] = "source-link"
        link["title"] = "the source of " + heading_text(h)
        h.insert(0, link.extract())
        if holder.name == "p" and not holder.get_text(strip=True):
            holder.decompose()
    pre = h.find_next("pre")
    sig = pre.get_text() if pre is not None and pre.find_parent(id=f"cell-id={cell_id}") else ""
    sig = re.sub(r"\s+", " ", re.sub(r"^\s*(?:async\s+)?def\s+\w+", "", sig)).strip().rstrip(":")
    sig = sig.replace("( ", "(").replace(" )", ")")
    em = next((e for e in cell.find_all("em") if e.find_parent("pre") is None), None)
    summary = copy.copy(em) if em else soup.new_tag("em")
    for a in summary.find_all("a"):
        a.unwrap()  # the reference page is elsewhere: keep the words, not the links
    return dict(name=heading_text(h), id=h["id"], sig=sig, summary=summary.decode_contents().strip())


def search_entries(soup, page, api):
    """One search entry per section of a page: its heading and its prose up to the next h2/h3 (an API
    entry's: its signature, then its docstring)."""
    entries, current = [], dict(t=plain(page["title"]), h=plain(page["title"]), u=page["out"], x=[], k="page")
    for el in soup.find_all(["h2", "h3", "p", "li", "td"]):
        if el.name in ("h2", "h3"):
            entries.append(current)
            kind = "api" if el.find_parent(class_="output_markdown") else "section"
            current = dict(
                t=plain(page["title"]), h=heading_text(el), u=f"{page['out']}#{el['id']}", x=[], k=kind
            )
        elif el.find_parent(["pre", "li"] if el.name != "li" else ["pre"]) is None:
            current["x"].append(el.get_text(" ", strip=True))
    entries.append(current)
    sigs = {f"{page['out']}#{e['id']}": e["sig"] for e in api}
    for e in entries:
        e["x"] = re.sub(r"\s+", " ", " ".join([sigs.get(e["u"], "")] + e["x"])).strip()[:SEARCH_TEXT]
    return entries


# ---------------------------------------------------------------- page layout

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} – {project}</title>
<meta name="description" content="{description}">
<link rel="stylesheet" href="{root}styles.css">
</head>
<body>
<nav id="sidebar" aria-label="Contents">
{nav}
</nav>
<div id="page"{layout}>
<header id="page-header"><h1 class="title" id="page-title">{title_html}</h1>{description_html}</header>
{toc}
<main id="content">
{body}
<footer>{project} documentation, built from the notebooks in <code>{nbs}/</code>
by <code>tools/build_docs.py</code>.</footer>
</main>
</div>
<script src="{root}search_index.js"></script>
<script src="{root}site.js"></script>
</body>
</html>
"""


def _md_inline(text):
    "Title/description markdown to HTML: backticks, bold, italics, links."
    t = html.escape(str(text), quote=False)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<em>\1</em>", t)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', t)


def plain(text):
    "Markdown title as plain text (backticks and emphasis stars dropped)."
    return re.sub(r"(`|\*\*|\*)([^`*]+)\1", r"\2", str(text)).strip()


def nav_html(site, current):
    here = posixpath.dirname(current["out"]) or "."
    rel = lambda p: posixpath.relpath(p, here)
    cfg = site.cfg
    items = [f'<div class="project"><a href="{rel("index.html")}">{html.escape(cfg["title"])}</a></div>']
    if cfg.get("description"):
        items.append(f'<p class="tagline">{html.escape(cfg["description"])}</p>')
    items.append(
        f'<form class="search" role="search" action="{rel(SEARCH)}">'
        '<input type="search" name="q" placeholder="Search" aria-label="Search the documentation" '
        'autocomplete="off"><ul class="search-hits" hidden></ul></form>'
    )
    items.append("<ul>")
    for p in (p for p in site.pages if p["out"] != REFERENCE):
        active = p is current
        items.append(
            f'<li class="page{" active" if active else ""}">'
            f'<a href="{rel(p["out"])}">{html.escape(plain(p["title"]))}</a>'
        )
        if p["api"]:
            links = "".join(
                f'<li><a href="{rel(p["out"])}#{html.escape(e["id"], quote=True)}">'
                f"{html.escape(e['name'])}</a></li>"
                for e in p["api"]
            )
            items.append(
                f"<details{' open' if active else ''}><summary>API ({len(p['api'])})</summary>"
                f'<ul class="api">{links}</ul></details>'
            )
        items.append("</li>")
    ref_active = " active" if current.get("out") == REFERENCE else ""
    items.append(f'<li class="page reference{ref_active}"><a href="{rel(REFERENCE)}">API reference</a></li>')
    items.append("</ul>")
    return "\n".join(items)


def toc_html(page):
    "The page's h2 and h3 headings as an 'On this page' list, or '' for a page with fewer than two."
    entries = page.get("toc") or []
    if len(entries) < 2:
        return ""
    items = "".join(
        f'<li class="toc-h{level}{" toc-api" if api else ""}">'
        f'<a href="#{html.escape(hid, quote=True)}">{html.escape(text)}</a></li>'
        for level, text, hid, api in entries
    )
    title = '<div class="toc-title">On this page</div>'
    return f'<nav id="toc" aria-label="On this page">{title}<ul>{items}</ul></nav>'


def write_page(site, page):
    desc = page.get("description") or ""
    toc = toc_html(page)
    root = posixpath.relpath(".", posixpath.dirname(page["out"]) or ".")
    doc = PAGE.format(
        title=html.escape(plain(page["title"])),
        project=html.escape(site.cfg["title"]),
        description=html.escape(plain(desc), quote=True),
        root="" if root == "." else root + "/",
        nav=nav_html(site, page),
        layout="" if toc else ' class="no-toc"',
        toc=toc,
        title_html=_md_inline(page["title"]),
        description_html=f'<p class="description">{_md_inline(desc)}</p>' if desc else "",
        body=page["body"],
        nbs=html.escape(site.cfg["nbs_path"]),
    )
    dst = site.out / page["out"]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(doc, encoding="utf-8")


def reference_page(site):
    "Every API entry by page: its name linked to its entry, its signature and its one-line summary."
    parts, toc = [], []
    for p in site.pages:
        if not p["api"]:
            continue
        hid = pandoc_id(p["out"].rsplit(".", 1)[0])
        toc.append((2, plain(p["title"]), hid, False))
        parts.append(f'<h2 id="{hid}"><a href="{p["out"]}">{html.escape(plain(p["title"]))}</a></h2>')
        parts.append('<dl class="api-ref">')
        for e in p["api"]:
            parts.append(
                f'<dt><a href="{p["out"]}#{html.escape(e["id"], quote=True)}"><code>{html.escape(e["name"])}'
                f'</code></a><code class="sig">{html.escape(e["sig"])}</code></dt>'
                f"<dd>{e['summary']}</dd>"
            )
        parts.append("</dl>")
    return dict(
        rel=None,
        out=REFERENCE,
        title="API reference",
        api=[],
        toc=toc,
        description="Every symbol documented with `show_doc`: its signature and what it does, by page.",
        body="\n".join(parts) or "<p>No documented symbols yet.</p>",
    )


def search_page():
    return dict(
        rel=None,
        out=SEARCH,
        title="Search",
        api=[],
        toc=[],
        description="",
        body='<p id="search-summary">Search needs JavaScript.</p><ol id="search-results"></ol>',
    )


def source_page(site, path):
    "A repository file as a page, one numbered line a row (`#L12` is line 12), linked to its notebook."
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_for_filename

    text = (site.root / path).read_text(encoding="utf-8")
    code = highlight(text, get_lexer_for_filename(path), HtmlFormatter(nowrap=True))
    rows = "".join(
        f'<span class="line" id="L{n}"><a class="lineno" href="#L{n}">{n}</a>{line}\n</span>'
        for n, line in enumerate(code.rstrip("\n").split("\n"), 1)
    )
    out = f"{SOURCES}/{path}.html"
    m = re.search(r"File to edit: (\S+?\.ipynb)", "\n".join(text.split("\n", 5)[:5]))
    nb = (site.root / path).parent / m.group(1) if m else None
    try:
        target = site.page_of_nb(nb.resolve().relative_to(site.nbs.resolve())) if nb else None
    except ValueError:
        target = None
    origin = (
        f"Exported by nbdev from [{site.cfg['nbs_path']}/{target['rel'].as_posix()}]"
        f"({posixpath.relpath(target['out'], posixpath.dirname(out))}); edit the notebook, not this file."
        if target
        else ""
    )
    return dict(
        rel=None,
        out=out,
        title=f"`{path}`",
        api=[],
        toc=[],
        description=origin,
        body=f'<div class="source highlight"><pre>{rows}</pre></div>',
    )


def write_assets(site, pygments_css):
    "styles.css (with pygments' colours), site.js and search_index.js next to the pages."
    css = (site.nbs / "styles.css").read_text(encoding="utf-8")
    (site.out / "styles.css").write_text(css + "\n/* pygments */\n" + pygments_css + "\n", encoding="utf-8")
    shutil.copy2(site.nbs / "site.js", site.out / "site.js")
    index = json.dumps(site.search, separators=(",", ":"))
    (site.out / "search_index.js").write_text(f"window.PF_SEARCH = {index};\n", encoding="utf-8")


# ---------------------------------------------------------------- build


def _title_of(nb_path):
    "Text of the first `# ` heading of a notebook's markdown cells, or None."
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    for c in nb.get("cells", []):
        if c.get("cell_type") != "markdown":
            continue
        src = c["source"] if isinstance(c["source"], str) else "".join(c["source"])
        m = re.search(r"^# +(.+?)\s*#*\s*$", src, re.M)
        if m:
            return m.group(1)
    return None


def build(root=ROOT, out=None, force=False, proc=True):
    """Build the site; returns the `Site` (`.out` its folder, `.pages` the pages in nav order, the API
    reference last; `.extra` the search page and the source pages)."""
    import nbformat
    from nbconvert import HTMLExporter
    from pygments.formatters import HtmlFormatter

    root = Path(root).resolve()
    site = Site(root, Path(out) if out else root / "_site")
    cfg = site.cfg
    rels = notebooks(site.nbs, cfg.get("recursive", "True").lower() in ("true", "1", "yes"))
    if not rels:
        sys.exit(f"no notebooks in {site.nbs}")
    proc_dir = run_proc_nbs(root, force) if proc else root / "_proc"
    if site.out.exists():
        shutil.rmtree(site.out)
    site.out.mkdir(parents=True)
    exporter = HTMLExporter(template_name="basic", exclude_input_prompt=True, exclude_output_prompt=True)
    subs = machine_paths(root)
    prepared = []
    for rel in rels:
        src = proc_dir / rel
        if not src.exists():
            sys.exit(f"{src} missing: proc_nbs did not process {rel} (try --force)")
        nb = nbformat.read(src, as_version=4)
        cells, meta, api_ids = prepare(nb, subs)
        nb.cells = cells
        out_name = (
            "index.html"
            if rel.stem == "index"
            else meta.get("output-file") or re.sub(r"^\d+[_-]", "", rel.stem) + ".html"
        )
        page = dict(
            rel=rel,
            out=(rel.parent / out_name).as_posix(),
            title=_title_of(site.nbs / rel) or meta.get("title") or rel.stem,
            description=meta.get("description", ""),
            api=[],
        )
        if rel.stem == "index" and rel.parent == Path("."):
            page["description"] = page["description"] or cfg.get("description", "")
        site.pages.append(page)
        prepared.append((page, nb, api_ids))
    clash = [
        p["out"] for p in site.pages if p["out"] in (REFERENCE, SEARCH) or p["out"].startswith(SOURCES + "/")
    ]
    if clash:
        sys.exit(
            f"a notebook renders to {clash[0]}, a page of the site's own (API reference, search, sources)"
        )
    for page, nb, api_ids in prepared:  # all pages known first, so links between them resolve
        body, _ = exporter.from_notebook_node(nb)
        page["body"], page["api"] = site.postprocess(page, body, api_ids)
    for page in site.pages:
        page["body"] = site.fix_fragments(page)
    site.pages.append(reference_page(site))
    site.extra = [search_page()] + [source_page(site, path) for path in sorted(site.sources)]
    for page in site.pages + site.extra:
        write_page(site, page)
    write_assets(site, HtmlFormatter(style="friendly").get_style_defs(".highlight"))
    return site


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT), help="repo root (holds settings.ini)")
    ap.add_argument("--out", default=None, help="output folder (default: <root>/_site)")
    ap.add_argument("--force", action="store_true", help="re-process every notebook (ignore the _proc cache)")
    ap.add_argument(
        "--no-proc", action="store_true", help="render the existing _proc/ without running proc_nbs"
    )
    args = ap.parse_args(argv)
    t = time.time()
    out = build(args.root, args.out, force=args.force, proc=not args.no_proc).out
    n = len(list(out.rglob("*.html")))
    print(f"wrote {n} pages to {out} in {time.time() - t:.1f}s: open {out / 'index.html'}")
    return out


if __name__ == "__main__":
    main()
