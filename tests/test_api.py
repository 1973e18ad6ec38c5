"""vLLM's API on a tiny random LLaMA, on the CPU: n, logprobs, penalties, min_tokens, min-p and top-k,
output kinds, stream, chat and the constructor's names, each checked against Hugging Face's model or a run
without the feature."""

import dataclasses

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from paged_flex.engine import LLM, LLMEngine, SamplingParams
from paged_flex.fms import save_random_llama
from paged_flex.mods import sliding_window
from paged_flex.sampling import RequestOutputKind


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_random_llama(tmp_path_factory.mktemp("api") / "tiny", seed=0)


@pytest.fixture(scope="module")
def llm(folder):
    return LLM(model=folder, page_size=4, device="cpu", max_num_seqs=8)


@pytest.fixture(scope="module")
def hf(folder):
    return LlamaForCausalLM.from_pretrained(folder).eval()


PROMPT = torch.randint(3, 300, (40,), generator=torch.Generator().manual_seed(0)).tolist()


def hf_logprobs(hf, ids):
    "log_softmax of HF's logits at every position of `ids` [len(ids), vocab]."
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_logprobs_are_hf_log_softmax(llm, hf):
    out = llm.generate(PROMPT, SamplingParams(max_tokens=6, temperature=0, logprobs=3), use_tqdm=False)[0]
    c = out.outputs[0]
    ref = hf_logprobs(hf, PROMPT + c.token_ids)[len(PROMPT) - 1 : -1]  # the row that chose each token
    assert len(c.logprobs) == 6
    for row, d, t in zip(ref, c.logprobs, c.token_ids):
        top = row.topk(3)
        assert list(d)[0] == t and d[t].rank == 1  # greedy: the sampled token is the likeliest
        assert set(top.indices.tolist()) == set(d)
        for i, v in zip(top.indices.tolist(), top.values.tolist()):
            assert abs(d[i].logprob - v) < 1e-4
        assert [d[i].rank for i in top.indices.tolist()] == [1, 2, 3]
    assert abs(c.cumulative_logprob - sum(d[t].logprob for d, t in zip(c.logprobs, c.token_ids))) < 1e-5
    assert llm.generate(PROMPT, SamplingParams(max_tokens=2), use_tqdm=False)[0].outputs[0].logprobs is None


def test_penalties_follow_vllm_definitions(llm, hf):
    sp = SamplingParams(
        max_tokens=10, temperature=0, repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2
    )
    got = llm.generate(PROMPT[:12], sp, use_tqdm=False)[0].outputs[0].token_ids
    ids, out = list(PROMPT[:12]), []
    for _ in range(10):  # the definitions, token by token, on HF's logits
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1].float()
        for t in set(ids):
            logits[t] = logits[t] / 1.3 if logits[t] > 0 else logits[t] * 1.3
        for t in set(out):
            logits[t] -= 0.4 + 0.2 * out.count(t)
        out.append(int(logits.argmax()))
        ids.append(out[-1])
    assert got == out
    plain = llm.generate(PROMPT[:12], SamplingParams(max_tokens=10, temperature=0), use_tqdm=False)[0]
    assert plain.outputs[0].token_ids != got  # the penalties changed the greedy tokens


def test_min_tokens_holds_back_stop_ids(llm):
    greedy = llm.generate(PROMPT, SamplingParams(max_tokens=12, temperature=0), use_tqdm=False)[0].outputs[0]
    stop = greedy.token_ids[1]
    early = llm.generate(
        PROMPT, SamplingParams(max_tokens=12, temperature=0, stop_token_ids=[stop]), use_tqdm=False
    )[0].outputs[0]
    assert early.finish_reason == "stop" and early.token_ids[-1] == stop
    sp = SamplingParams(max_tokens=12, temperature=0, stop_token_ids=[stop], min_tokens=5)
    held = llm.generate(PROMPT, sp, use_tqdm=False)[0].outputs[0]
    assert stop not in held.token_ids[:5] and len(held.token_ids) >= 5
    assert stop not in held.token_ids[:-1]
    assert held.finish_reason == ("stop" if held.token_ids[-1] == stop else "length")


def test_top_k_and_min_p_keep_their_tokens(llm):
    sp = SamplingParams(max_tokens=24, temperature=1.0, top_k=3, seed=3, logprobs=0, ignore_eos=True)
    c = llm.generate(PROMPT, sp, use_tqdm=False)[0].outputs[0]
    assert all(d[t].rank <= 3 for d, t in zip(c.logprobs, c.token_ids))
    assert any(d[t].rank > 1 for d, t in zip(c.logprobs, c.token_ids))  # it did sample
    sp = SamplingParams(max_tokens=24, temperature=1.0, min_p=0.3, seed=3, logprobs=1, ignore_eos=True)
    c = llm.generate(PROMPT, sp, use_tqdm=False)[0].outputs[0]
    for d, t in zip(c.logprobs, c.token_ids):
        best = next(v for v in d.values() if v.rank == 1)
        assert d[t].logprob - best.logprob >= torch.log(torch.tensor(0.3)).item() - 1e-5


def test_n_forks_the_prompt_pages(folder):
    def peak(prompts, sp):
        e = LLM(folder, page_size=4, device="cpu", enable_prefix_caching=False)
        outs = e.generate(prompts, sp, use_tqdm=False)
        return e.stats.peak_pages, outs

    sp = SamplingParams(max_tokens=8, temperature=1.0, seed=9, ignore_eos=True)
    forked, (one,) = peak([PROMPT], dataclasses.replace(sp, n=4))
    apart, four = peak([PROMPT] * 4, [dataclasses.replace(sp, seed=9 + i) for i in range(4)])
    assert [c.token_ids for c in one.outputs] == [o.outputs[0].token_ids for o in four]
    assert apart == 4 * 12 and forked <= 10 + 4 * 2 + 1  # 40 + 8 tokens in pages of 4; 10 prompt pages shared


