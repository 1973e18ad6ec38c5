"""The `paged-flex` command as a newcomer meets it, run in-process through `main(argv)` on a tiny random
LLaMA.

Each user mistake of the newcomer's trial is one line on stderr and exit status 2, told before any model
loads; `generate`'s JSON, `-n` (one request with `SamplingParams(n=N)` per prompt), `--seed` and `--stop`
agree with `LLM.generate`, and an engine that cannot fork refuses `-n` in one line; progress goes to
stderr; `demo` runs with fewer sequences than its prefill prompts; `bench` leaves no model folder behind.
"""

from __future__ import annotations
import json

import pytest
import torch

import paged_flex
from paged_flex.cli import Parser, main, parser
from paged_flex.engine import LLM, LLMEngine, SamplingParams
from paged_flex.fms import save_random_llama


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    "A tiny random LLaMA with its tokenizer (512 positions, no chat template) and a folder of a GPT-2."
    root = tmp_path_factory.mktemp("cli")
    gpt2 = root / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (gpt2 / "model.safetensors").write_bytes(b"")
    return {"tiny": str(save_random_llama(root / "tiny")), "gpt2": str(gpt2)}


MISTAKES = [  # argv ({tiny}, {gpt2}: the fixture's folders) -> what the one line must name
    ("generate hi --model /nonexistent", "'/nonexistent'"),
    ("generate hi --model {gpt2}", "'gpt2' model"),
    ("generate hi --model {tiny} --temperature -1", "got -1.0"),
    ("generate hi --model {tiny} --device bogus", "got 'bogus'"),
    ("generate hi --model {tiny} --top-p 0", "top_p must be in (0, 1]"),
    ("generate hi --model {tiny} --max-tokens 0", "max_tokens must be a positive int, got 0"),
    ("generate hi --model {tiny} -n 0", "-n must be a positive int, got 0"),
    ("generate hi --model {tiny} --stop=", "stop must be a list of non-empty strings"),
    ("generate hi --model {tiny} --chat", "no chat template"),
    ("generate hi --model {tiny} --max-tokens 600", "512 positions"),
    ("generate hi --max-tokens x", "invalid int value: 'x'"),
    ("demo --num-seqs 0", "--num-seqs must be a positive int, got 0"),
    ("demo --page-size 0", "got 0"),
    ("demo --page-size 48", "got 48"),
    ("demo --device bogus", "got 'bogus'"),
    ("bench --out /missing/dir/x.json", "folder '/missing/dir' does not exist"),
    ("bench --model /nonexistent", "'/nonexistent'"),
    ("bench --model {gpt2}", "'gpt2' model"),
    ("bench --workload w6", "invalid choice: 'w6'"),
    ("bogus", "invalid choice: 'bogus'"),
    ("serve /nonexistent", "'/nonexistent'"),
    ("serve {gpt2}", "'gpt2' model"),
    ("serve {tiny} --device bogus", "got 'bogus'"),
    ("serve {tiny} --port 70000", "--port must be 0-65535, got 70000"),
    ("serve {tiny} --port x", "invalid int value: 'x'"),
]


@pytest.mark.parametrize("argv, named", MISTAKES)
def test_a_mistake_is_one_line_before_any_model_loads(argv, named, folders, capsys, monkeypatch):
    def loads(*args, **kwargs):
        raise AssertionError(f"{argv}: the work began before the arguments were checked")

    monkeypatch.setattr(LLMEngine, "__init__", loads)
    monkeypatch.setattr("paged_flex.bench.run_bench", loads)
    monkeypatch.setattr("paged_flex.cli.demo", loads)
    monkeypatch.setattr("paged_flex.serve.serve_main", loads)
    rc = main(argv.format(**folders).split(" "))
    out, err = capsys.readouterr()
    assert (rc, out, len(err.splitlines())) == (2, "", 1), (argv, rc, out, err)
    assert err.startswith("paged-flex: error: ") and named in err, err


