"""torch.no_grad against torch.inference_mode around the engine on the CPU, alternated in one process:
SmolLM2-135M-Instruct fp32, one prompt ("The history of the city begins"), 48 new tokens, greedy, 2 threads,
one warm-up, then 4 alternating runs of each; medians. paged_forward now runs in inference mode; here the
no_grad runs wrap generate in torch.no_grad() and patch paged_forward back to set_grad_enabled(False).

    python tools/cpu_inference_mode_ab.py --out nbs/results/cpu_inference_mode_ab.json
"""

import argparse, contextlib, datetime, json, os, platform, statistics, time

import torch

import paged_flex.fms as fms
from paged_flex.assets import smollm2_folder
from paged_flex.engine import LLM, SamplingParams

ap = argparse.ArgumentParser()
ap.add_argument("--out", default=None)
args = ap.parse_args()
torch.set_num_threads(2)
llm = LLM(smollm2_folder(), device="cpu", max_num_seqs=4, kv_cache_memory=2**28)
sp = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True)
prompt = "The history of the city begins"
modes = {"inference_mode": torch.inference_mode, "no_grad": lambda: torch.set_grad_enabled(False)}


@contextlib.contextmanager
def forward_under(mode):
    "paged_forward with `mode` instead of its inference mode (for the comparison only)."
    original = torch.inference_mode
    fms.torch.inference_mode = modes[mode]
    try:
        yield
    finally:
        fms.torch.inference_mode = original


def run(mode) -> float:
    with forward_under(mode):
        t = time.perf_counter()
        llm.generate([prompt], sp, use_tqdm=False)
        return time.perf_counter() - t


run("inference_mode")
times = {m: [] for m in modes}
for _ in range(4):
    for m in modes:
        times[m].append(run(m))
res = {
    "machine": platform.processor() or platform.machine(),
    "cores": os.cpu_count(),
    "torch": torch.__version__,
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
    "load_average": os.getloadavg(),
    "workload": __doc__.split("\n\n")[0].replace("\n", " "),
    "seconds": times,
    "median_s": {m: statistics.median(v) for m, v in times.items()},
}
res["inference_mode_saves"] = 1 - res["median_s"]["inference_mode"] / res["median_s"]["no_grad"]
print(json.dumps(res["median_s"]), f"saves {res['inference_mode_saves']:.1%}")
if args.out:
    json.dump(res, open(args.out, "w"), indent=1)
