"""Shared set-up of the GPU decode benchmarks."""

import random
import torch
from paged_flex.cache import PagedKVCache
from paged_flex.testing import stale_nan  # noqa: F401  (the GPU scripts take it from here)


def scattered_decode_case(
    B: int,
    L: int,
    P: int,
    hq: int,
    hkv: int,
    d: int,
    dtype,
    device,
    spare: float = 0.25,
    kv_cache_dtype="auto",
):
    """One decode step's inputs: q [B, hq, d], contiguous k, v [B, hkv, L, d], and the same keys and values in
    a PagedKVCache of page size P whose pages are handed out in a random order from a pool with `spare` pages
    to spare (pages in `kv_cache_dtype`); also the int32 sequence rows [B] and last positions [B]. Seed
    `random` and torch before calling."""
    q = torch.randn(B, hq, d, device=device, dtype=dtype)
    k = torch.randn(B, hkv, L, d, device=device, dtype=dtype)
    v = torch.randn_like(k)
    n_pages = int(B * L // P * (1 + spare))
    cache = PagedKVCache(1, hkv, d, n_pages, P, dtype, device, max(B, 16), L, kv_cache_dtype=kv_cache_dtype)
    cache.allocator._free = random.sample(range(n_pages), n_pages)
    for b in range(B):
        cache.reserve(b, L)
    ids = torch.arange(B, device=device).repeat_interleave(L)
    pos = torch.arange(L, device=device).repeat(B)
    cache.write(
        0, cache.slots(ids, pos), k.transpose(1, 2).reshape(-1, hkv, d), v.transpose(1, 2).reshape(-1, hkv, d)
    )
    seq = torch.arange(B, device=device, dtype=torch.int32)
    last = torch.full((B,), L - 1, device=device, dtype=torch.int32)
    return q, k, v, cache, seq, last


def packed_prefill_case(
    hq: int, hkv: int, d: int, dtype, device, n: int = 16, lo: int = 128, hi: int = 4096, seed: int = 0
):
    """The prefill workload: `n` sequences of lengths uniform in [lo, hi] (random.seed(seed)), packed q [T,
    hq, d] and k, v [T, hkv, d]; `sdpa_per_seq()` runs SDPA once per sequence (causal, GQA) and `padded` holds
    the same data as one zero-padded [n, heads, longest, d] batch. Returns (lens, starts, q, k, v,
    sdpa_per_seq, padded)."""
    import torch.nn.functional as F

    random.seed(seed)
    torch.manual_seed(seed)
    lens = [random.randint(lo, hi) for _ in range(n)]
    T, starts = sum(lens), [sum(lens[:i]) for i in range(n)]
    q = torch.randn(T, hq, d, device=device, dtype=dtype)
    k = torch.randn(T, hkv, d, device=device, dtype=dtype)
    v = torch.randn_like(k)

    def sdpa_per_seq():
        return [
            F.scaled_dot_product_attention(
                q[s : s + m].transpose(0, 1)[None],
                k[s : s + m].transpose(0, 1)[None],
                v[s : s + m].transpose(0, 1)[None],
                is_causal=True,
                enable_gqa=True,
            )
            for s, m in zip(starts, lens)
        ]

    L = max(lens)
    qp = torch.zeros(n, hq, L, d, device=device, dtype=dtype)
    kp = torch.zeros(n, hkv, L, d, device=device, dtype=dtype)
    vp = torch.zeros_like(kp)
    for i, (s, m) in enumerate(zip(starts, lens)):
        qp[i, :, :m] = q[s : s + m].transpose(0, 1)
        kp[i, :, :m] = k[s : s + m].transpose(0, 1)
        vp[i, :, :m] = v[s : s + m].transpose(0, 1)
    return lens, starts, q, k, v, sdpa_per_seq, (qp, kp, vp)


def graphed(fn):
    "`fn` warmed up on a side stream, then captured in a CUDA graph: (graph, the output its replays write)."
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out


_copy_us: dict = {}


def copy_us(nbytes: int, device="cuda") -> float:
    "Microseconds of a graphed device copy that moves `nbytes` in all (half read, half written)."
    from triton.testing import do_bench

    if nbytes not in _copy_us:
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        g, _ = graphed(lambda: dst.copy_(src))
        _copy_us[nbytes] = do_bench(g.replay, warmup=25, rep=100, return_mode="median") * 1e3
    return _copy_us[nbytes]
