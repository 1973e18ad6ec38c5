"""Engine workloads on the GPU through paged_flex.bench.run_bench: W2 (capacity in 8 GB), W3 (shared
1,024-token prefix), W4 (1,000 requests arriving over time, preemption) in bf16; with `fp32`, W4 again in
float32 (outputs compared with solo runs).
usage: python tools/gpu/engine_bench.py [fp32]
    (writes $OUT/engine_w2_w4.json or $OUT/engine_w4_fp32.json)"""

import os, sys, json
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from paged_flex.bench import run_bench

out = os.environ.get("OUT", ".")
if "fp32" in sys.argv:
    res = run_bench(("w4",), os.path.join(out, "engine_w4_fp32.json"), dtype=torch.float32)
else:
    res = run_bench(("w2", "w3", "w4"), os.path.join(out, "engine_w2_w4.json"))
for k, v in res["results"].items():
    print(k, json.dumps(v, default=str)[:600], flush=True)
