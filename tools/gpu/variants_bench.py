"""Attention variants on the GPU (notebook 04c's mods): correctness first, then decode timings.

1. The Triton decode kernel with each variant against the float64 reference of 04c (fp32 and bf16,
   NaN-poisoned free pages and stale NaN past each sequence's end, one split and several), and the
   gather and FlexAttention paths on a few variants.
2. Decode, LLaMA-3-8B attention (32 q / 8 kv heads, head_dim 128, bf16), pages of 16 and 128 scattered at
   random, the fraction of a graphed copy of the same bytes beside the fraction of peak copy bandwidth: for
   each variant, ours (CUDA-graph replays) beside contiguous causal SDPA in the same run, each output
   checked against a torch reference on the contiguous tensors; FlexAttention with the same mod on
   contiguous KV, and our FlexAttention path, for some variants (compiled; eager calls).
usage: python tools/gpu/variants_bench.py   (writes $OUT/variants_bench.json)
"""

import datetime, json, math, os, random, sys, time
import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import copy_us, graphed, scattered_decode_case, stale_nan
from paged_flex.testing import random_case, poison
from paged_flex.triton_decode import paged_decode
from paged_flex.attention import paged_attention
from paged_flex.mods import (
    sliding_window,
    chunked_local,
    prefix_lm,
    softcap,
    alibi,
    alibi_slopes,
    attention_sinks,
    score_mods,
    mod_reference,
)
from torch.nn.attention.flex_attention import flex_attention, create_block_mask

torch._dynamo.config.cache_size_limit = 256
dev, T0 = "cuda", time.time()
res = {
    "device": torch.cuda.get_device_name(),
    "torch": torch.__version__,
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
    "checks": [],
    "decode": [],
}


def rel(o, r):
    return ((o.double().cpu() - r.double().cpu()).norm() / r.double().cpu().norm()).item()


# 1. correctness
H = 4
small = {
    "window": (None, sliding_window(5)),
    "window per head": (None, sliding_window(torch.tensor([1, 3, 7, 64]))),
    "chunk": (None, chunked_local(8)),
    "prefix-LM": (None, prefix_lm(6)),
    "softcap": (softcap(0.3), None),
    "alibi": (alibi(alibi_slopes(H)), None),
    "sinks": (attention_sinks([0.5, -1.0, 2.0, 0.0]), None),
    "softcap+alibi+sinks, window": (
        score_mods(softcap(2.0), alibi(alibi_slopes(H)), attention_sinks([1.0, 0.0, -2.0, 3.0])),
        sliding_window(9),
    ),
}
for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
    for name, (sm, mm) in small.items():
        for seed in range(2):
            for splits in (1, 3):
                cache, q, ids, pos, batch = random_case(
                    seed=seed,
                    num_heads=H,
                    num_kv_heads=2,
                    head_dim=64,
                    max_len=300,
                    page_size=16,
                    dtype=dtype,
                    device=dev,
                    decode_only=True,
                    num_seqs=6,
                )
                ref = mod_reference(q, cache, 0, ids, pos, score_mod=sm, mask_mod=mm)
                poison(cache, batch, float("nan"))
                stale_nan(cache, batch)
                o = paged_decode(
                    q,
                    cache,
                    0,
                    ids.int(),
                    pos.int(),
                    int(pos.max()) + 1,
                    num_splits=splits,
                    score_mod=sm,
                    mask_mod=mm,
                )
                e = rel(o, ref)
                ok = not o.isnan().any().item() and e < tol
                res["checks"].append(
                    {
                        "path": "triton_decode",
                        "variant": name,
                        "dtype": str(dtype),
                        "seed": seed,
                        "splits": splits,
                        "rel_err": e,
                        "ok": ok,
                    }
                )
                if not ok:
                    print("FAIL", res["checks"][-1], flush=True)
