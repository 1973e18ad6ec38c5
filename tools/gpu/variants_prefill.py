"""Attention variants in prefill and through the engine, on the GPU.

1. The Triton prefill kernel with each ready-made mod against the float64 reference of 04c (fp32 and bf16,
   NaN-poisoned pages).
2. The prefill workload (16 packed sequences of 128-4096 tokens, LLaMA-3-8B attention, bf16, pages of 16 and
   128 scattered at random): ours with each variant beside causal SDPA per sequence in the same run; for a
   sliding window, TFLOP/s on the scores it must compute.
3. The engine with a sliding window on W1's model in fp32: greedy tokens with pages freed behind the window
   equal those of a run that keeps every page (CUDA graphs and multi-step plans on), and the peak KV pages.
usage: [ONLY=a,b] [NO_ENGINE=1] python tools/gpu/variants_prefill.py  (writes $OUT/variants_prefill.json)
ONLY keeps the named variants of parts 1 and 2.
"""

import datetime, json, os, random, sys, time
import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import packed_prefill_case
from paged_flex.cache import PagedKVCache
from paged_flex.testing import random_case, poison
from paged_flex.triton_prefill import paged_prefill, prefill_tiles, queries_per_tile
from paged_flex.hopper_prefill import hopper_launch, HOPPER_CONFIG
from paged_flex.triton_prefill import heads_per_program
from paged_flex.mods import (
    sliding_window,
    chunked_local,
    softcap,
    alibi,
    alibi_slopes,
    attention_sinks,
    score_mods,
    mod_reference,
)

dev, T0 = "cuda", time.time()
ONLY = set(filter(None, os.environ.get("ONLY", "").split(",")))
res = {
    "device": torch.cuda.get_device_name(),
    "torch": torch.__version__,
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
    "checks": [],
    "prefill": [],
}


def rel(o, r):
    return ((o.double().cpu() - r.double().cpu()).norm() / r.double().cpu().norm()).item()


H = 8
small = {
    "window": (None, sliding_window(37)),
    "window per head": (None, sliding_window(torch.tensor([1, 3, 17, 64, 100, 5, 9, 200]))),
    "chunk": (None, chunked_local(64)),
    "softcap": (softcap(0.3), None),
    "alibi": (alibi(alibi_slopes(H)), None),
    "sinks": (attention_sinks(torch.linspace(-2, 2, H)), None),
    "all": (
        score_mods(softcap(2.0), alibi(alibi_slopes(H)), attention_sinks(torch.linspace(-1, 3, H))),
        sliding_window(90),
    ),
}
for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
    for name, (sm, mm) in small.items():
        if ONLY and name not in ONLY:
            continue
        for P in (16, 64):
            cache, q, ids, pos, batch = random_case(
                seed=P,
                num_heads=H,
                num_kv_heads=2,
                head_dim=64,
                max_len=700,
                page_size=P,
                dtype=dtype,
                device=dev,
                num_seqs=6,
            )
            ref = mod_reference(q, cache, 0, ids, pos, score_mod=sm, mask_mod=mm)
            poison(cache, batch, float("nan"))
            tiles = prefill_tiles(ids.cpu(), pos.cpu(), queries_per_tile(H, 2, page_size=P, device=dev)).to(
                dev
            )
            o = paged_prefill(q, cache, 0, tiles, score_mod=sm, mask_mod=mm)
            e = rel(o, ref)
            ok = not o.isnan().any().item() and e < tol
            res["checks"].append({"variant": name, "dtype": str(dtype), "page": P, "rel_err": e, "ok": ok})
            if not ok:
                print("FAIL", res["checks"][-1], flush=True)
bad = [c for c in res["checks"] if not c["ok"]]
print(
    f"prefill correctness: {len(res['checks'])} checks, {len(bad)} failed ({time.time() - T0:.0f} s)",
    flush=True,
)

HQ, HKV, D, dt = 32, 8, 128, torch.bfloat16
lens, starts, q, k, v, sdpa_per_seq, _ = packed_prefill_case(HQ, HKV, D, dt, dev)
T = sum(lens)
ids = torch.cat([torch.full((n,), i, device=dev) for i, n in enumerate(lens)])
posn = torch.cat([torch.arange(n, device=dev) for n in lens])


def bench(fn):
    return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3


