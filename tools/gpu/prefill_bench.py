"""Paged prefill on the GPU: correctness of the prefill kernels (NaN-poisoned pages, three dtypes; bf16/fp16
go to the warp-specialised Hopper kernel of notebook 06c on an H100, fp32 to 06b's Triton kernel), then 16
packed sequences of 128-4096 tokens against SDPA per sequence and padded SDPA, in one process: 06c's kernel
(default, and a few configurations) and 06b's Triton kernels.
usage: python tools/gpu/prefill_bench.py   (writes $OUT/prefill_bench.json)"""

import itertools, json, os, random, sys, datetime, warnings
import torch, torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from common import packed_prefill_case
from paged_flex.cache import PagedKVCache, reference_attention
from paged_flex.testing import random_case, poison
from paged_flex.attention import paged_attention
from paged_flex.triton_prefill import (
    paged_prefill,
    prefill_tiles,
    queries_per_tile,
    PREFILL_CONFIG,
    prefill_config,
    tma_prefill_ok,
    heads_per_program,
)
from paged_flex.hopper_prefill import hopper_prefill, hopper_prefill_ok, hopper_launch, HOPPER_CONFIG
from paged_flex.backends import select_backend

warnings.filterwarnings("ignore")
dev, dt, HQ, HKV, D = "cuda", torch.bfloat16, 32, 8, 128
res = {
    "device": torch.cuda.get_device_name(),
    "torch": torch.__version__,
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
    "workload": "prefill: 16 sequences, lengths uniform in [128, 4096] (random.seed(0)), packed; "
    "LLaMA-3-8B attention "
    "(32 q heads, 8 kv heads, head_dim 128, bf16), pages scattered at random",
}


def rel(o, r):
    return ((o.double() - r.double()).norm() / r.double().norm()).item()


# correctness
checks = []
for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 1e-2)):
    for head_dim, (H, KV) in ((64, (8, 2)), (128, (32, 8))):
        for P in (16, 32, 64, 128):
            for seed in range(2):
                cache, q, ids, pos, batch = random_case(
                    page_size=P,
                    num_heads=H,
                    num_kv_heads=KV,
                    head_dim=head_dim,
                    dtype=dtype,
                    device=dev,
                    max_len=700,
                    seed=seed,
                    num_seqs=6,
                )
                ref = reference_attention(q, cache, 0, ids, pos)
                poison(cache, batch, float("nan"))
                kern = (
                    "hopper"
                    if select_backend(cache, decode=False, requested="triton") == "hopper_prefill"
                    else "triton"
                )
                outs = {kern: paged_attention(q, cache, 0, ids, pos, backend="triton")}
                if kern == "hopper":  # 06b's kernel on the same case, asked for explicitly
                    t = prefill_tiles(
                        ids.cpu(), pos.cpu(), queries_per_tile(H, KV, page_size=P, device=dev)
                    ).to(dev)
                    outs["triton"] = paged_prefill(q, cache, 0, t, tma=tma_prefill_ok(dev, P))
                for name, o in outs.items():
                    e = rel(o, ref)
                    ok = (not o.isnan().any().item()) and e < tol
                    checks.append(
                        {
                            "kernel": name,
                            "dtype": str(dtype),
                            "head_dim": head_dim,
                            "page": P,
                            "seed": seed,
                            "rel_err": e,
                            "ok": ok,
                        }
                    )
                    if not ok:
                        print("FAIL", checks[-1], flush=True)
