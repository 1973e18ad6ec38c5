"""What zeroing fresh pages (notebook 02) costs on a GPU: W1 through the engine with and without, alternated
in one process, and `zero_pages` alone on a W1-sized pool.

W1: a LLaMA-3.2-1B shape (random bf16 weights, seed 0), 64 requests with prompts uniform in [64, 1024], 128
new tokens each, greedy, no early stop; one warm-up, then REPEATS (3) timed runs of each variant, alternated.
"Off" sets the block tables' `on_fresh` to None, so fresh pages keep what earlier owners left.

usage: OUT=dir python3 tools/gpu/zero_pages_ab.py   (writes $OUT/zero_pages_ab_<device>.json)"""

import json, os, statistics, sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from paged_flex.bench import W1_CONFIG, environment, random_model_folder, random_prompts, run_w1  # noqa: E402
from paged_flex.engine import LLM  # noqa: E402

REPEATS = int(os.environ.get("REPEATS", 3))
res = {
    **environment(),
    "workload": __doc__.split("\n\n")[1].replace("\n", " "),
    "runs": {"on": [], "off": []},
}
folder = random_model_folder(W1_CONFIG, device="cuda")
prompts = random_prompts(64, 64, 1024, W1_CONFIG["vocab_size"])
llm = LLM(folder)
tables = llm.cache.block_tables
zero = tables.on_fresh
for rep in range(REPEATS):
    for variant in ("on", "off") if rep % 2 == 0 else ("off", "on"):
        tables.on_fresh = zero if variant == "on" else None
        r = run_w1(llm, prompts)  # its own warm-up pass first
        res["runs"][variant].append({k: r[k] for k in ("seconds", "tokens_per_s", "steps", "time_split_s")})
        print(
            variant,
            round(r["seconds"], 4),
            {k: round(v, 4) for k, v in r["time_split_s"].items()},
            flush=True,
        )
tables.on_fresh = zero
res["median_s"] = {v: statistics.median(x["seconds"] for x in runs) for v, runs in res["runs"].items()}
res["on_over_off"] = res["median_s"]["on"] / res["median_s"]["off"]
c = llm.cache
res["zero_pages_us"] = {}
for n in (1, 16, 64, 512, 4096):
    pages = torch.randperm(c.num_pages, device="cuda")[:n]
    us = do_bench(lambda: c.zero_pages(pages), warmup=20, rep=100, return_mode="median") * 1e3
    per_page_bytes = 2 * c.k[:, 0].numel() * c.k.element_size()
    res["zero_pages_us"][n] = {"us": us, "GB_per_s": n * per_page_bytes / (us * 1e-6) / 1e9}
    print(
        f"zero_pages of {n} pages: {us:.1f} us ({res['zero_pages_us'][n]['GB_per_s']:.0f} GB/s)", flush=True
    )
res["pool"] = repr(llm)
name = torch.cuda.get_device_name().replace("NVIDIA ", "").replace(" ", "_").lower()
out = Path(os.environ.get("OUT", ".")) / f"zero_pages_ab_{name}.json"
out.write_text(json.dumps(res, indent=1))
print("on/off", round(res["on_over_off"], 4), "wrote", out, flush=True)
