"""Tune the Triton paged decode kernel: tile, warps, stages and split count on the shapes where it lags.
usage: python tools/gpu/decode_sweep.py   (writes $OUT/decode_sweep.json)"""

import itertools, json, os, random, sys, datetime
import torch, torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from common import scattered_decode_case
from paged_flex.cache import PagedKVCache
from paged_flex.triton_decode import paged_decode, num_splits_for

dev, dt, HQ, HKV, D = "cuda", torch.bfloat16, 32, 8, 128
out = {
    "device": torch.cuda.get_device_name(),
    "torch": torch.__version__,
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
    "rows": [],
}
sms = torch.cuda.get_device_properties(0).multi_processor_count
for P, B, L in [(16, 1, 32768), (64, 1, 32768), (16, 8, 1024), (64, 8, 1024), (16, 32, 4096), (16, 8, 16384)]:
    random.seed(0)
    torch.manual_seed(0)
    q, k, v, cache, seq, last = scattered_decode_case(B, L, P, HQ, HKV, D, dt, dev)
    ref = F.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True).squeeze(2)
    sdpa = (
        do_bench(
            lambda: F.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True),
            warmup=25,
            rep=100,
            return_mode="median",
        )
        * 1e3
    )
    res = []
    for bn, w, st, mult in itertools.product((32, 64, 128), (4, 8), (2, 3, 4), (1, 2, 4, 8)):
        splits = num_splits_for(B, HKV, L, bn, mult * sms)
        try:
            fn = lambda: paged_decode(
                q, cache, 0, seq, last, max_len=L, block_n=bn, num_warps=w, num_stages=st, num_splits=splits
            )
            o = fn()
            e = ((o.float() - ref.float()).norm() / ref.float().norm()).item()
            t = do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e3
            res.append(
                {
                    "block_n": bn,
                    "warps": w,
                    "stages": st,
                    "mult": mult,
                    "splits": splits,
                    "us": t,
                    "rel_err": e,
                }
            )
        except Exception as ex:
            res.append({"block_n": bn, "warps": w, "stages": st, "mult": mult, "error": repr(ex)[:200]})
    ok = sorted([r for r in res if "us" in r and r["rel_err"] < 1e-2], key=lambda r: r["us"])
    default = next(
        (
            r
            for r in res
            if r.get("block_n") == 64 and r["warps"] == 4 and r["stages"] == 2 and r["mult"] == 2
        ),
        None,
    )
    out["rows"].append(
        {"page": P, "B": B, "L": L, "sdpa_us": sdpa, "default": default, "best": ok[:5], "all": res}
    )
    print(
        P,
        B,
        L,
        f"sdpa {sdpa:.1f}",
        "default",
        default and round(default["us"], 1),
        "best",
        [(r["block_n"], r["warps"], r["stages"], r["mult"], r["splits"], round(r["us"], 1)) for r in ok[:4]],
        flush=True,
    )
    del q, k, v, cache
    torch.cuda.empty_cache()
json.dump(out, open(os.environ.get("OUT", ".") + "/decode_sweep.json", "w"), indent=1)
