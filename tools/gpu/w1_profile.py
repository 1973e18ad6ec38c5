"""Where W1's GPU time goes: one decode step (batch 64, W1's contexts) replayed from its CUDA graph and
profiled eagerly, one 8,192-token prefill step, and SDPA's backends on the prefill workload.
usage: python tools/gpu/w1_profile.py"""

import os, sys, json, random, time, datetime
import torch, torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paged_flex.bench import W1_CONFIG, random_prompts, random_model_folder, environment
from paged_flex.engine import LLM
from paged_flex.fms import paged_step, paged_forward

res = environment()
OUT = os.environ.get("OUT", ".")
bench = lambda fn: do_bench(fn, warmup=10, rep=100, return_mode="median")
# 1. SDPA backends on the prefill workload
from common import packed_prefill_case
from torch.nn.attention import sdpa_kernel, SDPBackend

lens, starts, q, k, v, per_seq, padded = packed_prefill_case(32, 8, 128, torch.bfloat16, "cuda")
sd = {"default": bench(per_seq)} if "nosdpa" not in sys.argv else {}
for b in (
    (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION) if sd else ()
):
    try:
        with sdpa_kernel(b):
            sd[b.name] = bench(per_seq)
    except Exception as e:
        sd[b.name] = repr(e)[:100]
res["sdpa_prefill_ms"] = sd
print("sdpa per seq ms", sd, flush=True)
del q, k, v, padded
torch.cuda.empty_cache()
# 2. the W1 model
prompts = random_prompts(64, 64, 1024, 32000)
llm = LLM(
    random_model_folder(W1_CONFIG),
    dtype=torch.bfloat16,
    max_num_seqs=64,
    max_num_batched_tokens=8192,
    kv_cache_memory=16 * 2**30,
)
c = llm.cache
for i, p in enumerate(prompts):
    c.reserve(i, len(p) + 64)
ids = torch.arange(64)
pos = torch.tensor([len(p) + 32 for p in prompts])
toks = torch.randint(3, 32000, (64,), device="cuda")
g = llm.llm_engine.runner.capture(64, 2048)
g.seq_ids.copy_(ids)
g.positions.copy_(pos)
g.tokens.copy_(toks)
res["decode_graph_ms"] = bench(g.graph.replay)


def eager_decode():
    st = paged_step(c, ids, pos, "auto", check=False)
    return paged_forward(llm.model, toks, st, last_n_tokens=64)


res["decode_eager_ms"] = bench(eager_decode)
print("decode step: graph", res["decode_graph_ms"], "eager", res["decode_eager_ms"], flush=True)
from torch.profiler import profile, ProfilerActivity


def table(fn, n=5):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=60)


res["decode_profile"] = table(eager_decode)
print(res["decode_profile"], flush=True)
# prefill step: 8192 tokens of the first prompts (one chunk each, the last one cut)
pid, ppos, ptok, n = [], [], [], 0
for i, p in enumerate(prompts):
    m = min(len(p), 8192 - n)
    if m <= 0:
        break
    pid += [i] * m
    ppos += list(range(m))
    ptok += p[:m]
    n += m
pid, ppos, ptok = torch.tensor(pid), torch.tensor(ppos), torch.tensor(ptok, device="cuda")


def prefill():
    st = paged_step(c, pid, ppos, "auto", check=False)
    return paged_forward(llm.model, ptok, st, last_n_tokens=1)


res["prefill_8192_ms"] = bench(prefill)
res["prefill_tflops_linear"] = 2 * 0.97e9 * 8192 / (res["prefill_8192_ms"] * 1e-3) / 1e12
print("prefill 8192 tokens", res["prefill_8192_ms"], "ms", flush=True)
res["prefill_profile"] = table(prefill, 3)
print(res["prefill_profile"], flush=True)
t0 = time.perf_counter()
[paged_step(c, pid, ppos, "auto", check=False) for _ in range(10)]
torch.cuda.synchronize()
res["prefill_metadata_host_ms"] = (time.perf_counter() - t0) / 10 * 1e3
print("prefill metadata host ms", res["prefill_metadata_host_ms"])
json.dump(res, open(os.path.join(OUT, "w1_profile.json"), "w"), indent=1)
