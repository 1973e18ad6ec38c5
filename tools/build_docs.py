"""Build the documentation site in `_site/` without Quarto: nbdev's `proc_nbs`, then nbconvert.

1. `nbdev.serve.proc_nbs()` writes `_proc/` (front matter from the title cell, `show_doc` rendered,
   `#| hide` cells dropped), as `nbdev_docs` does before it calls Quarto.
2. Each notebook (index first, then in file order) becomes `_site/<output-file>` (the name nbdev gives
   Quarto: `01_block_tables.ipynb` -> `block_tables.html`, `index.ipynb` -> `index.html`, the names the
   `_modidx.py` doc links use), rendered by nbconvert's `basic` template inside our own page: inline
   CSS and pygments colours, output images embedded, no script or stylesheet from the network.
3. What Quarto would have interpreted is translated or dropped: `#| echo/output/include: false`,
   `::: {.callout-*}` fenced divs, `{#id .class}` attributes, `{{< shortcodes >}}`, front matter.
   Headings get Pandoc's ids (`### BlockTables.extend` -> `#blocktables.extend`); links to `*.ipynb`
   and to the doc host become relative `.html` links; local images are copied.
4. A left sidebar lists every page by its title (its first `# ` heading) with the API symbols its
   `show_doc` cells document; `reference.html` lists them all.

    python tools/build_docs.py [--force]       # then open _site/index.html
"""

import argparse, configparser, html, json, os, posixpath, re, shutil, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "reference.html"

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


def prepare(nb):
    "Notebook cells as nbconvert should show them; returns (cells, front matter, ids of show_doc cells)."
    import nbformat

    cells, meta, api_ids = [], {}, []
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
        if _false(opts.get("output", "")):
            cell.outputs = []
        for o in cell.get("outputs", []):
            if "text/markdown" in o.get("data", {}):
                o.data["text/markdown"] = clean_quarto(o.data["text/markdown"])
        if not code.strip() and not cell.get("outputs"):
            continue
        if re.match(r"\s*show_doc\(", code):
            api_ids.append(cell.id)
        cells.append(cell)
        cap = opts.get("fig-cap") or opts.get("tbl-cap")
        if cap:
            cells.append(nbformat.v4.new_markdown_cell(f'<p class="caption">{html.escape(cap)}</p>'))
            cells[-1].id = f"c{i}-caption"
    return cells, meta, api_ids


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
        # dicts: rel (nb path under nbs), out (page path under _site), title, description, body, api
        self.pages = []
        self.copied = set()

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

    def _rewrite_url(self, url, page):
        "Relative URL (from `page`) for `url` written in the notebook, or `url` when it is not ours."
        site = self.cfg["site_url"]
        if site and url.startswith(site + "/"):
            target = url[len(site) + 1 :] or "index.html"
            path, _, frag = target.partition("#")
            return posixpath.relpath(path or "index.html", posixpath.dirname(page["out"]) or ".") + (
                f"#{frag}" if frag else ""
            )
        if _is_external(url) or url.startswith(("#", "/")) or not url:
            return url
        path, _, frag = url.partition("#")
        path = path.split("?")[0]
        src = (self.nbs / page["rel"]).parent / path
        here = posixpath.dirname(page["out"]) or "."
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

    def postprocess(self, page, body, api_ids):
        "Pandoc heading ids, working links, copied images, no remote scripts; collects the API entries."
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(body, "html.parser")
        used = {"page-title", "sidebar", "content"}
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
        api = []
        for cid in api_ids:
            cell = soup.find(id=f"cell-id={cid}")
            h = cell.find(re.compile(r"^h[1-6]$")) if cell else None
            if h:
                api.append((h.get_text(" ").replace("¶", "").strip(), h["id"]))
        return str(soup), api