t_sdpa = bench(sdpa_per_seq)
res["sdpa_per_seq_us"] = t_sdpa
full_flops = sum(4 * HQ * D * n * (n + 1) / 2 for n in lens)
variants = {
    "causal": (None, None),
    "softcap_50": (softcap(50.0), None),
    "alibi": (alibi(alibi_slopes(HQ)), None),
    "sinks": (attention_sinks(torch.randn(HQ)), None),
    "window_1024": (None, sliding_window(1024)),
    "chunk_2048": (None, chunked_local(2048)),
}
for P in (16, 128):
    random.seed(P)
    cache = PagedKVCache(1, HKV, D, T // P + 32, P, dtype=dt, device=dev, max_seqs=16, max_seq_len=4096)
    cache.allocator._free = random.sample(range(cache.num_pages), cache.num_pages)
    for i, n in enumerate(lens):
        cache.reserve(i, n)
    cache.write(0, cache.slots(ids, posn), k, v)
    tiles = prefill_tiles(ids.cpu(), posn.cpu(), queries_per_tile(HQ, HKV, page_size=P, device=dev)).to(dev)
    qpt_h = HOPPER_CONFIG["block_m"] // heads_per_program(
        HQ, HKV, HOPPER_CONFIG["block_m"], HOPPER_CONFIG["pack_heads"]
    )
    tiles_h = prefill_tiles(ids.cpu(), posn.cpu(), qpt_h).to(dev)
    t_hopper = bench(lambda: hopper_launch(q, cache, 0, tiles_h, None, HOPPER_CONFIG))
    for name, (sm, mm) in variants.items():
        if ONLY and name not in ONLY:
            continue
        o = paged_prefill(q, cache, 0, tiles, score_mod=sm, mask_mod=mm)
        err = 0.0
        for i in sorted(range(len(lens)), key=lambda i: lens[i])[:2]:  # the two shortest: a float64 reference
            s0, n = starts[i], lens[i]
            ref = mod_reference(
                q[s0 : s0 + n], cache, 0, ids[s0 : s0 + n], posn[s0 : s0 + n], score_mod=sm, mask_mod=mm
            )
            err = max(err, rel(o[s0 : s0 + n], ref))
        t = bench(lambda: paged_prefill(q, cache, 0, tiles, score_mod=sm, mask_mod=mm))
        flops = full_flops
        if mm is not None and "window" in mm.kernel:
            w = mm.kernel["window"]
            flops = sum(4 * HQ * D * sum(min(p + 1, w) for p in range(n)) for n in lens)
        if mm is not None and "chunk" in mm.kernel:
            c = mm.kernel["chunk"]
            flops = sum(4 * HQ * D * sum(p % c + 1 for p in range(n)) for n in lens)
        r = {
            "page": P,
            "variant": name,
            "ours_us": t,
            "sdpa_per_seq_causal_us": t_sdpa,
            "ratio_vs_sdpa": t / t_sdpa,
            "hopper_plain_us": t_hopper,
            "rel_err_two_shortest_seqs": err,
            "tflops_needed": flops / t / 1e6,
        }
        res["prefill"].append(r)
        print(
            f"page {P:>3} {name:12s} ours {t:7.0f} us = {t / t_sdpa:.3f}x SDPA per seq ({t_sdpa:.0f}), "
            f"Hopper plain {t_hopper:.0f}; {r['tflops_needed']:.0f} TFLOP/s needed; err {err:.1e}",
            flush=True,
        )
    del cache
    torch.cuda.empty_cache()

# 3. the engine with a sliding window (fp32, W1's model shape, random weights)
if os.environ.get("NO_ENGINE"):
    json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "variants_prefill.json"), "w"), indent=1)
    sys.exit(0)
from paged_flex.bench import W1_CONFIG, random_model_folder, random_prompts
from paged_flex.engine import LLM, SamplingParams

folder = random_model_folder(W1_CONFIG, dtype=torch.float32)
prompts = random_prompts(16, 64, 1024, 32000)
sp = SamplingParams(max_tokens=96, temperature=0, ignore_eos=True)
toks, peaks = {}, {}
for name, free in (("keep", False), ("free", True)):
    llm = LLM(
        folder, dtype=torch.float32, max_num_seqs=16, kv_cache_memory=8 * 2**30, mask_mod=sliding_window(128)
    )
    if not free:
        llm.llm_engine.scheduler.config.sliding_window = None
    toks[name] = [o.outputs[0].token_ids for o in llm.generate(prompts, sp, use_tqdm=False)]
    peaks[name] = llm.stats.peak_pages
    del llm
    torch.cuda.empty_cache()
res["engine_window_128"] = {
    "same_tokens": toks["keep"] == toks["free"],
    "peak_pages_keep": peaks["keep"],
    "peak_pages_free": peaks["free"],
    "requests": 16,
    "new_tokens": 96,
}
print("engine, window 128, fp32:", res["engine_window_128"], flush=True)
json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "variants_prefill.json"), "w"), indent=1)
print(f"done in {time.time() - T0:.0f} s")
