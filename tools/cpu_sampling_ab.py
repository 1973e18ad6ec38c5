"""Sampling on the CPU: the counter-based streams of notebook 11a (`sample_rows`) beside the torch.Generator
per row they replaced (softmax, one `exponential_` per row, argmax: the old `sample_rows`), in one process.

Workload: random float32 logits of 1 x 49,152 and 8 x 49,152 (SmolLM2's vocabulary) and 64 x 32,000 (W1's),
2 threads, 10 timed calls each after one warm-up, alternated 3 times; medians in ms.
usage: python tools/cpu_sampling_ab.py   (writes nbs/results/cpu_sampling_ab.json)"""

import datetime, json, platform, statistics, time
from pathlib import Path

import torch

from paged_flex.sampling import sample_rows

torch.set_num_threads(2)


def generators_per_row(x, gens):
    p = x.softmax(-1)
    q = torch.empty_like(p)
    for r, g in enumerate(gens):
        q[r].exponential_(generator=g)
    return (p / q.clamp_min_(torch.finfo(q.dtype).tiny)).argmax(-1)


def ms(fn, calls=10):
    fn()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls * 1e3


res = {
    "device": platform.processor() or platform.machine(),
    "cpu": next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), None
    ),
    "threads": 2,
    "torch": torch.__version__,
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
    "workload": __doc__.split("\n\n")[1].replace("\n", " "),
    "rows": [],
}
for R, V in ((1, 49152), (8, 49152), (64, 32000)):
    x = torch.randn(R, V, generator=torch.Generator().manual_seed(0))
    keys, counters = torch.arange(R), torch.zeros(R, dtype=torch.long)
    gens = [torch.Generator().manual_seed(i) for i in range(R)]
    new, old = [], []
    for _ in range(3):
        new.append(ms(lambda: sample_rows(x, keys, counters)))
        old.append(ms(lambda: generators_per_row(x, gens)))
    row = {"R": R, "V": V, "streams_ms": statistics.median(new), "generators_ms": statistics.median(old)}
    res["rows"].append(row)
    print(row, flush=True)
out = Path(__file__).resolve().parents[1] / "nbs" / "results" / "cpu_sampling_ab.json"
out.write_text(json.dumps(res, indent=1))
print("wrote", out)
