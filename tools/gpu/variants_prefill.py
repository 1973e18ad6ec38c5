"""Attention variants in prefill and through the engine, on the GPU.

1. Both prefill kernels with each ready-made mod against the float64 reference of 04c: 06b's Triton kernel
   (fp32 and bf16) and 06c's Hopper kernel (bf16 with head_dim 64 and 128 and pages of 8-128, fp16 once), with
   NaN-poisoned free pages and stale NaN in the unused slots of each sequence's last page.
2. The prefill workload (16 packed sequences of 128-4096 tokens, LLaMA-3-8B attention, bf16, pages of 16 and
   128 scattered at random): both kernels with each variant beside causal SDPA per sequence in the same run
   (the registry picks the Hopper kernel on an sm_90 GPU); FlexAttention with the same mod on the contiguous
   packed tensors (document mask) and our FlexAttention path (`FLEX=1`); for a sliding window, TFLOP/s on the
   scores it must compute.
3. The engine with a sliding window on W1's model in fp32: greedy tokens with pages freed behind the window
   equal those of a run that keeps every page (CUDA graphs and multi-step plans on), and the peak KV pages.
usage: [ONLY=a,b] [NO_ENGINE=1] [FLEX=1] python tools/gpu/variants_prefill.py
(writes $OUT/variants_prefill.json)
ONLY keeps the named variants of parts 1 and 2.
"""

import datetime, json, os, random, sys, time
import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import packed_prefill_case, stale_nan
from paged_flex.cache import PagedKVCache
from paged_flex.testing import random_case, poison
from paged_flex.triton_prefill import paged_prefill, prefill_tiles, queries_per_tile
from paged_flex.hopper_prefill import hopper_launch, hopper_prefill, HOPPER_CONFIG
from paged_flex.attention import paged_attention
from torch.nn.attention.flex_attention import flex_attention, create_block_mask
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
    "alibi+sinks": (score_mods(alibi(alibi_slopes(H)), attention_sinks(torch.linspace(-2, 2, H))), None),
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


def check(kernel, name, dtype, tol, P, D, H, KV, sm, mm, seed):
    cache, q, ids, pos, batch = random_case(
        seed=seed,
        num_heads=H,
        num_kv_heads=KV,
        head_dim=D,
        max_len=700,
        page_size=P,
        dtype=dtype,
        device=dev,
        num_seqs=6,
    )
    ref = mod_reference(q, cache, 0, ids, pos, score_mod=sm, mask_mod=mm)
    poison(cache, batch, float("nan"))
    stale_nan(cache, batch)
    if kernel == "06b":
        qpt = queries_per_tile(H, KV, page_size=P, device=dev)
        tiles = prefill_tiles(ids.cpu(), pos.cpu(), qpt).to(dev)
        o = paged_prefill(q, cache, 0, tiles, score_mod=sm, mask_mod=mm)
    else:
        qpt = HOPPER_CONFIG["block_m"] // heads_per_program(H, KV, HOPPER_CONFIG["block_m"])
        tiles = prefill_tiles(ids.cpu(), pos.cpu(), qpt).to(dev)
        o = hopper_prefill(q, cache, 0, tiles, score_mod=sm, mask_mod=mm)
    e = rel(o, ref)
    ok = not o.isnan().any().item() and e < tol
    res["checks"].append(
        {
            "kernel": kernel,
            "variant": name,
            "dtype": str(dtype),
            "page": P,
            "head_dim": D,
            "rel_err": e,
            "ok": ok,
        }
    )
    if not ok:
        print("FAIL", res["checks"][-1], flush=True)


for name, (sm, mm) in small.items():
    if ONLY and name not in ONLY:
        continue
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        for P in (16, 64):
            check("06b", name, dtype, tol, P, 64, H, 2, sm, mm, P)
    for dtype, D, P in [(torch.bfloat16, D, P) for D in (64, 128) for P in (8, 16, 64, 128)] + [
        (torch.float16, 128, 16)
    ]:
        check("hopper", name, dtype, 2e-2, P, D, H, 2, sm, mm, P + D)
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
    "alibi": (alibi(alibi_slopes(HQ).to(dev)), None),  # on the device: FlexAttention reads it in-kernel
    "sinks": (attention_sinks(torch.randn(HQ)), None),
    "window_1024": (None, sliding_window(1024)),
    "chunk_2048": (None, chunked_local(2048)),
}
doc = ids.int()  # [T] sequence of each packed token