def test_every_option_has_help_and_a_shown_default(capsys):
    commands = parser()._subparsers._group_actions[0].choices
    assert {"assets", "bench", "demo", "generate"} <= set(commands)
    for name, p in commands.items():
        assert [a.dest for a in p._actions if not a.help] == [], name
    assert main(["generate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "(default: 64)" in out and "(default: None)" not in out, out
    assert "serve" in commands  # its options are paged_flex.serve's, parsed by serve_command
    from paged_flex.serve import add_serve_parser

    serve = add_serve_parser(Parser(prog="paged-flex").add_subparsers())
    assert [a.dest for a in serve._actions if not a.help] == []
    assert main(["serve", "--help"]) == 0
    assert "(default: 8000)" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"paged-flex {paged_flex.__version__}\n"


def test_generate_json_samples_equal_llm_generate(folders, capsys, monkeypatch):
    """Two prompts, `-n 2` sampled with `--seed 5`: one request per prompt with `n=2` (its prompt computed
    once), and sample j is LLM.generate's with seed 5 + j."""
    requests, add = [], LLMEngine.add_request

    def add_request(self, request_id, prompt, sampling_params=None):
        requests.append((request_id, sampling_params.n, sampling_params.seed))
        return add(self, request_id, prompt, sampling_params)

    monkeypatch.setattr(LLMEngine, "add_request", add_request)
    argv = ["generate", "The cache", "pages", "--model", folders["tiny"], "--device", "cpu"]
    argv += ["--max-tokens", "6", "-n", "2", "--temperature", "1", "--seed", "5", "--json", "--no-progress"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert requests == [(0, 2, 5), (1, 2, 5)]  # not one request per sample
    rows = [json.loads(line) for line in out.splitlines()]
    assert err == ""
    assert [(r["prompt"], r["index"]) for r in rows] == [
        (p, j) for p in ("The cache", "pages") for j in (0, 1)
    ]
    llm = LLM(folders["tiny"], device="cpu")
    for j in (0, 1):
        sp = SamplingParams(max_tokens=6, temperature=1.0, seed=5 + j)
        ref = llm.generate(["The cache", "pages"], sp, use_tqdm=False)
        for i, o in enumerate(ref):
            want = [o.outputs[0].text, o.outputs[0].token_ids, o.outputs[0].finish_reason]
            assert [rows[2 * i + j][k] for k in ("text", "token_ids", "finish_reason")] == want
    assert rows[0]["token_ids"] != rows[1]["token_ids"]  # the samples of a prompt differ


def test_generate_kv_cache_dtype_fp8_reaches_the_engine(folders, capsys, monkeypatch):
    "`--kv-cache-dtype fp8`: the engine's pages are fp8, and greedy text comes out; a bad name is one line."
    caches, init = [], LLMEngine.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        caches.append(self.cache)

    monkeypatch.setattr(LLMEngine, "__init__", spy)
    argv = ["generate", "pages", "--model", folders["tiny"], "--device", "cpu", "--max-tokens", "4"]
    assert main([*argv, "--kv-cache-dtype", "fp8", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("> pages\n")
    assert [(c.kv_cache_dtype, c.k.dtype) for c in caches] == [("fp8", torch.float8_e4m3fn)]
    assert main([*argv, "--kv-cache-dtype", "int4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'int4'" in err, err


def test_generate_text_numbers_the_samples(folders, capsys):
    "`-n 2` as text: the prompt, then each sample's text after its index."
    argv = ["generate", "pages", "--model", folders["tiny"], "--device", "cpu", "--max-tokens", "4"]
    assert main([*argv, "-n", "2", "--temperature", "1", "--seed", "3", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (len(lines), lines[0], lines[1][:4], lines[2][:4]) == (4, "> pages", "[0] ", "[1] "), lines


def test_generate_n_where_the_engine_frees_pages_is_one_line(folders, capsys, monkeypatch):
    "An engine that frees pages behind a sliding window cannot fork a prompt: `-n 2` is refused in one line."
    from paged_flex import cli

    def windowed(*args, **kwargs):
        engine = LLMEngine(folders["tiny"], device="cpu")
        engine.scheduler_config.sliding_window = 8  # as a Mistral checkpoint's engine has it
        return engine

    monkeypatch.setattr(cli, "load_engine", windowed)
    argv = ["generate", "pages", "--model", folders["tiny"], "--device", "cpu", "-n", "2", "--no-progress"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert (out, len(err.splitlines())) == ("", 1) and "n=2 forks the prompt's pages" in err, err


def test_generate_stop_strings_end_the_text(folders, capsys):
    base = [
        "generate",
        "The cache",
        "--model",
        folders["tiny"],
        "--device",
        "cpu",
        "--max-tokens",
        "8",
        "--json",
    ]
    base.append("--no-progress")
    assert main(base) == 0
    text = json.loads(capsys.readouterr().out)["text"]
    later = [c for c in dict.fromkeys(text[1:]) if c != "\ufffd"]
    assert len(later) >= 2, f"the tiny model's greedy text {text!r} has too few characters to stop at"
    first, second = later[1], later[0]  # both repeated --stop; whichever comes first in the text wins
    assert main([*base, "--stop", first, "--stop", second]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["text"] == text[: min(text.find(first, 1), text.find(second, 1))]
    assert row["finish_reason"] == "stop"


def test_generate_shows_progress_on_stderr(folders, capsys):
    argv = ["generate", "hi", "--model", folders["tiny"], "--device", "cpu", "--max-tokens", "4"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.startswith("> hi\n")
    assert f"loading {folders['tiny']} on cpu" in err and "generate" in err and "100%" in err, err


def test_demo_with_fewer_sequences_than_prefill_prompts(capsys, monkeypatch):
    monkeypatch.setattr("paged_flex.assets.smollm2_available", lambda: False)  # only the cache half
    assert main(["demo", "--num-seqs", "2", "--no-progress", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "W0: 2 sequences" in out and "packed prefill of 2 prompts" in out, out


def test_bench_leaves_no_model_folder(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))  # where the random model's folder goes
    out = tmp_path / "bench.json"
    argv = ["bench", "--small", "--workloads", "w2", "--no-peers", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    assert list(json.loads(out.read_text())["results"]) == ["w2"] and out.with_suffix(".png").is_file()
    assert list(scratch.rglob("*.safetensors")) == []