def test_n_sample_ending_at_its_first_token(llm):
    first = None
    for seed in range(20):  # a seed whose sample 1 starts with a token of whole characters
        sp = SamplingParams(n=3, max_tokens=1, temperature=1.0, seed=seed)
        first = llm.generate(PROMPT, sp, use_tqdm=False)[0].outputs[1]
        if first.text.strip():
            break
    out = llm.generate(
        PROMPT, dataclasses.replace(sp, max_tokens=6, stop=[first.text], ignore_eos=True), use_tqdm=False
    )[0]
    assert (out.outputs[1].token_ids, out.outputs[1].finish_reason) == (first.token_ids, "stop")
    assert out.outputs[1].text == "" and out.finished
    assert [c.index for c in out.outputs] == [0, 1, 2]


def test_n_refusals(folder):
    e = LLMEngine(folder, page_size=4, device="cpu")
    e.add_request(("r", 1), [5, 6, 7])
    with pytest.raises(ValueError, match=r"needs the ids \[\('r', 1\)\]"):
        e.add_request("r", [5, 6], SamplingParams(n=2))
    e.add_request("s", [5, 6], SamplingParams(n=3))
    with pytest.raises(ValueError, match="is a sample of request 's'"):
        e.add_request(("s", 2), [5, 6])
    windowed = LLMEngine(folder, page_size=4, device="cpu", mask_mod=sliding_window(8))
    with pytest.raises(ValueError, match="sliding window of 8"):
        windowed.add_request("w", [5, 6], SamplingParams(n=2))


def test_output_kinds(folder):
    e = LLMEngine(folder, page_size=4, device="cpu", num_scheduler_steps=4)
    kinds = list(RequestOutputKind)
    for k in kinds:
        e.add_request(k.name, PROMPT[:9], SamplingParams(max_tokens=20, temperature=0, output_kind=k))
    seen = {k.name: [] for k in kinds}
    while e.has_unfinished_requests():
        for out in e.step():
            seen[out.request_id].append(out)
    final = seen["CUMULATIVE"][-1].outputs[0]
    assert len(seen["FINAL_ONLY"]) == 1 and seen["FINAL_ONLY"][0].outputs[0] == final
    assert len(seen["DELTA"]) == len(seen["CUMULATIVE"]) > 2
    assert sum((o.outputs[0].token_ids for o in seen["DELTA"]), []) == final.token_ids
    assert "".join(o.outputs[0].text for o in seen["DELTA"]) == final.text
    assert all(len(o.outputs[0].token_ids) <= 4 for o in seen["DELTA"])  # only the new tokens of each plan


def test_stream_yields_each_samples_tokens_and_text(llm):
    sp = SamplingParams(n=2, max_tokens=10, temperature=1.0, seed=4, ignore_eos=True)
    whole = llm.generate([PROMPT[:5], PROMPT[5:9]], sp, use_tqdm=False)
    tokens, texts = {}, {}
    for out in llm.stream([PROMPT[:5], PROMPT[5:9]], sp):
        tokens.setdefault((out.index, out.sample), []).append(out.token_id)
        texts[out.index, out.sample] = texts.get((out.index, out.sample), "") + out.text
    for i, o in enumerate(whole):
        for c in o.outputs:
            assert (tokens[i, c.index], texts[i, c.index]) == (c.token_ids, c.text)


def test_chat(llm):
    llm.tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<a>"
    try:
        with pytest.raises(ValueError, match="messages must be a conversation"):
            llm.chat([])
        sp = SamplingParams(max_tokens=5, temperature=0)
        convs = [[{"role": "user", "content": "The cache"}], [{"role": "user", "content": "Once upon"}]]
        outs = llm.chat(convs, sp, use_tqdm=False)
    finally:
        llm.tokenizer.chat_template = None
    assert [o.prompt for o in outs] == ["<user>The cache<a>", "<user>Once upon<a>"]
    direct = llm.generate([o.prompt for o in outs], sp, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in direct]


def test_model_names(folder, llm):
    sp = SamplingParams(max_tokens=4, temperature=0)
    other = LLM(model_path=folder, page_size=4, device="cpu", max_seq_len=64)
    assert other.cache.max_seq_len == 64
    assert other.generate(PROMPT[:7], sp, use_tqdm=False)[0].outputs[0].token_ids == (
        llm.generate(PROMPT[:7], sp, use_tqdm=False)[0].outputs[0].token_ids
    )
    assert LLM(folder, model_path=str(folder), page_size=4, device="cpu").get_tokenizer() is not None


def test_lazy_text_equals_token_by_token_on_smollm2():
    from paged_flex.assets import smollm2_available, smollm2_folder
    from paged_flex.engine import IncrementalDetokenizer

    if not smollm2_available():
        pytest.skip("needs SmolLM2: paged-flex assets")
    tok = AutoTokenizer.from_pretrained(smollm2_folder())
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        ids = torch.randint(0, len(tok), (60,), generator=g).tolist()
        each, once = IncrementalDetokenizer(tok, ids[:4]), IncrementalDetokenizer(tok, ids[:4])
        for t in ids[4:]:
            each.add(t)
            each.text
            once.add(t)
        assert once.text == each.text
