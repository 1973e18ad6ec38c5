"""Sliding-window perplexity (nbs/13_perplexity.ipynb) on the paged cache against contiguous SDPA.

A random 2-layer GQA LLaMA (vocabulary 300) on random tokens, fp32 on the CPU: the windows score every token
but the first once, the paged path (chunked prefill, several windows per step, scattered pages) gives the
contiguous path's per-token NLL, both give Hugging Face's guide loop, and the perplexity sees context and
order. fp8 KV pages (`kv_cache_dtype`) move the perplexity of a sharp model's own greedy text a little, pages
clamped by a far too small scale a lot. One check on SmolLM2 and Wikipedia skips when those assets are absent.
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from transformers import LlamaForCausalLM

from paged_flex.fms import generate, load_llama, paged_cache_for, save_random_llama
from paged_flex.pages import OutOfPagesError
from paged_flex.perplexity import Window, perplexity, sliding_windows, token_nll

TOL = 1e-4  # on perplexity, as the brief's claim: paged == contiguous


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    transformers.utils.logging.disable_progress_bar()
    folder = save_random_llama(tmp_path_factory.mktemp("llama"), tokenizer=False)
    model, _ = load_llama(folder, device="cpu")
    return model, folder


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 300, (400,), generator=torch.Generator().manual_seed(0))  # [400]


def test_windows_score_every_token_once():
    assert sliding_windows(12, 6, 3) == [Window(0, 6, 1), Window(3, 9, 6), Window(6, 12, 9)]
    for n in range(2, 30):
        for window in range(2, 9):
            for stride in range(1, window):
                ws = sliding_windows(n, window, stride)
                assert [t for w in ws for t in range(w.first, w.end)] == list(range(1, n))
                assert all(
                    w.end - w.begin <= window and w.first - w.begin >= min(window - stride, w.first)
                    for w in ws
                )


def test_windows_refuse_bad_sizes():
    with pytest.raises(ValueError, match="stride=5 > window=4"):
        sliding_windows(10, 4, 5)
    with pytest.raises(ValueError, match="num_tokens=1"):
        sliding_windows(1, 4, 2)
    with pytest.raises(ValueError, match="window=1"):
        sliding_windows(10, 1, 1)


@pytest.mark.parametrize("chunk,batch", [(256, 1), (7, 3), (1, 2)])
def test_paged_matches_contiguous(llama, ids, chunk, batch):
    model, _ = llama
    windows = sliding_windows(len(ids), 48, 20)
    contiguous = token_nll(model, ids, windows, paged=False)
    cache = paged_cache_for(model, num_pages=64, page_size=4, max_seqs=4)
    cache.allocator._free = torch.randperm(64, generator=torch.Generator().manual_seed(chunk)).tolist()
    cache.reserve(3, 5)  # a sequence that is not the evaluation's
    paged = token_nll(model, ids, windows, chunk=chunk, batch=batch, cache=cache)
    assert paged.shape == contiguous.shape == (len(ids) - 1,)
    assert (paged - contiguous).abs().max() < 1e-6
    assert abs(paged.mean().exp() - contiguous.mean().exp()) < TOL
    assert (cache.length(3), cache.num_free_pages) == (5, 62)  # the windows' pages went back


def test_perplexity_is_exp_mean_nll(llama, ids):
    model, _ = llama
    nll = token_nll(model, ids, sliding_windows(len(ids), 64, 32), paged=False)
    assert perplexity(model, ids, 64, 32, paged=False) == pytest.approx(
        math.exp(nll.mean().item()), rel=1e-12
    )
    assert perplexity(model, ids.tolist(), 64, 32) == pytest.approx(math.exp(nll.mean().item()), rel=1e-5)


def test_matches_hugging_face_guide_loop(llama, ids):
    model, folder = llama
    hf = LlamaForCausalLM.from_pretrained(folder).eval()
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), 20):  # the loop of HF's perplexity guide
        end = min(begin + 48, len(ids))
        x = ids[begin:end].view(1, -1)
        labels = x.clone()
        labels[:, : -(end - prev_end)] = -100
        n = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            total += hf(x, labels=labels).loss.item() * n
        count, prev_end = count + n, end
        if end == len(ids):
            break
    ours = token_nll(model, ids, sliding_windows(len(ids), 48, 20))
    assert count == len(ours)
    assert abs(total - ours.sum().item()) < 1e-3 * count**0.5


def test_own_greedy_text_is_easy_and_needs_context(tmp_path):
    sharp, _ = load_llama(
        save_random_llama(tmp_path / "sharp", tokenizer=False, initializer_range=0.2), device="cpu"
    )
    prompt = list(range(10, 18))
    text = (
        prompt
        + generate(sharp, None, [prompt], paged_cache_for(sharp, 32), max_new_tokens=120, eos_token_id=[])[0]
    )
    own = perplexity(sharp, text, 64, 16)
    shuffled = perplexity(
        sharp,
        torch.tensor(text)[torch.randperm(len(text), generator=torch.Generator().manual_seed(0))],
        64,
        16,
    )
    no_context = perplexity(sharp, text, 16, 16)
    assert own < 100 and shuffled > 10 * own and no_context > 5 * own, (own, shuffled, no_context)
    assert perplexity(sharp, text, 64, 16, paged=False) == pytest.approx(own, abs=TOL)


@pytest.mark.parametrize("kv_cache_dtype, tol", [("fp8_e4m3", 0.05), ("fp8", 0.05), ("fp8_e5m2", 0.2)])
def test_fp8_pages_stay_close_and_clamped_pages_do_not(tmp_path, kv_cache_dtype, tol):
    sharp, _ = load_llama(
        save_random_llama(tmp_path / "sharp", tokenizer=False, initializer_range=0.2), device="cpu"
    )
    prompt = list(range(10, 18))
    text = (
        prompt
        + generate(sharp, None, [prompt], paged_cache_for(sharp, 32), max_new_tokens=120, eos_token_id=[])[0]
    )
    own = perplexity(sharp, text, 64, 16)
    fp8 = perplexity(sharp, text, 64, 16, kv_cache_dtype=kv_cache_dtype)
    assert math.isfinite(fp8) and fp8 != own and abs(fp8 / own - 1) < tol, (own, fp8)
    clamped = paged_cache_for(sharp, num_pages=20, max_seqs=2, kv_cache_dtype=kv_cache_dtype)
    scale = 0.05 / torch.finfo(clamped.kv_dtype).max
    clamped.set_kv_scales(scale, scale)  # every |k|, |v| above 0.05 clamps to 0.05
    assert perplexity(sharp, text, 64, 16, cache=clamped) > 3 * own


def test_kv_cache_dtype_errors(llama, ids):
    model, _ = llama
    windows = sliding_windows(len(ids), 64, 32)
    with pytest.raises(ValueError, match="kv_cache_dtype='int8' is not a KV cache dtype"):
        token_nll(model, ids, windows, kv_cache_dtype="int8")
    with pytest.raises(ValueError, match="needs paged=True"):
        perplexity(model, ids, 64, 32, paged=False, kv_cache_dtype="fp8")
    cache = paged_cache_for(model, num_pages=40, max_seqs=2, kv_cache_dtype="fp8_e5m2")
    with pytest.raises(ValueError, match="given cache stores 'fp8_e5m2' pages"):
        token_nll(model, ids, windows, cache=cache, kv_cache_dtype="fp8_e4m3")
    assert torch.isfinite(token_nll(model, ids, windows, cache=cache, kv_cache_dtype="fp8_e5m2")).all()


def test_errors_and_pages_on_failure(llama, ids):
    model, _ = llama
    windows = sliding_windows(len(ids), 64, 32)
    with pytest.raises(ValueError, match="ends at token 96 but token_ids holds 50"):
        token_nll(model, ids[:50], windows[:2])
    with pytest.raises(ValueError, match="max_expected_seq_len=512"):
        perplexity(model, torch.zeros(1200, dtype=torch.long), 1024, 512)
    with pytest.raises(ValueError, match="1-D sequence of ints"):
        token_nll(model, ids.view(20, 20), windows)
    with pytest.raises(ValueError, match="no windows"):
        token_nll(model, ids, [])
    with pytest.raises(ValueError, match="batch"):
        token_nll(model, ids, windows, batch=0)
    small = paged_cache_for(model, num_pages=20, page_size=4, max_seqs=2)  # 2 windows need 32 pages
    with pytest.raises(OutOfPagesError):
        token_nll(model, ids, windows, batch=2, cache=small)
    assert (small.num_free_pages, len(small.block_tables)) == (20, 0)
    with pytest.raises(ValueError, match="room for 2 more sequences"):
        token_nll(model, ids, windows, batch=3, cache=small)


def test_smollm2_on_wikipedia_paged_equals_contiguous():
    from paged_flex.assets import smollm2_available, smollm2_folder, wikipedia_available, wikipedia_dataset

    if not (smollm2_available() and wikipedia_available()):
        pytest.skip("SmolLM2 or the Wikipedia sample missing (paged-flex assets)")
    model, tok = load_llama(smollm2_folder(progress=False), device="cpu", dtype=torch.float32)
    ids = torch.tensor(tok(wikipedia_dataset(progress=False)[0]["text"])["input_ids"][:1024])  # [1024]
    windows = sliding_windows(len(ids), 512, 256)  # 3 windows, 1023 tokens
    paged, contiguous = token_nll(model, ids, windows, chunk=128), token_nll(model, ids, windows, paged=False)
    assert (paged - contiguous).abs().max() < 1e-3
    assert abs(paged.mean().exp() - contiguous.mean().exp()) < TOL
    assert 5 < paged.mean().exp() < 50
