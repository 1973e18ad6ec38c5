"""Decode attention timed as CUDA-graph replays (how an engine runs decode), ours beside contiguous SDPA,
in alternating rounds. Small shapes take a few microseconds of GPU time, less than Python needs to
launch them, so eager timings there measure the host, not the kernel.
usage: python tools/gpu/decode_graphs.py   (writes $OUT/decode_graphs.json)"""

import json, os, random, sys, datetime
import torch, torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from common import graphed, scattered_decode_case
from paged_flex.cache import PagedKVCache
from paged_flex.triton_decode import paged_decode

dev, dt, HQ, HKV, D = "cuda", torch.bfloat16, 32, 8, 128
x = torch.empty(2 * 1024**3, dtype=torch.uint8, device=dev)
y = torch.empty_like(x)
copy_tbs = (
    2 * x.numel() / (do_bench(lambda: y.copy_(x), warmup=50, rep=200, return_mode="median") * 1e-3) / 1e12
)
del x, y
out = {
    "device": torch.cuda.get_device_name(),
    "torch": torch.__version__,
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
    "copy_TBs": copy_tbs,
    "workload": "decode, LLaMA-3-8B attention (32 q / 8 kv heads, d 128, bf16), pages scattered at random; "
    "each call captured in a CUDA graph and replayed; median of 3 alternating rounds",
    "rows": [],
}


for P in (16, 32, 64, 128):
    for B, L in [(8, 1024), (32, 4096), (8, 16384), (64, 2048), (1, 32768), (128, 1024)]:
        random.seed(0)
        torch.manual_seed(0)
        kv_bytes = 2 * B * L * HKV * D * 2
        q, k, v, cache, seq, last = scattered_decode_case(B, L, P, HQ, HKV, D, dt, dev)
        g_sdpa, o_sdpa = graphed(lambda: F.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True))
        g_ours, o_ours = graphed(lambda: paged_decode(q, cache, 0, seq, last, max_len=L))
        g_sdpa.replay()
        g_ours.replay()
        torch.cuda.synchronize()
        ref = o_sdpa.squeeze(2).float()
        err = ((o_ours.float() - ref).norm() / ref.norm()).item()
        ts = {"sdpa": [], "ours": []}
        for _ in range(3):
            ts["sdpa"].append(do_bench(g_sdpa.replay, warmup=25, rep=100, return_mode="median") * 1e3)
            ts["ours"].append(do_bench(g_ours.replay, warmup=25, rep=100, return_mode="median") * 1e3)
        med = {n: sorted(t)[1] for n, t in ts.items()}
        r = {
            "page": P,
            "B": B,
            "L": L,
            "kv_MB": kv_bytes / 1e6,
            "floor_us": kv_bytes / (copy_tbs * 1e12) * 1e6,
            "sdpa_us": med["sdpa"],
            "ours_us": med["ours"],
            "rounds": ts,
            "rel_err_vs_sdpa": err,
            "ratio": med["ours"] / med["sdpa"],
            "ours_frac_of_copy": kv_bytes / (med["ours"] * 1e-6) / 1e12 / copy_tbs,
        }
        out["rows"].append(r)
        print(
            f"{P:>4} {B:>4} {L:>6} floor {r['floor_us']:6.1f} sdpa {med['sdpa']:6.1f} ours "
            f"{med['ours']:6.1f} ratio {r['ratio']:.3f} "
            f"copy {r['ours_frac_of_copy']:.1%} err {err:.1e}",
            flush=True,
        )
        del q, k, v, cache, g_sdpa, g_ours
        torch.cuda.empty_cache()
json.dump(out, open(os.environ.get("OUT", ".") + "/decode_graphs.json", "w"), indent=1)
