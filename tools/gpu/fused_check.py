"""Do the fused kernels, CUDA graphs and multi-step plans change results? W1's model in float32 on the GPU:
logits of a packed prefill with and without the fused kernels, then 16 prompts x 24 greedy tokens with each
feature on alone. Then a cProfile of one W1 run (bf16, everything on) for the host side.
usage: python tools/gpu/fused_check.py"""

import os, sys, json, tempfile, cProfile, pstats, io
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from paged_flex.bench import W1_CONFIG, random_prompts, random_model_folder, environment
from paged_flex.engine import LLM, SamplingParams
from paged_flex.fms import load_llama, paged_cache_for, paged_step, paged_forward
from paged_flex.fused import fuse_llama

res = environment()
OUT = os.environ.get("OUT", ".")
f32 = random_model_folder(W1_CONFIG, dtype=torch.float32)
prompts = random_prompts(64, 64, 1024, 32000)


def prefill_logits(fused):
    m, _ = load_llama(f32, "cuda", torch.float32)
    if fused:
        fuse_llama(m)
    c = paged_cache_for(m, 256, 16, max_seqs=4, max_seq_len=2048)
    lens = [100, 300, 37]
    ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)])
    pos = torch.cat([torch.arange(n) for n in lens])
    for i, n in enumerate(lens):
        c.reserve(i, n)
    toks = torch.cat([torch.tensor(prompts[i][:n]) for i, n in enumerate(lens)]).cuda()
    return paged_forward(m, toks, paged_step(c, ids, pos)).float()


a, b = prefill_logits(False), prefill_logits(True)
res["prefill_logits_fp32"] = {
    "max_abs_diff": (a - b).abs().max().item(),
    "max_abs": a.abs().max().item(),
    "argmax_equal_rows": int((a.argmax(-1) == b.argmax(-1)).sum()),
    "rows": a.shape[0],
    "top2_gap_min": (a.topk(2, -1).values[:, 0] - a.topk(2, -1).values[:, 1]).min().item(),
}
print("prefill logits fp32 fused vs FMS:", res["prefill_logits_fp32"], flush=True)
sp = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
base = dict(cuda_graphs=False, num_scheduler_steps=1, fused_kernels=False)
variants = {
    "baseline": {},
    "fused": dict(fused_kernels=True),
    "graphs": dict(cuda_graphs=True),
    "multistep_eager": dict(num_scheduler_steps=8),
    "multistep_graphs": dict(cuda_graphs=True, num_scheduler_steps=8),
    "all_on": dict(cuda_graphs=True, num_scheduler_steps=8, fused_kernels=True),
}
toks = {}
for name, kw in variants.items():
    llm = LLM(f32, dtype=torch.float32, max_num_seqs=16, kv_cache_memory=4 * 2**30, **{**base, **kw})
    toks[name] = [r.outputs[0].token_ids for r in llm.generate(prompts[:16], sp, use_tqdm=False)]
    del llm
    torch.cuda.empty_cache()


def first_diff(x, y):
    return next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), None)


res["fp32_tokens_vs_baseline"] = {
    n: {
        "identical": sum(x == y for x, y in zip(t, toks["baseline"])),
        "first_divergence": [first_diff(x, y) for x, y in zip(t, toks["baseline"])],
    }
    for n, t in toks.items()
}
for n, r in res["fp32_tokens_vs_baseline"].items():
    print(n, r, flush=True)
# host profile of W1 (bf16, defaults)
folder = random_model_folder(W1_CONFIG)
llm = LLM(
    folder, dtype=torch.bfloat16, max_num_seqs=64, max_num_batched_tokens=8192, kv_cache_memory=16 * 2**30
)
sp = SamplingParams(max_tokens=128, temperature=0, ignore_eos=True)
llm.generate(prompts, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True), use_tqdm=False)
pr = cProfile.Profile()
pr.enable()
llm.generate(prompts, sp, use_tqdm=False)
torch.cuda.synchronize()
pr.disable()
s = io.StringIO()
pstats.Stats(pr, stream=s).sort_stats("cumtime").print_stats(45)
res["cprofile_cum"] = s.getvalue()
s = io.StringIO()
pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25)
res["cprofile_tot"] = s.getvalue()
print(res["cprofile_cum"][:9000])
print(res["cprofile_tot"][:5000])
print("timings", llm.stats.timings, llm.stats.plans)
json.dump(res, open(os.path.join(OUT, "fused_check.json"), "w"), indent=1)
