"""Engine workloads W2 (capacity in 8 GB), W3 (shared 1,024-token prefix), W4 (1,000 requests arriving over time,
preemption) on the GPU, through paged_flex.bench.run_bench. usage: python tools/gpu/engine_bench.py (writes $OUT/engine_w2_w4.json)"""
import os, sys, json
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from paged_flex.bench import run_bench
res = run_bench(("w2", "w3", "w4"), os.path.join(os.environ.get("OUT", "."), "engine_w2_w4.json"))
for k, v in res["results"].items(): print(k, json.dumps({kk: vv for kk, vv in v.items()}, default=str)[:600], flush=True)
