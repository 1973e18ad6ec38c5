"""W4 (many small mixed prefill+decode steps) with the Hopper prefill kernel (06c) against 06b's Triton
kernel, in one process; and the per-call host and GPU time of both kernels on one W4-like mixed batch.
usage: python tools/gpu/w4_prefill_check.py   (writes $OUT/w4_prefill_check.json)"""

import json, os, sys, time, datetime
import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import paged_flex.hopper_prefill as hp
from paged_flex.engine import LLM
from paged_flex.bench import run_w4, W1_CONFIG, random_model_folder
from paged_flex.testing import random_case
from paged_flex.triton_prefill import paged_prefill, prefill_tiles, queries_per_tile

res = {
    "device": torch.cuda.get_device_name(),
    "torch": torch.__version__,
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
    "workload": "W4 of notebook 14 (1000 requests, 4 join per step, prompts 16-256, 16 new tokens, bf16 "
    "random LLaMA-3.2-1B shape)",
}
ok_real = hp.hopper_prefill_ok


def use(hopper: bool):
    hp.hopper_prefill_ok = ok_real if hopper else (lambda *a, **k: False)


folder = random_model_folder(dict(W1_CONFIG), dtype=torch.bfloat16)
llm = LLM(
    folder,
    device="cuda",
    dtype=torch.bfloat16,
    max_num_seqs=128,
    max_num_batched_tokens=4096,
    kv_cache_memory=2 * 10**8,
)
for h in (True, False):
    use(h)
    run_w4(llm, n=200, per_step=4, new_tokens=16)  # warm-up: graphs, compiles
rows = []
for rep in range(2):
    for h in (True, False):
        use(h)
        torch.cuda.synchronize()
        r = run_w4(llm, n=1000, per_step=4, new_tokens=16)
        rows.append(
            {"hopper": h, "seconds": r["seconds"], "finished": r["finished_length"], "steps": r["steps"]}
        )
        print(rows[-1], flush=True)
res["w4"] = rows
# one mixed batch: 47 decode tokens + 4 prompt chunks, LLaMA-3.2-1B attention (32 q heads, 8 kv heads,
# head_dim 64)
cache, q, ids, pos, batch = random_case(
    num_seqs=51,
    page_size=16,
    num_heads=32,
    num_kv_heads=8,
    head_dim=64,
    dtype=torch.bfloat16,
    device="cuda",
    max_len=256,
    seed=0,
)
micro = {"tokens": len(ids)}
for h in (True, False):
    use(h)
    qpt = queries_per_tile(32, 8, page_size=16, device="cuda", dtype=q.dtype, head_dim=64)
    tiles = prefill_tiles(ids.cpu(), pos.cpu(), qpt).cuda()
    fn = lambda: paged_prefill(q, cache, 0, tiles)
    fn()
    torch.cuda.synchronize()
    gpu_us = do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3
    t0 = time.perf_counter()
    for _ in range(200):
        fn()
    host_us = (time.perf_counter() - t0) / 200 * 1e6
    torch.cuda.synchronize()
    micro["hopper" if h else "triton"] = {
        "gpu_us": gpu_us,
        "host_us_per_call": host_us,
        "tiles": int(tiles.shape[0]),
    }
    print(micro, flush=True)
res["mixed_batch"] = micro
json.dump(res, open(os.environ.get("OUT", ".") + "/w4_prefill_check.json", "w"), indent=1)
