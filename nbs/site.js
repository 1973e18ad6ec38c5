// Search and the table of contents of the documentation site (tools/build_docs.py copies this file to
// _site/site.js). The index is search_index.js, loaded before this script: window.PF_SEARCH, one entry per
// page section and API entry ({t: page title, h: heading, u: url from the site root, x: text, k: kind}).
// Nothing is fetched: the pages work from file:// as well as from a web server.
(function () {
  "use strict";
  const ROOT = document.currentScript.getAttribute("src").replace(/site\.js$/, "");
  const INDEX = window.PF_SEARCH || [];

  function words(query) {
    return query.toLowerCase().split(/\s+/).filter(Boolean);
  }

  // Entries holding every word (in the heading, the text or the page's title) and at least one in the
  // heading or the text; best first: the whole query as the heading, then words in headings, titles, text.
  function search(query) {
    const ws = words(query), whole = query.trim().toLowerCase();
    if (!ws.length) return [];
    const hits = [];
    for (const d of INDEX) {
      const name = d.h.toLowerCase(), title = d.t.toLowerCase(), text = d.x.toLowerCase();
      let score = name === whole ? 50 : 0, own = false;
      for (const w of ws) {
        const s = name.includes(w) ? 10 : text.includes(w) ? 1 : title.includes(w) ? 0.5 : 0;
        if (!s) { score = -1; break; }
        own = own || s >= 1;
        score += s;
      }
      if (score > 0 && own) hits.push({ score: score + (d.k === "api" ? 2 : 0), d });
    }
    return hits.sort((a, b) => b.score - a.score).map((h) => h.d);
  }

  function snippet(text, ws) {
    const lower = text.toLowerCase();
    const first = Math.min(...ws.map((w) => (lower.includes(w) ? lower.indexOf(w) : text.length)));
    const start = Math.max(0, first - 60);
    return (start ? "…" : "") + text.slice(start, start + 200) + (start + 200 < text.length ? "…" : "");
  }

  function hitItem(d, ws) {
    const li = document.createElement("li");
    li.className = "hit hit-" + d.k;
    const a = document.createElement("a");
    a.href = ROOT + d.u;
    a.textContent = d.h;
    li.append(a);
    if (d.k !== "page") {
      const where = document.createElement("span");
      where.className = "hit-page";
      where.textContent = d.t;
      li.append(where);
    }
    if (d.x) {
      const p = document.createElement("p");
      p.textContent = snippet(d.x, ws);
      li.append(p);
    }
    return li;
  }

  // The sidebar's box shows the best hits as you type; Enter opens search.html with all of them.
  const form = document.querySelector("form.search");
  const input = form && form.querySelector("input");
  if (form) {
    const list = form.querySelector(".search-hits");
    input.addEventListener("input", () => {
      const q = input.value;
      list.replaceChildren(...search(q).slice(0, 8).map((d) => hitItem(d, words(q))));
      list.hidden = !list.children.length;
    });
  }

  const results = document.getElementById("search-results");
  if (results) {
    const q = new URLSearchParams(location.search).get("q") || "";
    if (input) input.value = q;
    const hits = search(q);
    results.replaceChildren(...hits.map((d) => hitItem(d, words(q))));
    document.getElementById("search-summary").textContent = q.trim()
      ? `${hits.length} result${hits.length === 1 ? "" : "s"} for “${q.trim()}”`
      : "Type a word or a name (LLM.generate, page_size) in the search box.";
  }

  // The table of contents marks the section at the top of the window.
  const toc = document.getElementById("toc");
  if (toc && "IntersectionObserver" in window) {
    const links = new Map([...toc.querySelectorAll("a")].map((a) => [decodeURIComponent(a.hash.slice(1)), a]));
    const seen = new IntersectionObserver(
      (entries) => {
        for (const e of entries) {
          if (!e.isIntersecting || !links.has(e.target.id)) continue;
          toc.querySelectorAll("a.active").forEach((a) => a.classList.remove("active"));
          links.get(e.target.id).classList.add("active");
        }
      },
      { rootMargin: "0px 0px -75% 0px" }
    );
    links.forEach((a, id) => {
      const h = document.getElementById(id);
      if (h) seen.observe(h);
    });
  }
})();
