"""Workload W5 (long context) on a GPU, ours beside its peers in one process, then the capacity run.

W5: a LLaMA-3-8B shape (vocab 128256, hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate 14336,
untied; random bf16 weights drawn on the GPU, seed 0), 16 requests with prompts uniform in [4096, 16384]
(random.seed(0): 155,847 prompt tokens), 128 new tokens each, greedy, no early stop. Ours: paged_flex.LLM (one
warm-up pass, then the timed run) with the engine's model/metadata split and the floor (prefill FLOPs at the
device's matmul rate + decode bytes at its bandwidth: the measured rates of paged_flex.bench.DEVICE_PEAKS, and
the datasheet's). Peers, same prompts: HF generate_batch (paged|sdpa, continuous batching) and FMS generate
(contiguous cache, one left-padded batch). Goal on the H200: <= 5.5 s, metadata <= 1% of the step time.
Capacity: prompts of 64,000, 96,000 and 128,000 tokens, 1 and 4 at once, 16 new tokens, through our paged
cache and through FMS's contiguous cache; a run out of memory records the line where; then the same through
fp8 pages (kv_cache_dtype='fp8': twice the tokens per byte).

usage: OUT=dir python3 tools/gpu/w5_bench.py [w5|capacity|capacity-fp8|all]   (capacity-fp8: fp8 alone)
  writes $OUT/w5_<which>.json (after each part: a run cut short keeps what it measured) and its figure .png.
  W5 and the capacity run take a few minutes each on an H200: run them as two commands where a command may
  take at most 10 minutes. On the GPU machine install the wheels first as tools/gpu/speed_check.sh does.
W5_TINY=1: the same script end to end on the CPU with `paged-flex bench --small`'s settings (a tiny model,
  short prompts), to check it before spending GPU time."""

import datetime, importlib.metadata, importlib.util, json, os, sys, tempfile, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from paged_flex.bench import (  # noqa: E402
    DEVICE_PEAKS,
    SMALL_CONFIG,
    W5_CONFIG,
    Peaks,
    environment,
    free_memory,
    plot_bench,
    random_model_folder,
    run_w5_workloads,
    w5_floor,
)

DATASHEET = {"NVIDIA H200": Peaks("NVIDIA H200 (datasheet)", 989, 4.8)}
which = sys.argv[1] if len(sys.argv) > 1 else "all"
if which not in ("w5", "capacity", "capacity-fp8", "all"):
    sys.exit(f"usage: python3 tools/gpu/w5_bench.py [w5|capacity|capacity-fp8|all]; got {which!r}")
tiny = os.environ.get("W5_TINY") == "1"
dev = torch.device("cpu" if tiny else "cuda")
dtype = torch.float32 if tiny else torch.bfloat16
cfg = {**W5_CONFIG, **(SMALL_CONFIG if tiny else {})}
out = Path(os.environ.get("OUT", ".")) / f"w5_{which}{'_tiny' if tiny else ''}.json"
res = {
    **environment(),
    "transformers": importlib.metadata.version("transformers"),
    "ibm-fms": importlib.metadata.version("ibm-fms"),
    "workload": __doc__.split("\n\n")[1].replace("\n", " "),
    "model": f"random LLaMA {cfg}",
    "dtype": str(dtype),
    "small": tiny,
    "models": {"w5": f"random LLaMA {cfg}"},
    "results": {},
}


def dump():
    out.write_text(json.dumps(res, indent=1, default=str))
    if importlib.util.find_spec("matplotlib") is not None and res["results"]:
        try:
            plot_bench(res, out.with_suffix(".png"))
        except Exception as e:  # a figure missing a panel's data must not lose the JSON
            print(f"no figure: {type(e).__name__}: {e}")
    print("wrote", out, flush=True)


def report_w5(r: dict):
    w5 = r["w5"]
    split = {k: round(v, 3) for k, v in w5["time_split_s"].items()}
    print(
        f"W5 ours: {w5['seconds']:.2f} s, {w5['tokens_per_s']:.0f} tokens/s; time split (s) {split}; ", end=""
    )
    print(f"metadata {w5['metadata_fraction_of_step_time']:.2%} of the step time (goal <= 1%)", flush=True)
    for name, floor in w5.get("floors", {}).items():
        print(
            f"  floor ({name}): {floor['seconds']:.2f} s; ours reaches {floor['seconds'] / w5['seconds']:.0%}"
        )
    for name, p in r.get("w5_peers", {}).items():
        print(f"  {name}: " + (f"{p['seconds']:.1f} s" if "seconds" in p else f"failed at {p['where']}"))


with tempfile.TemporaryDirectory(prefix="w5_bench_") as tmp:
    t0 = time.perf_counter()
    folder = random_model_folder(cfg, Path(tmp) / "w5", dtype, device=dev)
    free_memory(dev)
    res["setup_s"] = time.perf_counter() - t0
    print(f"random model saved in {res['setup_s']:.0f} s", flush=True)
    if which in ("w5", "all"):
        res["results"].update(run_w5_workloads(folder, cfg["vocab_size"], ["w5"], dev, dtype, tiny, True))
        w5 = res["results"]["w5"]
        peaks = {"measured": DEVICE_PEAKS.get(res["device"]), "datasheet": DATASHEET.get(res["device"])}
        w5["floors"] = {
            k: w5_floor(cfg, w5["prompt_lens"], w5["new_tokens"], p, dtype) for k, p in peaks.items() if p
        }
        res["date_w5_done"] = datetime.datetime.now().isoformat(timespec="seconds")
        dump()
        report_w5(res["results"])
    if which in ("capacity", "all"):
        res["results"].update(
            run_w5_workloads(folder, cfg["vocab_size"], ["w5-capacity"], dev, dtype, tiny, True)
        )
        dump()
    if which in ("capacity", "capacity-fp8", "all"):
        res["results"]["w5-capacity-fp8"] = run_w5_workloads(
            folder, cfg["vocab_size"], ["w5-capacity"], dev, dtype, tiny, True, kv_cache_dtype="fp8"
        )["w5-capacity"]
        dump()
        caps = [k for k in ("w5-capacity", "w5-capacity-fp8") if k in res["results"]]
        for r in [r for k in caps for r in res["results"][k]["runs"]]:
            what = (
                f"{r['seconds']:.1f} s"
                if "seconds" in r
                else ("OOM" if r["oom"] else "failed") + f" at {r['where']}"
            )
            need = f"{r['kv_GB_needed']:.3g} GB of KV"
            print(f"{r['cache']:15s} {r['prompt_len']:7,} x{r['requests']}: {need}, {what}")
        for k in caps:
            c = res["results"][k]
            print(k, f"pool {c['paged_kv_pool_GB']:.1f} GB holds {c['paged_kv_pool_tokens']:,} tokens")
