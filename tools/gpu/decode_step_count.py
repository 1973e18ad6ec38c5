"""What a decode step costs the host, counted on the GPU (issue 11: "the decode step carries no host-built
metadata and no torch.compile recompiles from step to step; count them").

Model: the W1 shape (LLaMA-3.2-1B: vocab 32000, hidden 2048, 16 layers, 32 heads, 8 KV heads, random bf16
weights, seed 0). 16 requests with 256-token prompts (random.seed(0)) are prefilled in the first plan; the
next steps are all decode. Over those steps torch.profiler counts host-to-device copies, kernel launches
outside CUDA graphs and graph replays, and torch._dynamo's counters are compared before and after
(recompiles, frames compiled). Runs:
  - fast path: auto backend (Triton decode), CUDA graphs, multi-step plans (16 steps per plan), greedy;
  - the same, sampled (temperature 0.8, top_p 0.95, seed 0);
  - one step per plan (num_scheduler_steps=1), greedy;
  - FlexAttention path (backend="flex"), eager, one step per plan, after its own warm-up.
usage: OUT=dir python3 tools/gpu/decode_step_count.py     (writes $OUT/decode_step_count_<device>.json)
TINY=1: a tiny model on the CPU, to check the script before spending GPU time."""

import copy, datetime, json, os, random, sys, tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from paged_flex.engine import LLM, SamplingParams  # noqa: E402

TINY = os.environ.get("TINY") == "1"
DEV, DTYPE = ("cpu", torch.float32) if TINY else ("cuda", torch.bfloat16)
B, PROMPT, NEW, V = (4, 16, 8, 512) if TINY else (16, 256, 64, 32000)
random.seed(0)
prompts = [[random.randrange(3, V) for _ in range(PROMPT)] for _ in range(B)]
dev_name = "cpu" if TINY else torch.cuda.get_device_name()
out_path = Path(os.environ.get("OUT", ".")) / f"decode_step_count_{dev_name.split()[-1].lower()}.json"
res = {
    "device": dev_name,
    "torch": torch.__version__,
    "date": datetime.datetime.now().isoformat(timespec="seconds"),
    "workload": __doc__.split("\n\n")[1].replace("\n", " "),
    "runs": {},
}


def model_folder() -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=64 if TINY else 2048,
        intermediate_size=128 if TINY else 8192,
        num_hidden_layers=2 if TINY else 16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        rope_theta=500000.0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    folder = tempfile.mkdtemp()
    LlamaForCausalLM(cfg).to(DEV, DTYPE).save_pretrained(folder)
    return folder


def sync():
    if not TINY:
        torch.cuda.synchronize()


def dynamo_counters() -> dict:
    from torch._dynamo.utils import counters

    return {k: dict(v) for k, v in copy.deepcopy(counters).items()}


def diff(after: dict, before: dict) -> dict:
    d = {}
    for group, vals in after.items():
        for k, v in vals.items():
            if isinstance(v, int) and v != before.get(group, {}).get(k, 0):
                d[f"{group}.{k}"] = v - before.get(group, {}).get(k, 0)
    return d


def count(llm: LLM, sp: SamplingParams) -> dict:
    "Prefill in the first plan, then profile every later step of the batch."
    eng = llm.llm_engine
    for i, p in enumerate(prompts):
        eng.add_request(f"r{i}", p, sp)
    eng.step()  # the prefill plan (16 x 256 tokens fit one plan)
    eng.reset_stats()
    sync()
    before = dynamo_counters()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        while eng.has_unfinished_requests():
            eng.step()
        sync()
    after = dynamo_counters()
    st = eng.stats
    n = {"htod": 0, "dtoh": 0, "kernel_launch": 0, "graph_launch": 0}
    for e in prof.events():
        name = e.name
        if "Memcpy HtoD" in name:
            n["htod"] += 1
        elif "Memcpy DtoH" in name:
            n["dtoh"] += 1
        elif name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx"):
            n["kernel_launch"] += 1
        elif name == "cudaGraphLaunch":
            n["graph_launch"] += 1
    steps = st.steps
    r = {
        "decode_steps": steps,
        "plans": st.plans,
        "per_step": {k: v / steps for k, v in n.items()},
        "totals": n,
        "dynamo_counter_changes": diff(after, before),
        "host_metadata_s_per_step": st.timings["metadata"] / steps,
        "model_s_per_step": st.timings["model"] / steps,
    }
    print(r, flush=True)
    return r


folder = model_folder()
greedy = SamplingParams(max_tokens=NEW, temperature=0, ignore_eos=True)
sampled = SamplingParams(max_tokens=NEW, temperature=0.8, top_p=0.95, seed=0, ignore_eos=True)
runs = {
    "fast_graphs_multistep_greedy": (dict(), greedy),
    "fast_graphs_multistep_sampled": (dict(), sampled),
    "fast_graphs_one_step_per_plan": (dict(num_scheduler_steps=1), greedy),
    "flex_eager_one_step_per_plan": (dict(backend="flex", cuda_graphs=False, num_scheduler_steps=1), greedy),
}
for name, (kw, sp) in runs.items():
    try:
        llm = LLM(folder, device=DEV, dtype=DTYPE, max_num_seqs=B, max_num_batched_tokens=8192, **kw)
        llm.generate(prompts, sp, use_tqdm=False)  # warm-up: graphs captured, kernels compiled
        r = count(llm, sp)
        r["config"] = {k: str(v) for k, v in kw.items()}
        res["runs"][name] = r
        del llm
    except Exception as e:  # a run that fails is recorded, the others still run
        res["runs"][name] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        print(name, res["runs"][name], flush=True)
    json.dump(res, open(out_path, "w"), indent=1)
print("wrote", out_path)
