"""Probe (not in the library): does loading whole-page key blocks with TMA tensor descriptors speed up the paged
prefill? Same workload as prefill_bench.py, pages 64 and 128 (a BLOCK_N-key block then lies in one page), against the
library kernel and SDPA in the same process. usage: python tools/gpu/prefill_tma_probe.py"""
import os, sys, json, random, math, datetime
import torch, triton, triton.language as tl
from triton.testing import do_bench
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import packed_prefill_case
from paged_flex.cache import PagedKVCache
from paged_flex.triton_prefill import paged_prefill, prefill_tiles, queries_per_tile, _attend_block, heads_per_program

@triton.jit
def _tma_block(acc, m_i, l_i, q, kd, vd, BT, seq, hk, j, stride_bt, qk_scale, D: tl.constexpr, P: tl.constexpr, BLOCK_N: tl.constexpr):
    page = tl.load(BT + seq * stride_bt + (j * BLOCK_N) // P).to(tl.int32)
    row = page * P + (j * BLOCK_N) % P
    k = kd.load([row, hk * D])
    s = tl.dot(q, tl.trans(k)) * qk_scale
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = vd.load([row, hk * D])
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i

@triton.jit
def _prefill_tma_kernel(Q, K, V, O, BT, TILES, n_slots, stride_qt, stride_qh, stride_kp, stride_kn, stride_kh, stride_bt, sm_scale,
                        KV: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, P: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    tile, hg = tl.program_id(0), tl.program_id(1)
    hk = (hg * GP) // G
    seq = tl.load(TILES + tile * 4).to(tl.int64)
    row0 = tl.load(TILES + tile * 4 + 1); p0 = tl.load(TILES + tile * 4 + 2); n_q = tl.load(TILES + tile * 4 + 3)
    m = tl.arange(0, BLOCK_M); d = tl.arange(0, D)
    qi = m // GP
    q_ok = qi < n_q
    q_pos = p0 + qi
    q_ptr = (row0 + qi).to(tl.int64)[:, None] * stride_qt + (hg * GP + m % GP)[:, None] * stride_qh + d[None, :]
    q = tl.load(Q + q_ptr, mask=q_ok[:, None], other=0.0)
    kd = tl.make_tensor_descriptor(K, shape=[n_slots, KV * D], strides=[KV * D, 1], block_shape=[BLOCK_N, D])
    vd = tl.make_tensor_descriptor(V, shape=[n_slots, KV * D], strides=[KV * D, 1], block_shape=[BLOCK_N, D])
    qk_scale = sm_scale * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32); l_i = tl.zeros([BLOCK_M], tl.float32); acc = tl.zeros([BLOCK_M, D], tl.float32)
    kv_end = p0 + n_q
    n_free = p0 // BLOCK_N
    for j in range(0, n_free):
        acc, m_i, l_i = _tma_block(acc, m_i, l_i, q, kd, vd, BT, seq, hk, j, stride_bt, qk_scale, D, P, BLOCK_N)
    for j in range(n_free, tl.cdiv(kv_end, BLOCK_N)):
        acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, K, V, BT, seq, hk, j, kv_end, q_pos, stride_kp, stride_kn, stride_kh,
                                      stride_bt, qk_scale, D, P, BLOCK_N, False, True)
    tl.store(O + q_ptr, (acc / l_i[:, None]).to(O.dtype.element_ty), mask=q_ok[:, None])

triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
def tma_prefill(q, cache, tiles, bm, bn, w, st, pack=True):
    T, H, D = q.shape
    GP = heads_per_program(H, cache.num_kv_heads, bm, pack)
    k, v = cache.k[0], cache.v[0]
    out = torch.empty_like(q)
    _prefill_tma_kernel[(tiles.shape[0], H // GP)](q, k, v, out, cache.block_table, tiles, k.shape[0] * k.shape[1],
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), cache.block_table.stride(0), 1 / math.sqrt(D),
        KV=cache.num_kv_heads, G=H // cache.num_kv_heads, GP=GP, D=D, P=cache.page_size, BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)
    return out

dev, dt, HQ, HKV, D = "cuda", torch.bfloat16, 32, 8, 128
lens, starts, q, k, v, sdpa_per_seq, _ = packed_prefill_case(HQ, HKV, D, dt, dev)
T = sum(lens)
bench = lambda fn: do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3
ref = torch.cat([o[0].transpose(0, 1) for o in sdpa_per_seq()]).float()
res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds"),
       "sdpa_per_seq_us": bench(sdpa_per_seq), "rows": []}
ids = torch.cat([torch.full((n,), i, device=dev) for i, n in enumerate(lens)]); posn = torch.cat([torch.arange(n, device=dev) for n in lens])
for P in (64, 128):
    cache = PagedKVCache(1, HKV, D, T // P + 32, P, dtype=dt, device=dev, max_seqs=16, max_seq_len=4096)
    cache.allocator._free = random.sample(range(cache.num_pages), cache.num_pages)
    for i, n in enumerate(lens): cache.reserve(i, n)
    cache.write(0, cache.slots(ids, posn), k, v)
    for bm, bn, w, st in [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 4)]:
        tiles = prefill_tiles(ids.cpu(), posn.cpu(), queries_per_tile(HQ, HKV, bm, True)).to(dev)
        r = {"page": P, "block_m": bm, "block_n": bn, "warps": w, "stages": st}
        for name, fn in (("library", lambda: paged_prefill(q, cache, 0, tiles, block_m=bm, block_n=bn, num_warps=w, num_stages=st)),
                         ("tma", lambda: tma_prefill(q, cache, tiles, bm, bn, w, st))):
            try:
                o = fn(); torch.cuda.synchronize()
                r[f"{name}_err"] = ((o.float() - ref).norm() / ref.norm()).item(); r[f"{name}_us"] = bench(fn)
                r[f"{name}_ratio"] = r[f"{name}_us"] / res["sdpa_per_seq_us"]
            except Exception as e: r[f"{name}_error"] = repr(e)[:300]
        print(r, flush=True); res["rows"].append(r)
json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "prefill_tma_probe.json"), "w"), indent=1)