for name in ("softcap", "window", "sinks", "prefix-LM"):
    sm, mm = small[name]
    for backend in ("gather", "flex"):
        if backend == "flex" and name == "prefix-LM":
            continue
        cache, q, ids, pos, batch = random_case(
            seed=7,
            num_heads=H,
            num_kv_heads=2,
            head_dim=64,
            max_len=300,
            page_size=16,
            dtype=torch.float32,
            device=dev,
            num_seqs=6,
        )
        ref = mod_reference(q, cache, 0, ids, pos, score_mod=sm, mask_mod=mm)
        poison(cache, batch, float("nan"))
        o = paged_attention(q, cache, 0, ids, pos, score_mod=sm, mask_mod=mm, backend=backend)
        e = rel(o, ref)
        ok = not o.isnan().any().item() and e < 1e-3
        res["checks"].append(
            {"path": backend, "variant": name, "dtype": "torch.float32", "rel_err": e, "ok": ok}
        )
        if not ok:
            print("FAIL", res["checks"][-1], flush=True)
bad = [c for c in res["checks"] if not c["ok"]]
print(
    f"correctness: {len(res['checks'])} checks, {len(bad)} failed, "
    f"max rel err {max(c['rel_err'] for c in res['checks']):.2e} ({time.time() - T0:.0f} s)",
    flush=True,
)

# 2. decode timings
HQ, HKV, D, dt = 32, 8, 128, torch.bfloat16
x = torch.empty(2 * 1024**3, dtype=torch.uint8, device=dev)
y = torch.empty_like(x)
copy = 2 * x.numel() / (do_bench(lambda: y.copy_(x), warmup=50, rep=200, return_mode="median") * 1e-3) / 1e12
del x, y
res["copy_TBs"] = copy
sinks = torch.randn(HQ, generator=torch.Generator().manual_seed(0))
variants = {
    "causal": (None, None),
    "softcap_50": (softcap(50.0), None),
    "alibi": (alibi(alibi_slopes(HQ)), None),
    "sinks": (attention_sinks(sinks), None),
    "window_1024": (None, sliding_window(1024)),
    "window_4096": (None, sliding_window(4096)),
    "chunk_8192": (None, chunked_local(8192)),
}
flex_for = ("causal", "softcap_50", "window_1024")
GRID = [(8, 1024), (32, 4096), (8, 16384), (64, 2048), (1, 32768)]