res["correctness"] = {
    "cases": len(checks),
    "failed": [c for c in checks if not c["ok"]],
    "max_rel_err": {
        d: max(c["rel_err"] for c in checks if c["dtype"] == d) for d in {c["dtype"] for c in checks}
    },
}
print(
    "correctness",
    res["correctness"]["cases"],
    "cases",
    len(res["correctness"]["failed"]),
    "failed",
    res["correctness"]["max_rel_err"],
    flush=True,
)
# benchmark
lens, starts, q, k, v, sdpa_per_seq, (qp, kp, vp) = packed_prefill_case(HQ, HKV, D, dt, dev)
T = sum(lens)
bench = lambda fn: do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3
ref = torch.cat([o[0].transpose(0, 1) for o in sdpa_per_seq()]).float()
flops = sum(4 * n * (n + 1) / 2 * HQ * D for n in lens)
pre = {"lens": lens, "tokens": T, "causal_flops": flops}
pre["sdpa_per_seq_us"] = bench(sdpa_per_seq)
pre["sdpa_padded_us"] = bench(
    lambda: F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, enable_gqa=True)
)
from torch.nn.attention import sdpa_kernel, SDPBackend

for b in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
    with sdpa_kernel(b):
        pre[f"sdpa_per_seq_{b.name.lower()}_us"] = bench(sdpa_per_seq)
print(
    "SDPA per sequence (us): default",
    pre["sdpa_per_seq_us"],
    "cudnn",
    pre["sdpa_per_seq_cudnn_attention_us"],
    "flash",
    pre["sdpa_per_seq_flash_attention_us"],
    flush=True,
)
ids = torch.cat([torch.full((n,), i, device=dev) for i, n in enumerate(lens)])
posn = torch.cat([torch.arange(n, device=dev) for n in lens])
rows = []
TRITON_SWEEP = [
    (True, 128, 64, 8, 3),
    (True, 128, 128, 8, 3),
    (True, 128, 64, 4, 3),
    (True, 64, 64, 4, 2),
]  # 06b: pack, tile, warps, stages
HOPPER_SWEEP = [
    (128, 128, 8, 2),
    (128, 128, 8, 3),
    (128, 64, 8, 3),
    (128, 64, 8, 4),
    (64, 64, 4, 3),
]  # 06c: tile, warps, stages


def measure(r: dict, queries: int, call) -> dict:
    """Time `call(tiles)` (tiles of `queries` queries) into `r`, after checking its output against SDPA's;
    errors recorded.
    """
    try:
        tiles = prefill_tiles(ids.cpu(), posn.cpu(), queries).to(dev)
        o = call(tiles)
        torch.cuda.synchronize()
        r["rel_err_vs_sdpa"] = ((o.float() - ref).norm() / ref.norm()).item()
        r["us"] = bench(lambda: call(tiles))
    except Exception as ex:
        r["error"] = repr(ex)[:300]
    print(r, flush=True)
    return r


def run_config(cache, P, pack, bm, bn, w, st):
    r = {
        "page": P,
        "pack_heads": pack,
        "block_m": bm,
        "block_n": bn,
        "warps": w,
        "stages": st,
        "tma": tma_prefill_ok(dev, P, bn),
    }
    return measure(
        r,
        queries_per_tile(HQ, HKV, bm, pack),
        lambda t: paged_prefill(
            q, cache, 0, t, block_m=bm, block_n=bn, num_warps=w, num_stages=st, pack_heads=pack
        ),
    )


def run_hopper(cache, P, bm, bn, w, st):
    r = {"page": P, "kernel": "hopper", "block_m": bm, "block_n": bn, "warps": w, "stages": st}
    return measure(
        r,
        bm // heads_per_program(HQ, HKV, bm),
        lambda t: hopper_prefill(q, cache, 0, t, block_m=bm, block_n=bn, num_warps=w, num_stages=st),
    )


