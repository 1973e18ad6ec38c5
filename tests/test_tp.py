"""Tensor parallel on the CPU (paged_flex.tp): 2 gloo ranks against 1 rank and Hugging Face.

A random 2-layer GQA LLaMA (4 query heads, 2 KV heads, vocabulary 300, fp32) runs on 2 rank processes, each
with 2 query heads and 1 KV head; one scheduler in this process plans every step. Greedy tokens must equal
those of `LLM` in this process and of HF's `generate`, through one-step plans (logits from rank 0), multi-step
plans (tokens from the ranks), chunked prefill, shared prefix pages and forks (each rank copies its part of
the partial page); tokens chosen here in multi-step plans (a round trip per step) must equal one process's.
Errors: an exception on rank 1 alone comes back here and the ranks go on; a rank that dies while its peer
waits in a collective stops both, leaving no process and no rendezvous folder (a normal close is in
notebook 16).
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import operator
import os

import pytest
import torch
import transformers
from transformers import LlamaForCausalLM

from paged_flex import tp
from paged_flex.engine import LLM, ModelRunner
from paged_flex.fms import load_llama, paged_cache_for, save_random_llama
from paged_flex.mods import sliding_window
from paged_flex.sampling import SamplingParams
from paged_flex.scheduler import Scheduler, SchedulerConfig, Sequence

MAX_TOKENS = 12
LONG = list(range(20, 61))  # 41 tokens: 11 pages of 4
PROMPTS = [list(range(5, 12)), [3, 9, 27, 81, 243, 29, 87, 261, 183, 249, 147], LONG, LONG[:12] + [7, 8, 9]]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    transformers.utils.logging.disable_progress_bar()
    return save_random_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def hf_tokens(folder):
    hf = LlamaForCausalLM.from_pretrained(folder).eval()
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        return [
            hf.generate(torch.tensor([p]), max_new_tokens=MAX_TOKENS, do_sample=False)[0, len(p) :].tolist()
            for p in PROMPTS
        ]


@pytest.fixture(scope="module")
def executor(folder):
    "One pair of ranks for the module: the tests run in order, the last one kills it."
    meta, _ = load_llama(folder, "meta")
    cache = tp.sharded_cache_for(meta, 96, 4, max_seqs=9, max_seq_len=256, device="cpu")
    ex = tp.MultiprocExecutor(folder, cache, tensor_parallel_size=2)
    yield ex
    ex.close()


def run_greedy(runner, prompts, num_steps=1, budget=64, fork=None, choose=None):
    """Tokens of `prompts` planned by one scheduler over `runner.cache` (a ModelRunner's or an executor's),
    each chosen by `choose(logits)` (default: argmax); with `fork=i`, prompt i forks into 3 samples after its
    first token. Returns (tokens per prompt, per forked sample, sequences)."""
    scheduler = Scheduler(runner.cache, SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=budget))
    seqs = [scheduler.add(Sequence(i, p, max_tokens=MAX_TOKENS)) for i, p in enumerate(prompts)]
    children = []
    while scheduler.has_unfinished():
        plan = (scheduler.schedule_decode(num_steps) if num_steps > 1 else None) or scheduler.schedule()
        if plan.num_steps > 1:
            out = runner.run_decode_steps(plan, None, choose)
        else:
            out = (choose or (lambda logits: logits.argmax(-1)))(runner.run(plan))
        scheduler.update(plan, out)
        if fork is not None and not children and seqs[fork].num_generated == 1:
            children = scheduler.fork(seqs[fork], 3)
    return [s.generated for s in seqs], [c.generated for c in children], seqs


def second_best(logits):
    return logits.topk(2, -1).indices[:, 1]


def rank_tables(worker):
    return worker.cache.block_table.clone(), worker.cache.page_logical.clone()


def fail_on_rank_1(worker):
    if worker.rank == 1:
        raise ValueError("rank 1 says no")
    return worker.rank


def rank_1_exits_while_rank_0_waits(worker):
    if worker.rank == 1:
        os._exit(3)
    torch.distributed.all_reduce(torch.ones(1))  # waits for rank 1, which never comes


def children_alive():
    return [p for p in multiprocessing.active_children() if p.name.startswith("paged_flex-tp")]


def test_greedy_matches_one_rank_and_hf(executor, folder, hf_tokens):
    llm = LLM(str(folder), device="cpu", page_size=4, kv_cache_memory=2**20)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    one_rank = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params, use_tqdm=False)]
    assert one_rank == hf_tokens
    assert run_greedy(executor, PROMPTS)[0] == hf_tokens  # one-step plans: rank 0's logits, sampled here
    assert run_greedy(executor, PROMPTS, num_steps=4)[0] == hf_tokens  # multi-step plans: the ranks' argmax
    assert executor.collective_rpc(operator.attrgetter("cache.num_kv_heads")) == [1, 1]


def test_chunked_prefill_shared_prefix_and_forks(executor, hf_tokens):
    tokens, samples, seqs = run_greedy(executor, [PROMPTS[0], PROMPTS[2], PROMPTS[3]], budget=16, fork=0)
    assert tokens == [hf_tokens[0], hf_tokens[2], hf_tokens[3]]
    assert seqs[2].num_cached_tokens == 12  # the last prompt started on the long one's first 3 pages
    assert samples == [hf_tokens[0]] * 2  # each rank copied its KV head's part of the partial page
    for table, logical in executor.collective_rpc(rank_tables):
        assert torch.equal(table, executor.cache.block_table)
        assert torch.equal(logical, executor.cache.page_logical)


def test_callers_choice_in_multi_step_plans(executor, folder, hf_tokens):
    model, _ = load_llama(folder, "cpu")
    cache = paged_cache_for(model, 96, 4, max_seqs=9, max_seq_len=256)
    want = run_greedy(ModelRunner(model, cache), PROMPTS, num_steps=4, choose=second_best)[0]
    assert run_greedy(executor, PROMPTS, num_steps=4, choose=second_best)[0] == want  # a round trip per step
    assert want != hf_tokens


def test_error_on_rank_1_reaches_the_caller_and_ranks_go_on(executor, hf_tokens):
    with pytest.raises(RuntimeError, match="rank 1 raised ValueError: rank 1 says no in fail_on_rank_1"):
        executor.collective_rpc(fail_on_rank_1)
    assert not executor.is_closed
    assert run_greedy(executor, PROMPTS[:2])[0] == hf_tokens[:2]


def test_dead_rank_stops_all_and_leaves_no_process(executor):
    procs, store = list(executor._procs), executor._store
    with pytest.raises(
        RuntimeError, match=r"rank 1 exited \(exit code 3\) in rank_1_exits_while_rank_0_waits"
    ):
        executor.collective_rpc(rank_1_exits_while_rank_0_waits)  # rank 0 would wait in all_reduce forever
    assert executor.is_closed and [p.exitcode for p in procs] == [-9, 3]  # rank 0 was killed
    assert not children_alive() and not os.path.exists(store)
    with pytest.raises(RuntimeError, match="workers are stopped: tensor-parallel rank 1 exited"):
        executor.collective_rpc("execute_model")


def test_llm_tensor_parallel_size(folder, hf_tokens):
    "vLLM's `LLM(..., tensor_parallel_size=2)`: greedy equals HF, seeded sampling equals one process."
    sp = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
    hot = [SamplingParams(max_tokens=MAX_TOKENS, temperature=0.9, seed=i, ignore_eos=True) for i in range(4)]
    one = LLM(folder, device="cpu", page_size=4)
    llm = LLM(folder, device="cpu", page_size=4, tensor_parallel_size=2)
    try:
        assert [o.outputs[0].token_ids for o in llm.generate(PROMPTS, sp, use_tqdm=False)] == hf_tokens
        got, want = (x.generate(PROMPTS, hot, use_tqdm=False) for x in (llm, one))
        assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in want]
        with pytest.raises(ValueError, match="score_mod and mask_mod"):
            LLM(folder, device="cpu", tensor_parallel_size=2, mask_mod=sliding_window(8))
    finally:
        llm.llm_engine.runner.close()


def test_one_rank_process(folder, hf_tokens):
    "vLLM's `distributed_executor_backend='mp'` with one rank: the rank path (process, pipe, gloo) alone."
    llm = LLM(folder, device="cpu", page_size=4, distributed_executor_backend="mp")
    try:
        assert llm.llm_engine.runner.world_size == 1
        assert llm.llm_engine.runner.collective_rpc(operator.attrgetter("cache.num_kv_heads")) == [2]
        sp = SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True)
        assert [o.outputs[0].token_ids for o in llm.generate(PROMPTS, sp, use_tqdm=False)] == hf_tokens
    finally:
        llm.llm_engine.runner.close()


def glu_type(worker):
    return type(worker.model.model.base_model.layers[0].ff_sub_layer).__name__


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="the fused kernels need Triton")
def test_fused_kernels_on_two_ranks(folder, hf_tokens, monkeypatch):
    "Notebook 09c's kernels in each rank's shard (under Triton's interpreter here): greedy still equals HF."
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the spawned ranks read it when they import Triton
    meta, _ = load_llama(folder, "meta")
    cache = tp.sharded_cache_for(meta, 96, 4, max_seqs=9, max_seq_len=256, device="cpu")
    with tp.MultiprocExecutor(folder, cache, tensor_parallel_size=2) as ex:
        assert ex.collective_rpc(glu_type) == ["FusedTPGatedLinearUnit"] * 2
        assert run_greedy(ex, PROMPTS)[0] == hf_tokens
        assert run_greedy(ex, PROMPTS, num_steps=4)[0] == hf_tokens


def test_sampled_multi_step_plans_make_one_round_trip(folder):
    "A multi-step plan's sampled rows are drawn on the ranks: one call per plan, the tokens of one process."
    hot = [
        SamplingParams(max_tokens=24, temperature=0.8, top_p=0.9, seed=i, ignore_eos=True) for i in range(4)
    ]
    one = LLM(folder, device="cpu", page_size=4, num_scheduler_steps=8)
    llm = LLM(folder, device="cpu", page_size=4, num_scheduler_steps=8, tensor_parallel_size=2)
    try:
        want = [o.outputs[0].token_ids for o in one.generate(PROMPTS, hot, use_tqdm=False)]
        calls = llm.llm_engine.runner._calls
        got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, hot, use_tqdm=False)]
        assert got == want
        plans = llm.stats.plans
        assert llm.llm_engine.runner._calls - calls == plans < llm.stats.steps, (plans, llm.stats.steps)
    finally:
        llm.llm_engine.runner.close()