def torch_reference(q, k, v, L, sm, mm):
    "Decode of the last position L-1 over contiguous k, v [B, hkv, L, D] with the mods, in float32."
    B = q.shape[0]
    kk = k.float().repeat_interleave(HQ // HKV, 1)
    vv = v.float().repeat_interleave(HQ // HKV, 1)
    s = torch.einsum("bhd,bhkd->bhk", q.float(), kk) / math.sqrt(D)
    b, h = torch.arange(B, device=dev)[:, None, None], torch.arange(HQ, device=dev)[None, :, None]
    qi, ki = torch.tensor(L - 1, device=dev), torch.arange(L, device=dev)[None, None, :]
    allowed = torch.ones_like(s, dtype=torch.bool) if mm is None else mm(b, h, qi, ki).expand_as(s)
    if sm is not None:
        s = sm(s, b, h, qi, ki)
    s = s.masked_fill(~allowed, -math.inf)
    if sm is not None and "sinks" in sm.kernel:
        s = torch.cat([s, sm.kernel["sinks"].to(dev)[None, :, None].expand(B, HQ, 1)], -1)
    return torch.einsum("bhk,bhkd->bhd", torch.softmax(s, -1)[..., :L], vv)


flex_c = torch.compile(flex_attention, dynamic=False)
for P, B, L in [(P, B, L) for P in (16, 128) for B, L in GRID]:
    random.seed(0)
    torch.manual_seed(0)
    q, k, v, cache, seq, last = scattered_decode_case(B, L, P, HQ, HKV, D, dt, dev)
    g_sdpa, o_sdpa = graphed(lambda: F.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True))
    t_sdpa = do_bench(g_sdpa.replay, warmup=25, rep=100, return_mode="median") * 1e3
    for name, (sm, mm) in variants.items():
        keys = min(L, mm.kernel.get("window", L) if mm is not None else L)
        if mm is not None and "chunk" in mm.kernel:
            keys = (L - 1) % mm.kernel["chunk"] + 1
        need = 2 * B * keys * HKV * D * 2  # K and V bytes the variant must read
        g, o = graphed(lambda: paged_decode(q, cache, 0, seq, last, max_len=L, score_mod=sm, mask_mod=mm))
        g.replay()
        torch.cuda.synchronize()
        err = rel(o, torch_reference(q, k, v, L, sm, mm))
        t = do_bench(g.replay, warmup=25, rep=100, return_mode="median") * 1e3
        r = {
            "B": B,
            "L": L,
            "page": P,
            "variant": name,
            "keys_read": keys,
            "bytes_needed_MB": need / 1e6,
            "sdpa_causal_us": t_sdpa,
            "ours_us": t,
            "ratio_vs_sdpa": t / t_sdpa,
            "rel_err": err,
            "frac_of_copy": need / (t * 1e-6) / 1e12 / copy,
            "copy_same_bytes_us": copy_us(need),
            "frac_of_copy_same_bytes": copy_us(need) / t,
        }
        if name in flex_for and P == 16 and time.time() - T0 < 300:
            L1 = L - 1
            fm = (
                (lambda b, h, qi, ki: ki <= qi + L1)
                if mm is None
                else (lambda b, h, qi, ki, mm=mm: (ki <= qi + L1) & mm(b, h, qi + L1, ki))
            )
            fs = None if sm is None else (lambda s, b, h, qi, ki, sm=sm: sm(s, b, h, qi + L1, ki))
            bm = create_block_mask(fm, B, None, 1, L, device=dev)
            try:
                of = flex_c(q[:, :, None], k, v, score_mod=fs, block_mask=bm, enable_gqa=True)
                r["flex_contiguous_rel_err"] = rel(of.squeeze(2), o.float())
                r["flex_contiguous_us"] = (
                    do_bench(
                        lambda: flex_c(q[:, :, None], k, v, score_mod=fs, block_mask=bm, enable_gqa=True),
                        warmup=10,
                        rep=50,
                        return_mode="median",
                    )
                    * 1e3
                )
                op = paged_attention(q, cache, 0, seq, last, score_mod=sm, mask_mod=mm, backend="flex")
                r["ours_flex_path_rel_err"] = rel(op, o.float())
                r["ours_flex_path_us_with_metadata"] = (
                    do_bench(
                        lambda: paged_attention(
                            q, cache, 0, seq, last, score_mod=sm, mask_mod=mm, backend="flex"
                        ),
                        warmup=5,
                        rep=30,
                        return_mode="median",
                    )
                    * 1e3
                )
            except Exception as e:
                r["flex_error"] = repr(e)[:300]
        res["decode"].append(r)
        extra = ""
        if "flex_contiguous_us" in r:
            extra = (
                f" | flex contiguous {r['flex_contiguous_us']:.0f} us, our flex path "
                f"{r['ours_flex_path_us_with_metadata']:.0f} us"
            )
        print(
            f"p{P:<3} {B:>3}x{L:<6} {name:12s} sdpa {t_sdpa:7.1f} ours {t:7.1f} us = "
            f"{r['ratio_vs_sdpa']:.3f}x, "
            f"{r['frac_of_copy']:.0%} of peak copy, {r['frac_of_copy_same_bytes']:.0%} of a copy of the same "
            f"bytes on {keys} keys, err {err:.1e}{extra}",
            flush=True,
        )
    del q, k, v, cache, g_sdpa
    torch.cuda.empty_cache()
json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "variants_bench.json"), "w"), indent=1)
print(f"done in {time.time() - T0:.0f} s")