# ---------------------------------------------------------------- page layout

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg-code:#f6f8fa; --accent:#0969da; --nav:260px; }
* { box-sizing: border-box; }
body { margin:0; color:var(--fg); font:16px/1.55 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
a { color:var(--accent); text-decoration:none; } a:hover { text-decoration:underline; }
#sidebar { position:fixed; top:0; left:0; bottom:0; width:var(--nav); overflow-y:auto; padding:20px 16px;
  background:#f6f8fa; border-right:1px solid var(--line); font-size:14px; }
#sidebar .project { font-weight:700; font-size:18px; margin-bottom:4px; }
#sidebar .tagline { color:var(--muted); font-size:12.5px; margin:0 0 14px; }
#sidebar ul { list-style:none; padding:0; margin:0; }
#sidebar li { margin:2px 0; }
#sidebar li.page > a { display:block; padding:4px 8px; border-radius:6px; color:var(--fg); }
#sidebar li.page.active > a { background:#ddf4ff; color:var(--accent); font-weight:600; }
#sidebar details > summary { list-style:none; cursor:pointer; color:var(--muted); font-size:12px;
  padding:0 8px; }
#sidebar details > summary::-webkit-details-marker { display:none; }
#sidebar ul.api { margin:2px 0 6px 14px; border-left:1px solid var(--line); }
#sidebar ul.api a { display:block; padding:1px 8px;
  font:12.5px/1.5 ui-monospace, SFMono-Regular, Menlo, monospace; color:var(--muted); }
#sidebar li.reference { margin-top:14px; border-top:1px solid var(--line); padding-top:10px; }
#content { margin-left:var(--nav); max-width:980px; padding:28px 40px 60px; }
h1.title { margin:0 0 6px; font-size:2em; }
p.description { color:var(--muted); font-size:1.1em; margin:0 0 24px; }
h1, h2, h3, h4 { line-height:1.25; }
h2 { border-bottom:1px solid var(--line); padding-bottom:4px; margin-top:1.6em; }
a.anchor-link { visibility:hidden; margin-left:6px; font-size:.8em; color:var(--muted); }
h1:hover a.anchor-link, h2:hover a.anchor-link, h3:hover a.anchor-link,
h4:hover a.anchor-link { visibility:visible; }
code { font:0.9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background:var(--bg-code);
  padding:1px 4px; border-radius:4px; }