caches = {}
for P in (16, 32, 64, 128):
    cache = PagedKVCache(1, HKV, D, T // P + 32, P, dtype=dt, device=dev, max_seqs=16, max_seq_len=4096)
    cache.allocator._free = random.sample(range(cache.num_pages), cache.num_pages)
    for i, n in enumerate(lens):
        cache.reserve(i, n)
    cache.write(0, cache.slots(ids, posn), k, v)
    caches[P] = cache
for P in (16, 64):  # small sweeps of both kernels
    rows += [run_config(caches[P], P, *c) for c in TRITON_SWEEP]
    rows += [run_hopper(caches[P], P, *c) for c in HOPPER_SWEEP]
pre["hopper"] = {}
for P in (16, 32, 64, 128):  # the default path: paged_prefill with no options (06c's kernel here)
    if (
        select_backend(caches[P], decode=False, requested="triton") == "hopper_prefill"
    ):  # the registry's choice
        c = dict(HOPPER_CONFIG, kernel="hopper")
        qpt = c["block_m"] // heads_per_program(HQ, HKV, c["block_m"], c["pack_heads"])
        fn = lambda t, P=P: hopper_launch(q, caches[P], 0, t, None, HOPPER_CONFIG)
    else:
        c = dict(prefill_config(P, dev), kernel="triton")
        qpt, fn = (
            queries_per_tile(HQ, HKV, page_size=P, device=dev),
            lambda t, P=P: paged_prefill(q, caches[P], 0, t),
        )
    r = measure({"page": P, "kernel": c["kernel"], "config": c}, qpt, fn)
    r.update(
        ratio_vs_sdpa_per_seq=r["us"] / pre["sdpa_per_seq_us"],
        ratio_vs_sdpa_flash=r["us"] / pre["sdpa_per_seq_flash_attention_us"],
        ratio_vs_sdpa_cudnn=r["us"] / pre["sdpa_per_seq_cudnn_attention_us"],
        tflops=flops / r["us"] / 1e6,
    )
    pre["hopper"][P] = r
    print(
        f"page {P}: default path ({c['kernel']}) {r['us']:.0f} us = {r['ratio_vs_sdpa_per_seq']:.3f}x "
        f"SDPA per seq, "
        f"{r['ratio_vs_sdpa_cudnn']:.3f}x cuDNN, {r['ratio_vs_sdpa_flash']:.3f}x FlashAttention-2",
        flush=True,
    )
import time

pre["default_configs"] = {}
for P in (16, 32, 64, 128):
    c = prefill_config(P, dev)
    pre["default_configs"][P] = c  # 06b's Triton kernel, as before
    r = run_config(caches[P], P, c["pack_heads"], c["block_m"], c["block_n"], c["num_warps"], c["num_stages"])
    rows.append(r)
    best = min((x for x in rows if x["page"] == P and "us" in x), key=lambda x: x["us"])
    t0 = time.perf_counter()
    [
        prefill_tiles(ids.cpu(), posn.cpu(), queries_per_tile(HQ, HKV, page_size=P, device=dev))
        for _ in range(10)
    ]
    host = (time.perf_counter() - t0) / 10 * 1e6
    pre[f"best_p{P}"] = dict(
        r,
        tiles_host_us=host,
        ratio_vs_sdpa_per_seq=r["us"] / pre["sdpa_per_seq_us"],
        ratio_vs_sdpa_flash=r["us"] / pre["sdpa_per_seq_flash_attention_us"],
        ratio_vs_sdpa_cudnn=r["us"] / pre["sdpa_per_seq_cudnn_attention_us"],
        fastest_at_this_page=best,
    )
    print(
        f"page {P}: default config ({'TMA' if r['tma'] else 'pointer'} kernel) {r['us']:.0f} us = "
        f"{r['us'] / pre['sdpa_per_seq_us']:.3f}x SDPA per seq "
        f"({r['us'] / pre['sdpa_per_seq_flash_attention_us']:.2f}x its FlashAttention backend); fastest "
        f"here {best['us']:.0f} us",
        flush=True,
    )
pre["configs"] = rows
res["prefill"] = pre
pre["sdpa_per_seq_us_end"] = bench(sdpa_per_seq)
print(
    f"SDPA per seq {pre['sdpa_per_seq_us']:.0f} us (again at the end: {pre['sdpa_per_seq_us_end']:.0f}) "
    f"({flops / pre['sdpa_per_seq_us'] / 1e6:.0f} TFLOP/s), padded {pre['sdpa_padded_us']:.0f} us"
)
json.dump(res, open(os.environ.get("OUT", ".") + "/prefill_bench.json", "w"), indent=1)