def flex_prefill(sm, mm, o):
    "FlexAttention with the same mod on the contiguous packed tensors, and our FlexAttention path."
    first = torch.tensor(starts, device=dev)[doc]  # [T] first packed index of each token's sequence

    def fm(b, h, qi, ki):
        ok = (doc[qi] == doc[ki]) & (ki <= qi)
        if mm is not None:
            ok = ok & mm(doc[qi], h, qi - first[qi], ki - first[ki])
        return ok

    fs = None if sm is None else (lambda s, b, h, qi, ki: sm(s, doc[qi], h, qi - first[qi], ki - first[ki]))
    bm = create_block_mask(fm, 1, None, T, T, device=dev)
    args = (q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None])
    f = lambda: flex_c(*args, score_mod=fs, block_mask=bm, enable_gqa=True)
    of = f()[0].transpose(0, 1)
    paged = lambda: paged_attention(q, cache, 0, ids, posn, score_mod=sm, mask_mod=mm, backend="flex")
    op = paged()
    return {
        "flex_contiguous_us": bench(f),
        "flex_contiguous_rel_err": rel(of, o),
        "ours_flex_path_us": bench(paged),
        "ours_flex_path_rel_err": rel(op, o),
    }


flex_c = torch.compile(flex_attention, dynamic=False)
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
        o = hopper_launch(q, cache, 0, tiles_h, None, HOPPER_CONFIG, sm, mm)
        o6 = paged_prefill(q, cache, 0, tiles, score_mod=sm, mask_mod=mm)
        err = err6 = 0.0
        for i in sorted(range(len(lens)), key=lambda i: lens[i])[:2]:  # the two shortest: a float64 reference
            s0, n = starts[i], lens[i]
            ref = mod_reference(
                q[s0 : s0 + n], cache, 0, ids[s0 : s0 + n], posn[s0 : s0 + n], score_mod=sm, mask_mod=mm
            )
            err = max(err, rel(o[s0 : s0 + n], ref))
            err6 = max(err6, rel(o6[s0 : s0 + n], ref))
        t = bench(lambda: hopper_launch(q, cache, 0, tiles_h, None, HOPPER_CONFIG, sm, mm))
        t6 = bench(lambda: paged_prefill(q, cache, 0, tiles, score_mod=sm, mask_mod=mm))
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
            "kernel": "hopper_prefill (06c)",
            "sdpa_per_seq_causal_us": t_sdpa,
            "ratio_vs_sdpa": t / t_sdpa,
            "ours_06b_us": t6,
            "ratio_06b_vs_sdpa": t6 / t_sdpa,
            "hopper_plain_us": t_hopper,
            "ratio_vs_hopper_causal": t / t_hopper,
            "rel_err_two_shortest_seqs": err,
            "rel_err_06b": err6,
            "tflops_needed": flops / t / 1e6,
        }
        if os.environ.get("FLEX") and P == 16 and name != "sinks" and time.time() - T0 < 330:
            try:
                r.update(flex_prefill(sm, mm, o))
            except Exception as e:
                r["flex_error"] = repr(e)[:300]
        res["prefill"].append(r)
        extra = ""
        if "flex_contiguous_us" in r:
            fc, fp = r["flex_contiguous_us"], r["ours_flex_path_us"]
            extra = f" | flex contiguous {fc:.0f}, our flex path {fp:.0f}"
        print(
            f"page {P:>3} {name:12s} ours {t:7.0f} us = {t / t_sdpa:.3f}x SDPA per seq ({t_sdpa:.0f}), "
            f"{t / t_hopper:.3f}x our causal; 06b {t6:.0f} us; {r['tflops_needed']:.0f} TFLOP/s needed; "
            f"err {err:.1e}{extra}",
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