pre { font:13.5px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; overflow-x:auto; margin:0; }
pre code { background:none; padding:0; }
.rendered_html pre, .highlight pre { background:var(--bg-code); padding:10px 14px; border-radius:6px; }
.cell { margin:10px 0; } .prompt { display:none; }
.output_area pre { background:#fff; border-left:3px solid var(--line); padding:6px 12px; border-radius:0; }
.output_stderr pre { background:#fff8f0; border-left-color:#d4a72c; }
.output_area img, .rendered_html img { max-width:100%; height:auto; }
.output_markdown hr:first-child { display:none; }
.output_markdown h3, .output_markdown h4 { font-family:ui-monospace, SFMono-Regular, Menlo, monospace;
  font-size:1.05em;
  margin:1.8em 0 .5em; padding-top:10px; border-top:1px solid var(--line); }
table { border-collapse:collapse; margin:10px 0; }
th, td { border:1px solid var(--line); padding:4px 10px; text-align:left; }
blockquote { margin:0; padding:0 14px; color:var(--muted); border-left:4px solid var(--line); }
.callout { border-left:4px solid var(--accent); background:#f0f7ff; padding:2px 16px; margin:14px 0;
  border-radius:4px; }
.callout-warning, .callout-caution { border-left-color:#bf8700; background:#fff8e6; }
.callout-important { border-left-color:#cf222e; background:#fff0f0; }
.callout-tip { border-left-color:#1a7f37; background:#effaf2; }
.callout-title { font-weight:600; margin-top:8px; }
p.caption { color:var(--muted); font-size:.92em; text-align:center; }
footer { margin-top:48px; color:var(--muted); font-size:13px; border-top:1px solid var(--line);
  padding-top:10px; }
@media (max-width: 800px) { #sidebar { position:static; width:auto; border-right:0; }
#content { margin-left:0; padding:20px; } }
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} – {project}</title>
<meta name="description" content="{description}">
<style>{css}
{pygments}</style>
</head>
<body>
<nav id="sidebar" aria-label="Contents">
{nav}
</nav>
<main id="content">
<header><h1 class="title" id="page-title">{title_html}</h1>{description_html}</header>
{body}
<footer>{project} documentation, built from the notebooks in <code>{nbs}/</code>
by <code>tools/build_docs.py</code>.</footer>
</main>
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
    items.append("<ul>")
    for p in site.pages:
        active = p is current
        items.append(
            f'<li class="page{" active" if active else ""}">'
            f'<a href="{rel(p["out"])}">{html.escape(plain(p["title"]))}</a>'
        )
        if p["api"]:
            links = "".join(
                f'<li><a href="{rel(p["out"])}#{html.escape(i, quote=True)}">{html.escape(n)}</a></li>'
                for n, i in p["api"]
            )
            items.append(
                f"<details{' open' if active else ''}><summary>API ({len(p['api'])})</summary>"
                f'<ul class="api">{links}</ul></details>'
            )
        items.append("</li>")
    ref_active = " active" if current.get("rel") is None else ""
    items.append(f'<li class="page reference{ref_active}"><a href="{rel(REFERENCE)}">API reference</a></li>')
    items.append("</ul>")
    return "\n".join(items)


def write_page(site, page, pygments_css):
    desc = page.get("description") or ""
    doc = PAGE.format(
        title=html.escape(plain(page["title"])),
        project=html.escape(site.cfg["title"]),
        description=html.escape(plain(desc), quote=True),
        css=CSS,
        pygments=pygments_css,
        nav=nav_html(site, page),
        title_html=_md_inline(page["title"]),
        description_html=f'<p class="description">{_md_inline(desc)}</p>' if desc else "",
        body=page["body"],
        nbs=html.escape(site.cfg["nbs_path"]),
    )
    dst = site.out / page["out"]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(doc, encoding="utf-8")


def reference_body(site):
    parts = []
    for p in site.pages:
        if not p["api"]:
            continue
        parts.append(
            f'<h2 id="{pandoc_id(p["out"].rsplit(".", 1)[0])}">'
            f'<a href="{p["out"]}">{html.escape(plain(p["title"]))}</a></h2><ul>'
        )
        parts += [
            f'<li><a href="{p["out"]}#{html.escape(i, quote=True)}"><code>{html.escape(n)}</code></a></li>'
            for n, i in p["api"]
        ]
        parts.append("</ul>")
    return "\n".join(parts) or "<p>No documented symbols yet.</p>"


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
    "Build the site; returns the `Site` (`.out` its folder, `.pages` its pages in nav order)."
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
    prepared = []
    for rel in rels:
        src = proc_dir / rel
        if not src.exists():
            sys.exit(f"{src} missing: proc_nbs did not process {rel} (try --force)")
        nb = nbformat.read(src, as_version=4)
        cells, meta, api_ids = prepare(nb)
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
    clash = [p["out"] for p in site.pages if p["out"] == REFERENCE]
    if clash:
        sys.exit(f"a notebook renders to {REFERENCE}, the API reference page: rename it")
    for page, nb, api_ids in prepared:  # all pages known first, so links between them resolve
        body, _ = exporter.from_notebook_node(nb)
        page["body"], page["api"] = site.postprocess(page, body, api_ids)
    pyg = HtmlFormatter(style="friendly").get_style_defs(".highlight")
    for page in site.pages:
        write_page(site, page, pyg)
    ref = dict(
        rel=None,
        out=REFERENCE,
        title="API reference",
        api=[],
        description="Every symbol documented with show_doc, by page.",
        body=reference_body(site),
    )
    write_page(site, ref, pyg)
    site.pages.append(ref)
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
