"""FMS's LLaMA on the paged cache (paged_flex.fms) against Hugging Face's LlamaForCausalLM on the same
weights.

A random 3-layer GQA LLaMA (hidden 128, 4 query heads, 2 KV heads, vocabulary 300) is written to a temporary
folder; fp32 on the CPU. Logits must agree within 1e-4 for packed prefill of mixed-length prompts, decode
steps, chunked prefill and mixed steps; greedy generation must agree token for token. The pools are shuffled
and foreign pages hold NaN, so a read outside a sequence's own pages would show.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import LlamaForCausalLM

from paged_flex.testing import poison
from fms.modules.positions import RotaryEmbedding

from paged_flex.fms import (
    LayerRotary,
    StepRotary,
    generate,
    load_llama,
    paged_cache_for,
    paged_forward,
    paged_kv_states,
    paged_step,
    pool_layer,
    register_paged_attention,
    save_random_llama,
    share_rope,
)
from paged_flex.pages import OutOfPagesError

TOL = 1e-4
LENS = {0: 7, 3: 41, 5: 1, 6: 18}  # seq_id -> prompt length


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    transformers.utils.logging.disable_progress_bar()
    folder = save_random_llama(
        tmp_path_factory.mktemp("llama"), num_hidden_layers=3, hidden_size=128, intermediate_size=256
    )
    model, tokenizer = load_llama(folder, device="cpu")
    hf = LlamaForCausalLM.from_pretrained(folder).eval()
    hf.generation_config.eos_token_id = None
    return model, tokenizer, hf


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(1)
    return {s: torch.randint(3, 300, (n,), generator=g).tolist() for s, n in LENS.items()}


def hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]


def max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


def fresh_cache(model, num_pages=64, seed=0):
    cache = paged_cache_for(model, num_pages=num_pages, page_size=4, max_seqs=8)
    cache.allocator._free = torch.randperm(num_pages, generator=torch.Generator().manual_seed(seed)).tolist()
    return cache


def packed(prompts):
    return (
        [t for p in prompts.values() for t in p],
        [s for s, p in prompts.items() for _ in p],
        [i for p in prompts.values() for i in range(len(p))],
    )


def prefill(model, cache, prompts, backend="auto"):
    for s, p in prompts.items():
        cache.reserve(s, len(p))
    tokens, ids, pos = packed(prompts)
    return paged_forward(model, tokens, paged_step(cache, ids, pos, backend))


def test_registration_is_idempotent():
    register_paged_attention()
    register_paged_attention()
    with pytest.raises(ValueError, match="already registered"):
        register_paged_attention("sdpa_causal")


@pytest.mark.parametrize("backend", ["gather", "flex"])
def test_prefill_and_decode_match_hf(models, prompts, backend):
    model, _, hf = models
    cache = fresh_cache(model)
    for s, p in prompts.items():
        cache.reserve(s, len(p) + 6)
    poison(cache, list(prompts), float("nan") if backend == "gather" else 1e4)
    logits = prefill(model, cache, prompts, backend)
    assert max_diff(logits, torch.cat([hf_logits(hf, p) for p in prompts.values()])) < TOL
    seqs = {s: list(p) for s, p in prompts.items()}
    ends = torch.tensor([len(p) for p in prompts.values()]).cumsum(0) - 1
    last = logits[ends]
    for _ in range(6):
        for s, row in zip(seqs, last):
            seqs[s].append(int(row.argmax()))
        step = paged_step(cache, list(seqs), [len(x) - 1 for x in seqs.values()], backend)
        last = paged_forward(model, [x[-1] for x in seqs.values()], step)
        assert max_diff(last, torch.stack([hf_logits(hf, x)[-1] for x in seqs.values()])) < TOL


def test_matches_fms_sdpa_causal(models, prompts):
    model, _, _ = models
    cache = fresh_cache(model)
    ours = prefill(model, cache, prompts)
    with torch.no_grad():
        theirs = torch.cat([model(torch.tensor([p]))[0] for p in prompts.values()])  # FMS's default op
    assert max_diff(ours, theirs) < TOL


def test_chunked_prefill_and_mixed_step(models, prompts):
    model, _, hf = models
    cache = fresh_cache(model, seed=7)
    history = {0: prompts[0], 6: prompts[6]}
    prefill(model, cache, history)
    for s in history:
        cache.reserve(s, len(prompts[s]) + 1)
    cache.reserve(3, 41)
    first = paged_forward(model, prompts[3][:20], paged_step(cache, [3] * 20, range(20)))
    nxt = [5, 9]  # decode tokens for sequences 0 and 6
    step = paged_step(cache, [3] * 21 + [0, 6], list(range(20, 41)) + [len(prompts[0]), len(prompts[6])])
    second = paged_forward(model, prompts[3][20:] + nxt, step)
    assert max_diff(torch.cat([first, second[:21]]), hf_logits(hf, prompts[3])) < TOL
    ref = torch.stack([hf_logits(hf, prompts[0] + [5])[-1], hf_logits(hf, prompts[6] + [9])[-1]])
    assert max_diff(second[21:], ref) < TOL


def test_wrong_position_breaks_equality(models, prompts):
    model, _, hf = models
    cache = fresh_cache(model)
    for s, p in prompts.items():
        cache.reserve(s, len(p) + 1)
    tokens, ids, pos = packed(prompts)
    shifted = [p + (s == 3) for s, p in zip(ids, pos)]
    out = paged_forward(model, tokens, paged_step(cache, ids, shifted))
    assert max_diff(out, torch.cat([hf_logits(hf, p) for p in prompts.values()])) > 1e-2


def test_greedy_generation_matches_hf_and_frees_pages(models, prompts):
    model, tokenizer, hf = models
    cache = fresh_cache(model, num_pages=96)
    ours = generate(model, tokenizer, list(prompts.values()), cache, max_new_tokens=64, eos_token_id=[])
    with torch.no_grad():
        theirs = [
            hf.generate(
                torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                max_new_tokens=64,
                do_sample=False,
                pad_token_id=0,
            )[0, len(p) :].tolist()
            for p in prompts.values()
        ]
    assert ours == theirs
    assert cache.num_free_pages == cache.num_pages and len(cache.block_tables) == 0


def test_out_of_pages_leaves_cache_empty(models, prompts):
    model, _, _ = models
    cache = fresh_cache(model, num_pages=40)
    with pytest.raises(OutOfPagesError):
        generate(model, None, list(prompts.values()), cache, max_new_tokens=64, eos_token_id=[])
    assert cache.num_free_pages == 40


def test_string_prompts_and_seeded_sampling(models):
    model, tokenizer, _ = models
    cache = paged_cache_for(model, num_pages=32, page_size=16)
    kw = dict(max_new_tokens=8, temperature=0.8, top_k=50, top_p=0.95, seed=3)
    a = generate(model, tokenizer, ["Once upon a time", "The cache"], cache, **kw)
    assert a == generate(model, tokenizer, ["Once upon a time", "The cache"], cache, **kw)
    assert all(1 <= len(x) <= 8 for x in a)


def test_pool_layer_and_misuse(models, prompts):
    model, _, _ = models
    cache = fresh_cache(model)
    assert [pool_layer(cache, k) for k, _ in paged_kv_states(cache)] == [0, 1, 2]
    prefill(model, cache, prompts)
    tokens, ids, pos = packed(prompts)
    step = paged_step(cache, ids, pos)
    with pytest.raises(ValueError, match="past_key_value_states must be"):
        model(
            torch.tensor([tokens]),
            position_ids=step.positions.view(1, -1),
            use_cache=True,
            attn_name="paged_flex",
            paged_step=step,
        )
    with pytest.raises(ValueError, match="use_cache=True"):
        model(
            torch.tensor([tokens]),
            position_ids=step.positions.view(1, -1),
            past_key_value_states=paged_kv_states(cache),
            attn_name="paged_flex",
            paged_step=step,
        )


def test_pool_layer_reads_the_tag_and_refuses_another_cache(models):
    model, _, _ = models
    cache, other = fresh_cache(model), fresh_cache(model)
    states = paged_kv_states(cache)
    assert [pool_layer(cache, v) for _, v in states] == [0, 1, 2]
    assert [pool_layer(cache, cache.k[i]) for i in (2, 0)] == [2, 0]  # untagged: from the offset
    with pytest.raises(ValueError, match="expected one layer's pool"):
        pool_layer(other, states[1][0])  # tagged for `cache`, not for `other`


def test_rope_looked_up_once_per_forward(models, prompts):
    model, _, _ = models
    layers = [m.position_encoder for m in model.modules() if hasattr(m, "position_encoder")]
    assert [type(e) for e in layers] == [LayerRotary] * 3 and [e.first for e in layers] == [
        True,
        False,
        False,
    ]
    assert len({id(e.step) for e in layers}) == 1 and share_rope(model) == 3
    step_rotary = layers[0].step
    lookups = []
    lookup = step_rotary.lookup
    step_rotary.lookup = lambda *a: lookups.append(a[0].shape) or lookup(*a)
    fms_calls = []
    fms_rope = step_rotary.rotary.adjusted_qk
    step_rotary.rotary.adjusted_qk = lambda *a, **kw: fms_calls.append(1) or fms_rope(*a, **kw)
    try:
        cache = fresh_cache(model)
        prefill(model, cache, prompts)
        for s, p in prompts.items():
            cache.reserve(s, len(p) + 1)
        paged_forward(
            model, [5] * len(prompts), paged_step(cache, list(prompts), [len(p) for p in prompts.values()])
        )
    finally:
        del step_rotary.lookup, step_rotary.rotary.adjusted_qk
    n = sum(map(len, prompts.values()))
    assert lookups == [torch.Size([1, n]), torch.Size([1, len(prompts)])]  # one per forward, not per layer
    assert fms_calls == []


@pytest.mark.parametrize(
    "scaling",
    [
        {},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 2.0,
            "high_freq_factor": 8.0,
            "original_max_position_embeddings": 128,
        },
    ],
)
def test_shared_rope_equals_fms_per_layer(scaling):
    rot = RotaryEmbedding(dim=64, ratio=500000.0, max_seq_len=2048, scaling=scaling)
    step = StepRotary(rot, 2048)
    layers = [LayerRotary(step, i == 0) for i in range(4)]
    g = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 2048, (1, 37), generator=g)
    for _ in range(2):  # two forwards over one position buffer, refilled in place as a CUDA graph's is
        for layer in layers:
            qkv = torch.randn(1, 37, (9 + 3 + 3) * 64, generator=g)  # FMS's fused projection, split
            q, k, _ = qkv.split([9 * 64, 3 * 64, 3 * 64], dim=-1)
            q, k = q.view(1, 37, 9, 64), k.view(1, 37, 3, 64)
            for ours, theirs in zip(layer.adjusted_qk(q, k, pos), rot.adjusted_qk(q, k, pos)):
                assert max_diff(ours, theirs) < 1e-6
        pos.copy_(torch.randint(0, 2048, (1, 37), generator=g))


def test_loader_errors(tmp_path, models):
    with pytest.raises(FileNotFoundError, match="no model folder"):
        load_llama(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_llama(tmp_path)
    folder = save_random_llama(
        tmp_path / "linear", tokenizer=False, rope_scaling={"rope_type": "linear", "factor": 2.0}
    )
    with pytest.raises(ValueError, match="rope_type 'linear' is not supported"):
        load_llama(folder)


@pytest.mark.parametrize("kind", ["mistral", "qwen3", "granite", "mixtral", "gpt_oss"])
def test_other_decoders_match_hf(tmp_path, kind):
    """FMS's Mistral (window 8, run by our mask), Qwen3 (QK-norm), Granite (multipliers), Mixtral (4
    experts, 2 per token) and gpt-oss (sinks, a window of 128 on every other layer: one prompt is longer)
    through LLM."""
    import transformers as T

    from paged_flex.engine import LLM, SamplingParams

    base = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    extra = {
        "mistral": dict(sliding_window=8, head_dim=16),
        "qwen3": dict(head_dim=16, rope_theta=5000.0),
        "granite": dict(
            embedding_multiplier=2.0, logits_scaling=1.5, residual_multiplier=0.5, attention_multiplier=0.3
        ),
        "mixtral": dict(intermediate_size=64, num_local_experts=4, num_experts_per_tok=2),
        "gpt_oss": dict(intermediate_size=64, num_local_experts=4, num_experts_per_tok=2),
    }[kind]
    config_cls, model_cls = {
        "mistral": (T.MistralConfig, T.MistralForCausalLM),
        "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM),
        "granite": (T.GraniteConfig, T.GraniteForCausalLM),
        "mixtral": (T.MixtralConfig, T.MixtralForCausalLM),
        "gpt_oss": (T.GptOssConfig, T.GptOssForCausalLM),
    }[kind]
    torch.manual_seed(0)
    hf = model_cls(config_cls(**{**base, **extra})).eval()
    for layer in hf.model.layers if kind == "gpt_oss" else []:
        layer.self_attn.sinks.data.normal_(0, 2)  # large enough to matter
    hf.save_pretrained(tmp_path / kind)
    g = torch.Generator().manual_seed(1)
    lens = (5, 140, 11) if kind == "gpt_oss" else (5, 23, 11)  # 140 + 20 tokens: past the window of 128
    prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in lens]
    with torch.no_grad():
        expected = [
            hf.generate(torch.tensor([p]), max_new_tokens=20, min_new_tokens=20, do_sample=False)[
                0, len(p) :
            ].tolist()
            for p in prompts
        ]
    llm = LLM(tmp_path / kind, page_size=4, device="cpu", max_num_batched_tokens=16, max_num_seqs=4)
    outs = llm.generate(
        prompts, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True), use_tqdm=False
    )
    assert [o.outputs[0].token_ids for o in outs] == expected
    if kind == "mistral":  # the window is what makes it match: without it the tokens differ
        assert llm.llm_engine.scheduler_config.sliding_window == 8
