"""Shared set-up of the GPU decode benchmarks."""
import random
import torch
from paged_flex.cache import PagedKVCache

def scattered_decode_case(B: int, L: int, P: int, hq: int, hkv: int, d: int, dtype, device, spare: float = 0.25):
    """One decode step's inputs: q [B, hq, d], contiguous k, v [B, hkv, L, d], and the same keys and values in a
    PagedKVCache of page size P whose pages are handed out in a random order from a pool with `spare` pages to spare;
    also the int32 sequence rows [B] and last positions [B]. Seed `random` and torch before calling."""
    q = torch.randn(B, hq, d, device=device, dtype=dtype)
    k = torch.randn(B, hkv, L, d, device=device, dtype=dtype); v = torch.randn_like(k)
    n_pages = int(B * L // P * (1 + spare))
    cache = PagedKVCache(1, hkv, d, n_pages, P, dtype=dtype, device=device, max_seqs=max(B, 16), max_seq_len=L)
    cache.allocator._free = random.sample(range(n_pages), n_pages)
    for b in range(B): cache.reserve(b, L)
    ids = torch.arange(B, device=device).repeat_interleave(L); pos = torch.arange(L, device=device).repeat(B)
    cache.write(0, cache.slots(ids, pos), k.transpose(1, 2).reshape(-1, hkv, d), v.transpose(1, 2).reshape(-1, hkv, d))
    seq = torch.arange(B, device=device, dtype=torch.int32); last = torch.full((B,), L - 1, device=device, dtype=torch.int32)
    return q, k, v, cache, seq, last
