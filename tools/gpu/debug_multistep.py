"""Debug: multi-step decode through CUDA graphs against the eager path, plan by plan and step by step (fp32 W1 model)."""
import os, sys, torch
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from paged_flex.bench import W1_CONFIG, random_prompts, random_model_folder
import paged_flex.engine as E
from paged_flex.engine import LLM, SamplingParams, ModelRunner
from paged_flex.fms import paged_step, paged_forward
f32 = random_model_folder(W1_CONFIG, dtype=torch.float32)
prompts = random_prompts(16, 64, 1024, 32000)
n = [0]
def both(self, plan, timings=None):
    B, k = plan.num_tokens, plan.num_steps
    g = self._graph(B, plan.max_context_len)
    E._load_graph(self, g, plan)
    out = torch.empty(k, B, dtype=torch.long, device="cuda")
    rep = []
    for i in range(k):
        tok_in, pos_in = g.tokens[:B].clone(), g.positions[:B].clone()
        g.graph.replay()
        lg = g.logits[:B].float().clone()
        torch.argmax(g.logits[:B], -1, out=out[i])
        step = paged_step(self.cache, plan.seq_ids, pos_in.cpu(), self.backend, check=False)
        le = paged_forward(self.model, tok_in, step, last_n_tokens=B).float()
        ok_pos = bool((pos_in.cpu() == plan.positions + i).all())
        rep.append((round((lg - le).abs().max().item(), 6), int((lg.argmax(-1) != le.argmax(-1)).sum()), ok_pos))
        g.tokens[:B].copy_(out[i]); g.positions[:B].add_(1)
    torch.cuda.synchronize()
    print(f"plan {n[0]}: key={E._graph_buckets(B, plan.max_context_len)} pos0={plan.positions[:2].tolist()} (max logit diff, rows argmax differ, positions ok) per step: {rep}", flush=True)
    n[0] += 1
    return out
ModelRunner.run_decode_steps = both
llm = LLM(f32, dtype=torch.float32, max_num_seqs=16, kv_cache_memory=4 * 2**30, fused_kernels=False)
llm.generate(prompts, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True), use_tqdm=False)
