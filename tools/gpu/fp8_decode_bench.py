"""Decode over fp8 KV pages on the GPU (issue 13: "decode reads fp8 at >= 80% of copy bandwidth").

LLaMA-3-8B attention (32 q / 8 kv heads, head_dim 128), bf16 queries, pages of 16 and 128 scattered at
random, on notebook 07's decode grid. For each shape: the Triton decode kernel over fp8 e4m3 pages
(kv_cache_dtype "fp8", scale 1.0) and over bf16 pages, each as CUDA-graph replays, beside contiguous bf16
SDPA in the same run, and a graphed device copy of the same bytes as each reads. Correctness first: each
fp8 output against a float32 reference on the dequantized keys and values, with NaN in every page no
sequence owns.
usage: OUT=dir python3 tools/gpu/fp8_decode_bench.py      (writes $OUT/fp8_decode_<device>.json)"""

import datetime, json, math, os, random, sys, time
import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import copy_us, graphed, scattered_decode_case  # noqa: E402
from paged_flex.attention import paged_attention  # noqa: E402
from paged_flex.cache import reference_attention  # noqa: E402
from paged_flex.testing import poison, random_case, stale_nan  # noqa: E402
from paged_flex.triton_decode import paged_decode  # noqa: E402

dev, T0 = "cuda", time.time()
HQ, HKV, D, dt = 32, 8, 128, torch.bfloat16
GRID = [(8, 1024), (32, 4096), (8, 16384), (64, 2048), (1, 32768)]
name = torch.cuda.get_device_name()
res = {
    "device": name,
    "torch": torch.__version__,
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
    "workload": __doc__.split("\n\n")[1].replace("\n", " "),
    "decode": [],
}
res["checks"] = []  # prefill (pointer and TMA loads) and mixed steps over fp8 pages vs the float64 oracle
for kv in ("fp8_e4m3", "fp8_e5m2"):
    for P in (16, 64, 128):
        for seed in range(2):
            c, q, ids, pos, batch = random_case(
                page_size=P,
                seed=seed,
                dtype=dt,
                device=dev,
                max_len=300,
                num_heads=HQ,
                num_kv_heads=HKV,
                head_dim=D,
                kv_cache_dtype=kv,
                reused=True,  # pages come from a pool of NaN: the cache zeroes what it hands out
            )
            ref = reference_attention(q, c, 0, ids, pos)
            poison(c, batch)
            # flex (compiled: one case) reads last pages whole; the kernels mask, so stale NaN goes in after
            for backend in (("flex",) if P == 16 and seed == 0 else ()) + ("triton", "gather"):
                if backend == "triton":
                    stale_nan(c, batch)
                o = paged_attention(q, c, 0, ids, pos, backend=backend)
                e = ((o.double() - ref).norm() / ref.norm()).item()
                ok = not o.isnan().any().item() and e < 2e-2
                res["checks"].append(
                    {"kv": kv, "P": P, "seed": seed, "backend": backend, "rel_err": e, "ok": ok}
                )
                if not ok:
                    print("FAIL", res["checks"][-1], flush=True)
bad = [c for c in res["checks"] if not c["ok"]]
print(f"fp8 checks: {len(res['checks'])}, {len(bad)} failed ({time.time() - T0:.0f} s)", flush=True)
x = torch.empty(2 * 1024**3, dtype=torch.uint8, device=dev)
y = torch.empty_like(x)
res["copy_TBs"] = (
    2 * x.numel() / (do_bench(lambda: y.copy_(x), warmup=50, rep=200, return_mode="median") * 1e-3) / 1e12
)
del x, y


def reference(q, k, v):
    "Decode of the last position over contiguous k, v [B, hkv, L, D], float32."
    kk, vv = k.float().repeat_interleave(HQ // HKV, 1), v.float().repeat_interleave(HQ // HKV, 1)
    s = torch.einsum("bhd,bhkd->bhk", q.float(), kk) / math.sqrt(D)
    return torch.einsum("bhk,bhkd->bhd", torch.softmax(s, -1), vv)


rel = lambda o, r: ((o.float() - r).norm() / r.norm()).item()
for P, B, L in [(P, B, L) for P in (16, 128) for B, L in GRID]:
    row = {"B": B, "L": L, "page_size": P}
    for kv in ("fp8", "auto"):
        random.seed(0)
        torch.manual_seed(0)
        q, k, v, cache, seq, last = scattered_decode_case(B, L, P, HQ, HKV, D, dt, dev, kv_cache_dtype=kv)
        poison(cache, range(B))
        if kv == "auto":
            g_sdpa, _ = graphed(lambda: F.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True))
            row["sdpa_us"] = do_bench(g_sdpa.replay, warmup=25, rep=100, return_mode="median") * 1e3
        g, o = graphed(lambda: paged_decode(q, cache, 0, seq, last, max_len=L))
        g.replay()
        torch.cuda.synchronize()
        if kv == "fp8":  # the keys and values as the pages hold them (scale 1.0)
            kq, vq = (t.to(torch.float8_e4m3fn).to(dt) for t in (k, v))
            row["fp8_rel_err"] = rel(o, reference(q, kq, vq))
            row["fp8_vs_bf16_keys_rel_err"] = rel(o, reference(q, k, v))
            row["fp8_ok"] = not o.isnan().any().item() and row["fp8_rel_err"] < 1e-2
        t = do_bench(g.replay, warmup=25, rep=100, return_mode="median") * 1e3
        if kv == "fp8":  # the kernel's tile size and pipeline depth for one-byte pages
            row["fp8_configs_us"] = {}
            for bn, ns in ((64, 3), (128, 2), (128, 3)):
                g2, _ = graphed(
                    lambda: paged_decode(q, cache, 0, seq, last, max_len=L, block_n=bn, num_stages=ns)
                )
                row["fp8_configs_us"][f"block_n={bn},num_stages={ns}"] = (
                    do_bench(g2.replay, warmup=25, rep=100, return_mode="median") * 1e3
                )
                del g2
        nbytes = 2 * B * L * HKV * D * cache.k.element_size()
        row[f"{kv}_us"] = t
        row[f"{kv}_bytes"] = nbytes
        row[f"{kv}_of_copy_same_bytes"] = copy_us(nbytes) / t
        row[f"{kv}_of_peak_copy"] = nbytes / (t * 1e-6) / 1e12 / res["copy_TBs"]
        del q, k, v, cache, g, o
        torch.cuda.empty_cache()
    row["fp8_speedup_over_bf16_pages"] = row["auto_us"] / row["fp8_us"]
    row["fp8_over_sdpa_time"] = row["fp8_us"] / row["sdpa_us"]
    res["decode"].append(row)
    print(
        f"P={P:3d} {B:2d}x{L:5d}: fp8 {row['fp8_us']:7.1f} us "
        f"({row['fp8_of_copy_same_bytes']:.0%} of a same-size copy, {row['fp8_of_peak_copy']:.0%} of peak), "
        f"bf16 pages {row['auto_us']:7.1f} us ({row['auto_of_copy_same_bytes']:.0%}), "
        f"SDPA {row['sdpa_us']:7.1f} us; fp8 err {row['fp8_rel_err']:.1e}; other fp8 configs "
        f"{ {k: round(v, 1) for k, v in row['fp8_configs_us'].items()} } "
        f"ok={row['fp8_ok']} ({time.time() - T0:.0f} s)",
        flush=True,
    )
    json.dump(
        res,
        open(os.path.join(os.environ.get("OUT", "."), f"fp8_decode_{name.split()[-1].lower()}.json"), "w"),
        indent=1,
    )
