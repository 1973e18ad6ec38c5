"""`paged-flex bench --workload w5 w5-capacity --small` on the CPU: W5 with its peers and the capacity run,
through the command a user types, written as one JSON file with its figure (about 10 s of CPU, a tiny model).

Notebook 14 tests the functions themselves (the floor by hand, `attempt` on an OOM, the capacity run's
requests at once); here the command's wiring: the workload names, what lands in the file, what is printed,
and nothing left behind.
"""

from __future__ import annotations
import json

import pytest

from paged_flex.cli import main


def test_bench_w5_small_on_the_cpu(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))  # where the random model's folder goes
    out = tmp_path / "w5.json"
    argv = ["bench", "--small", "--workload", "w5", "w5-capacity", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    r = res["results"]
    assert list(r) == ["w5", "w5_peers", "w5-capacity"] and list(res["models"]) == ["w5"]
    assert "max_position_embeddings': 131072" in res["models"]["w5"]  # W5's shape, shrunk: its 128k positions
    assert r["w5"]["generated_tokens"] == len(r["w5"]["prompt_lens"]) * r["w5"]["new_tokens"] > 0
    assert 0 < r["w5"]["metadata_fraction_of_step_time"] < 1
    for name, peer in r["w5_peers"].items():
        assert peer.get("generated_tokens") == r["w5"]["generated_tokens"], (name, peer)
    runs = r["w5-capacity"]["runs"]
    assert {run["cache"] for run in runs} == {"paged", "fms_contiguous"} and len(runs) == 12
    assert [run for run in runs if "error" in run] == []
    assert all(run["generated_tokens"] == run["requests"] * 4 for run in runs)
    printed = capsys.readouterr().out
    assert "w5-capacity {'kv_cache_dtype': 'auto'" in printed and "'runs': '12 runs'" in printed, printed
    assert out.with_suffix(".png").is_file()
    assert list(scratch.rglob("*.safetensors")) == []
