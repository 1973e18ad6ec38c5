"""The GPU sampling kernel against the PyTorch hash of notebook 11a, and its draws against the probabilities.

Checks, on the GPU: (1) `gumbel_argmax` (notebook 09b) picks the token `argmax(x + gumbel_noise(...))` picks,
with the noise computed by PyTorch on the CPU and on the GPU, for 64 rows of W1's vocabulary (32,000), random
logits (temperature-1 normal, a seventh of them masked), random keys and counters; (2) 200,000 draws of one
5-token distribution (one row, counters 0..199,999) give its probabilities within 0.005; (3) `sample_rows`
on the GPU gives the CPU's tokens. Prints the counts and writes $OUT/sampling_check_<device>.json."""

import json, math, os, sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from paged_flex.bench import environment  # noqa: E402
from paged_flex.fused_kernels import gumbel_argmax  # noqa: E402
from paged_flex.sampling import gumbel_noise, sample_rows  # noqa: E402

g = torch.Generator().manual_seed(0)
R, V = 64, 32000
x = torch.randn(R, V, generator=g)
x[:, ::7] = -math.inf
keys = torch.randint(0, 2**62, (R,), generator=g)
counters = torch.randint(0, 2**20, (R,), generator=g)
res = {**environment(), "workload": __doc__.split("\n\n")[1].replace("\n", " ")}
cpu = (x + gumbel_noise(keys, counters + 5, V)).argmax(-1)
gpu_torch = (x.cuda() + gumbel_noise(keys.cuda(), counters.cuda() + 5, V)).argmax(-1).cpu()
kernel = gumbel_argmax(x.cuda(), keys.cuda(), counters.cuda(), 5).cpu()
res["kernel_equals_cpu_torch"] = int((kernel == cpu).sum())
res["gpu_torch_equals_cpu_torch"] = int((gpu_torch == cpu).sum())
res["rows"] = R
res["sample_rows_gpu_equals_cpu"] = int(
    (sample_rows(x.cuda(), keys.cuda(), counters.cuda()).cpu() == sample_rows(x, keys, counters)).sum()
)
N = 200_000
p = torch.tensor([1.0, 0.0, -math.inf, 0.5, -1.0])
drawn = gumbel_argmax(p.expand(N, 5).contiguous().cuda(), torch.full((N,), 11).cuda(), torch.arange(N).cuda())
freq = torch.bincount(drawn.cpu(), minlength=5).double() / N
res["frequencies"], res["probabilities"] = freq.tolist(), p.softmax(-1).tolist()
res["max_abs_frequency_error"] = float((freq - p.double().softmax(-1)).abs().max())
print(json.dumps(res, indent=1), flush=True)
name = torch.cuda.get_device_name().replace("NVIDIA ", "").replace(" ", "_").lower()
(Path(os.environ.get("OUT", ".")) / f"sampling_check_{name}.json").write_text(json.dumps(res, indent=1))
