"""One test per bad input: the exception type, a message that names the bad value, and a cache left exactly as
it was (every live sequence's gathered K/V bitwise equal, same free pages, same block tables, same allocator
state).

Several of these tests first found real bugs (float/bool sequence ids leaking pages, unchecked constructor
arguments); they now guard the fixes.
"""

from __future__ import annotations
import re

import pytest
import torch

from paged_flex import OutOfPagesError, PageAllocator, PagedKVCache
from paged_flex.block_tables import BlockTables, check_page_size

L, H, D, P, N, MAX_SEQS, MAX_LEN = 2, 2, 4, 16, 12, 8, 100  # max_seq_len 100 -> 7 pages per sequence at most
LIVE = {0: 20, 3: 5, 7: 33}  # seq -> reserved tokens: 2 + 1 + 3 = 6 pages used


@pytest.fixture
def cache() -> PagedKVCache:
    "Three live sequences (ids 0, 3 and 7 = max_seqs - 1) with every position written in every layer."
    c = PagedKVCache(
        L,
        H,
        D,
        num_pages=N,
        page_size=P,
        dtype=torch.float32,
        device="cpu",
        max_seqs=MAX_SEQS,
        max_seq_len=MAX_LEN,
    )
    g = torch.Generator().manual_seed(0)
    for s, n in LIVE.items():
        c.reserve(s, n)
    ids = torch.tensor([s for s, n in LIVE.items() for _ in range(n)])
    pos = torch.tensor([p for n in LIVE.values() for p in range(n)])
    for layer in range(L):
        c.assign(
            layer,
            ids,
            pos,
            torch.randn(len(ids), H, D, generator=g),
            torch.randn(len(ids), H, D, generator=g),
        )
    return c


def state(c: PagedKVCache) -> dict:
    live = c.block_tables.seq_ids
    return dict(
        data={
            (layer, s): tuple(t.clone() for t in c.gather(layer, s))
            for layer in range(c.num_layers)
            for s in live
        },
        free=c.num_free_pages,
        free_list=list(c.allocator._free),
        refs=[c.allocator.refcount(p) for p in range(c.num_pages)],
        pages={s: c.pages(s) for s in live},
        lens={s: c.length(s) for s in live},
        table=c.block_table.clone(),
        seq_lens=c.seq_lens.clone(),
        page_logical=page_logical(c),
        k=c.k.clone(),
        v=c.v.clone(),
        stats=c.stats(),
    )


def page_logical(c: PagedKVCache) -> list[int | None]:
    "Logical index of each owned page (where the cache keeps that map); free pages may hold anything."
    pl = getattr(c, "page_logical", None)
    if pl is None:
        return []
    owned = {p for s in c.block_tables.seq_ids for p in c.pages(s)}
    return [v if p in owned else None for p, v in enumerate(pl.tolist())]


def assert_same_state(a: dict, b: dict) -> None:
    assert a["data"].keys() == b["data"].keys()
    for key, (k, v) in a["data"].items():
        k2, v2 = b["data"][key]
        assert torch.equal(k.view(torch.int32), k2.view(torch.int32)) and torch.equal(
            v.view(torch.int32), v2.view(torch.int32)
        ), key
    for key in ("free", "free_list", "refs", "pages", "lens", "stats", "page_logical"):
        assert a[key] == b[key], key
    for key in ("table", "seq_lens"):
        assert torch.equal(a[key], b[key]), key
    for key in ("k", "v"):
        assert torch.equal(a[key].view(torch.int32), b[key].view(torch.int32)), key


def fails_cleanly(c: PagedKVCache, call, exc, *names: str):
    "`call()` raises `exc` whose message contains each of `names`, and the cache is exactly as it was."
    before = state(c)
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    for name in names:
        assert name in msg, f"{name!r} not in message {msg!r}"
    assert_same_state(before, state(c))
    return info.value


def kv(n, heads=H, dim=D, dtype=torch.float32):
    return torch.ones(n, heads, dim, dtype=dtype), torch.ones(n, heads, dim, dtype=dtype)


# ------------------------------------------------------------------------------------------------------------
# Unknown and freed sequences


@pytest.mark.parametrize("s", [1, 2, 6])  # never reserved (but valid rows)
def test_free_unknown_seq(cache, s):
    fails_cleanly(cache, lambda: cache.free(s), KeyError, f"unknown sequence {s}")


@pytest.mark.parametrize("s", [1, 6, -1, 8, 1000])
def test_gather_unknown_seq(cache, s):
    fails_cleanly(cache, lambda: cache.gather(0, s), KeyError, f"unknown sequence {s}")


@pytest.mark.parametrize("s", [1, 6, -1, 8])
def test_assign_unknown_seq(cache, s):
    # the unknown id comes after a valid one: nothing may be written for the valid token either
    fails_cleanly(cache, lambda: cache.assign(0, [0, s], [0, 0], *kv(2)), KeyError, f"unknown sequence {s}")


@pytest.mark.parametrize("s", [1, 6])
def test_length_and_pages_unknown_seq(cache, s):
    fails_cleanly(cache, lambda: cache.length(s), KeyError, f"unknown sequence {s}")
    fails_cleanly(cache, lambda: cache.pages(s), KeyError, f"unknown sequence {s}")


def test_free_twice(cache):
    pages, free = cache.pages(3), cache.num_free_pages
    cache.free(3)
    assert cache.num_free_pages == free + len(pages) and 3 not in cache
    fails_cleanly(cache, lambda: cache.free(3), KeyError, "unknown sequence 3", "already freed")


def test_use_after_free(cache):
    cache.free(3)
    fails_cleanly(cache, lambda: cache.gather(1, 3), KeyError, "unknown sequence 3")
    fails_cleanly(cache, lambda: cache.assign(1, [3], [0], *kv(1)), KeyError, "unknown sequence 3")
    fails_cleanly(cache, lambda: cache.length(3), KeyError, "unknown sequence 3")


# ------------------------------------------------------------------------------------------------------------
# Allocator misuse


def test_allocator_double_free_of_cache_page(cache):
    "Freeing a page the pool already holds: ValueError naming the page; allocator and sequences unchanged."
    free_page = cache.allocator._free[-1]
    fails_cleanly(
        cache, lambda: cache.allocator.free([free_page]), ValueError, f"double free: page {free_page}"
    )
    # a mix of owned pages and one free page: all or nothing, the owned pages keep their owner
    owned = cache.pages(0)
    fails_cleanly(
        cache,
        lambda: cache.allocator.free(owned + [free_page]),
        ValueError,
        f"page {free_page} is already free",
    )


def test_allocator_double_free():
    a = PageAllocator(4)
    pages = a.allocate(2)
    a.free([pages[0]])
    before = (list(a._free), [a.refcount(p) for p in range(4)])
    with pytest.raises(ValueError, match=f"double free: page {pages[0]} is already free"):
        a.free([pages[0]])
    with pytest.raises(ValueError, match=f"double free: page {pages[0]}"):
        a.free([pages[1], pages[0]])
    assert (list(a._free), [a.refcount(p) for p in range(4)]) == before
    assert a.refcount(pages[1]) == 1


def test_allocator_page_listed_twice():
    a = PageAllocator(4)
    p = a.allocate(1)[0]
    a.share([p])  # two owners, but one free() drops one owner per page
    with pytest.raises(ValueError, match=re.escape(f"pages listed twice in one free: [{p}, {p}]")):
        a.free([p, p])
    assert a.refcount(p) == 2 and a.num_free == 3


@pytest.mark.parametrize("page", [-1, 4, 100, 1.0, "0", None])
def test_allocator_foreign_page(page):
    a = PageAllocator(4)
    a.allocate(4)
    for call in (lambda: a.free([page]), lambda: a.share([page]), lambda: a.refcount(page)):
        with pytest.raises(ValueError, match=re.escape(f"page {page!r} is not a page of this pool (0..3)")):
            call()
    assert a.num_free == 0 and all(a.refcount(p) == 1 for p in range(4))


def test_allocator_share_free_page():
    a = PageAllocator(4)
    used = a.allocate(2)
    with pytest.raises(ValueError, match="cannot share page 2: it is free"):
        a.share(used + [2])
    assert [a.refcount(p) for p in range(4)] == [1, 1, 0, 0]  # all or nothing: the used pages got no owner


def test_allocator_negative_allocate():
    a = PageAllocator(4)
    with pytest.raises(ValueError, match="non-negative int, got -1"):
        a.allocate(-1)
    assert a.num_free == 4


@pytest.mark.parametrize("n", [1.5, True, "2"])
def test_allocator_allocate_non_int(n):
    a = PageAllocator(1)
    with pytest.raises(ValueError, match=re.escape(repr(n))):
        a.allocate(n)
    assert a.num_free == 1


def test_allocator_bad_size():
    for n in (0, -1, 2.0, "4", None):
        with pytest.raises(ValueError, match=re.escape(f"num_pages must be a positive int, got {n!r}")):
            PageAllocator(n)


# ------------------------------------------------------------------------------------------------------------
# ASSIGN: positions, shapes, dtypes, ids


@pytest.mark.parametrize("s,p", [(3, 5), (3, 15), (3, 16), (0, 20), (0, 31), (7, 33), (7, 10_000)])
def test_position_beyond_reserved_length(cache, s, p):
    """Beyond the reserved length, whether inside the last page (3, 5..15), on the next page boundary,
    or far away.
    """
    fails_cleanly(
        cache,
        lambda: cache.assign(0, [0, s], [0, p], *kv(2)),
        ValueError,
        f"position {p} is outside sequence {s}'s reserved length {LIVE[s]}",
    )


@pytest.mark.parametrize("p", [-1, -16, -10_000])
def test_negative_position(cache, p):
    fails_cleanly(
        cache,
        lambda: cache.assign(1, torch.tensor([0, 0]), torch.tensor([1, p]), *kv(2)),
        ValueError,
        f"position {p} is outside sequence 0",
    )


@pytest.mark.parametrize("which", ["k", "v"])
@pytest.mark.parametrize(
    "shape",
    [(2, 1, D), (2, 3, D), (2, H, 3), (2, H, 8), (1, H, D), (3, H, D), (2, H * D), (2, H, D, 1)],
    ids=[
        "fewer-heads",
        "more-heads",
        "small-head_dim",
        "big-head_dim",
        "fewer-tokens",
        "more-tokens",
        "2-D",
        "4-D",
    ],
)
def test_kv_shape_mismatch(cache, which, shape):
    good = torch.ones(2, H, D)
    bad = torch.ones(shape)
    k, v = (bad, good) if which == "k" else (good, bad)
    fails_cleanly(
        cache,
        lambda: cache.assign(0, [0, 3], [0, 1], k, v),
        ValueError,
        f"{which} must be a tensor of shape [2, {H}, {D}]",
        f"got {list(shape)}",
    )


def test_kv_not_a_tensor(cache):
    fails_cleanly(
        cache,
        lambda: cache.assign(0, [0], [0], [[[0.0] * D] * H], torch.ones(1, H, D)),
        ValueError,
        "k must be a tensor",
        "got list",
    )


@pytest.mark.parametrize("which", ["k", "v"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16, torch.int32])
def test_kv_dtype_mismatch(cache, which, dtype):
    good, bad = torch.ones(1, H, D), torch.ones(1, H, D, dtype=dtype)
    k, v = (bad, good) if which == "k" else (good, bad)
    fails_cleanly(
        cache,
        lambda: cache.assign(0, [0], [0], k, v),
        ValueError,
        f"{which} has dtype {dtype}",
        "torch.float32",
    )


@pytest.mark.parametrize(
    "ids,pos",
    [([0, 0], [0]), ([0], [0, 1]), ([0, 3, 7], [0, 1]), (torch.tensor([0, 0]), torch.tensor([0, 1, 2]))],
)
def test_seq_ids_positions_length_mismatch(cache, ids, pos):
    n_ids, n_pos = len(ids), len(pos)
    fails_cleanly(
        cache,
        lambda: cache.assign(0, ids, pos, *kv(n_ids)),
        ValueError,
        "one length",
        f"[{n_ids}] and [{n_pos}]",
    )


@pytest.mark.parametrize(
    "ids,pos,shapes",
    [(0, 0, "[] and []"), ([[0, 0]], [[0, 1]], "[1, 2] and [1, 2]"), ([0, 0], [[0, 1]], "[2] and [1, 2]")],
)
def test_seq_ids_positions_not_1d(cache, ids, pos, shapes):
    fails_cleanly(cache, lambda: cache.assign(0, ids, pos, *kv(2)), ValueError, "1-D", shapes)


@pytest.mark.parametrize(
    "ids",
    [
        [0.0, 3.0],
        torch.tensor([0.0, 3.0]),
        torch.tensor([0.0, 3.0], dtype=torch.float64),
        torch.tensor([True, False]),
    ],
    ids=["list-float", "float32", "float64", "bool"],
)
def test_float_seq_ids(cache, ids):
    dtype = torch.as_tensor(ids).dtype
    fails_cleanly(
        cache,
        lambda: cache.assign(0, ids, [0, 1], *kv(2)),
        ValueError,
        f"seq_ids must be an integer tensor, got dtype {dtype}",
    )


@pytest.mark.parametrize("pos", [[0.0, 1.0], torch.tensor([0.5, 1.0])], ids=["list-float", "tensor-float"])
def test_float_positions(cache, pos):
    fails_cleanly(
        cache,
        lambda: cache.assign(0, [0, 3], pos, *kv(2)),
        ValueError,
        "positions must be an integer tensor, got dtype torch.float32",
    )


@pytest.mark.parametrize("layer", [-1, L, 100, 1.0, True, "0", None])
def test_bad_layer_assign(cache, layer):
    fails_cleanly(
        cache,
        lambda: cache.assign(layer, [0], [0], *kv(1)),
        ValueError,
        f"layer must be an int in [0, {L}), got {layer!r}",
    )


@pytest.mark.parametrize("layer", [-1, L, 1.0, False])
def test_bad_layer_gather(cache, layer):
    fails_cleanly(
        cache, lambda: cache.gather(layer, 0), ValueError, f"layer must be an int in [0, {L}), got {layer!r}"
    )


def test_empty_assign_from_lists_is_a_noop(cache):
    before = state(cache)
    cache.assign(0, [], [], *kv(0))
    assert_same_state(before, state(cache))


def test_empty_assign_from_tensors_is_a_noop(cache):
    before = state(cache)
    cache.assign(0, torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), *kv(0))
    assert_same_state(before, state(cache))


# ------------------------------------------------------------------------------------------------------------
# RESERVE: ids, token counts, max_seq_len, OutOfPagesError


@pytest.mark.parametrize("s", [-1, MAX_SEQS, MAX_SEQS + 1, 10**9])
def test_reserve_seq_id_out_of_range(cache, s):
    fails_cleanly(
        cache, lambda: cache.reserve(s, 4), ValueError, f"seq_id must be an int in [0, {MAX_SEQS}), got {s}"
    )


@pytest.mark.parametrize("s", [1.0, 3.0, True, "1", None], ids=["1.0", "3.0-live", "True", "str", "None"])
def test_reserve_seq_id_not_int(cache, s):
    fails_cleanly(cache, lambda: cache.reserve(s, 4), ValueError, f"got {s!r}")


@pytest.mark.parametrize("s", [3, 1])  # live, and not yet reserved
@pytest.mark.parametrize("n", [-1, -100, 2.5, 4.0, True, "4", None])
def test_reserve_bad_num_tokens(cache, s, n):
    fails_cleanly(
        cache,
        lambda: cache.reserve(s, n),
        ValueError,
        f"num_tokens must be a non-negative int, got {n!r} for sequence {s}",
    )


@pytest.mark.parametrize("s", [3, 1])
@pytest.mark.parametrize("n", [MAX_LEN + 1, 10**6])
def test_reserve_beyond_max_seq_len(cache, s, n):
    fails_cleanly(
        cache,
        lambda: cache.reserve(s, n),
        ValueError,
        f"sequence {s} asks for {n} tokens",
        f"max_seq_len={MAX_LEN}",
    )


def test_reserve_exactly_max_seq_len_is_fine(cache):
    cache.free(7)  # 9 pages free; max_seq_len needs 7
    cache.reserve(1, MAX_LEN)
    assert cache.length(1) == MAX_LEN and len(cache.pages(1)) == -(-MAX_LEN // P)


def check_out_of_pages(c, s, n):
    have = len(c.pages(s)) if s in c else 0
    need, free = -(-n // P) - have, c.num_free_pages
    assert need > free and n <= MAX_LEN
    e = fails_cleanly(
        c,
        lambda: c.reserve(s, n),
        OutOfPagesError,
        f"sequence {s} needs {need} more page(s)",
        f"only {free} are free",
    )
    assert isinstance(e, RuntimeError)
    assert (e.pages_needed, e.pages_free, e.seq_id) == (need, free, s)
    return e


@pytest.mark.parametrize("s,n", [(1, 6 * P + 1), (1, MAX_LEN), (6, 97)])
def test_out_of_pages_new_sequence(cache, s, n):
    "6 pages are free; a new sequence asks for 7."
    check_out_of_pages(cache, s, n)
    assert s not in cache  # a failed new sequence is not half-created


@pytest.mark.parametrize("s,n", [(0, 4 * P + 1), (0, MAX_LEN), (3, 3 * P + 1), (7, 5 * P + 1)])
def test_out_of_pages_growing_sequence(cache, s, n):
    "With 2 pages free, a live sequence asks for 3 or more new ones; it keeps its old length and pages."
    cache.reserve(5, 4 * P)
    assert cache.num_free_pages == 2
    check_out_of_pages(cache, s, n)
    assert cache.length(s) == LIVE[s]
    cache.reserve(s, (len(cache.pages(s)) + 2) * P)  # exactly the free pages: fine
    assert cache.num_free_pages == 0


# ------------------------------------------------------------------------------------------------------------
# Float / bool sequence ids on free and gather (these leaked pages before the fix)


def test_free_float_seq_id(cache):
    cache.reserve(1, 5)
    fails_cleanly(cache, lambda: cache.free(1.0), (ValueError, KeyError), "1.0")


def test_free_bool_seq_id(cache):
    cache.reserve(1, 5)
    fails_cleanly(cache, lambda: cache.free(True), (ValueError, KeyError), "True")


@pytest.mark.parametrize("s", [3.0, True])
def test_gather_non_int_seq_id(cache, s):
    cache.reserve(1, 5)
    fails_cleanly(cache, lambda: cache.gather(0, s), (ValueError, KeyError), repr(s))


# ------------------------------------------------------------------------------------------------------------
# Constructor arguments


@pytest.mark.parametrize("page_size", [0, -16, 3, 12, 48, 100, 16.0, "16", None])
def test_bad_page_size(page_size):
    msg = f"page_size must be a positive power of two, got {page_size!r}"
    with pytest.raises(ValueError, match=re.escape(msg)):
        check_page_size(page_size)
    with pytest.raises(ValueError, match=re.escape(msg)):
        PagedKVCache(1, 1, D, num_pages=4, page_size=page_size, device="cpu")


@pytest.mark.parametrize("page_size", [1, 2, 16, 32, 64, 128, 1024])
def test_good_page_size(page_size):
    c = PagedKVCache(1, 1, D, num_pages=2, page_size=page_size, device="cpu")
    assert c.page_size == page_size and c.k.shape == (1, 2, page_size, 1, D)


GOOD = dict(num_layers=2, num_kv_heads=2, head_dim=D, num_pages=4, page_size=P, device="cpu")


@pytest.mark.parametrize(
    "name,value",
    [
        (name, value)
        for name in ("num_layers", "num_kv_heads", "head_dim")
        for value in (0, -1, 1.5, 2.0, "2", None)
    ],
)
def test_bad_model_shape(name, value):
    with pytest.raises(ValueError, match=re.escape(f"{name} must be a positive int, got {value!r}")):
        PagedKVCache(**{**GOOD, name: value})


@pytest.mark.parametrize("value", [0, -1, 2.5, "4", None])
def test_bad_num_pages(value):
    with pytest.raises(ValueError, match=re.escape(f"num_pages must be a positive int, got {value!r}")):
        PagedKVCache(**{**GOOD, "num_pages": value})


@pytest.mark.parametrize("value", [0, -1, 2.5, "8", None])
def test_bad_max_seqs(value):
    with pytest.raises(ValueError, match=re.escape(f"max_seqs must be a positive int, got {value!r}")):
        PagedKVCache(**{**GOOD, "max_seqs": value})
    if value is not None:
        with pytest.raises(ValueError, match=re.escape(f"max_seqs must be a positive int, got {value!r}")):
            BlockTables(value, 4)


def test_block_tables_max_seqs_none():
    with pytest.raises(ValueError, match="max_seqs must be a positive int, got None"):
        BlockTables(None, 4)


@pytest.mark.parametrize("value", [0, -5, 10.5, "100", True])
def test_bad_max_seq_len(value):
    with pytest.raises(ValueError, match=re.escape(f"max_seq_len must be a positive int, got {value!r}")):
        PagedKVCache(**{**GOOD, "max_seq_len": value})


@pytest.mark.parametrize(
    "name", ["num_layers", "num_kv_heads", "head_dim", "num_pages", "page_size", "max_seqs"]
)
def test_bool_constructor_args(name):
    with pytest.raises(ValueError, match=f"{name} must be a positive .*got True"):
        PagedKVCache(**{**GOOD, name: True})


def test_bad_constructor_leaves_other_caches_alone(cache):
    before = state(cache)
    with pytest.raises(ValueError):
        PagedKVCache(**{**GOOD, "page_size": 48})
    with pytest.raises(ValueError):
        PagedKVCache(**{**GOOD, "num_pages": 0})
    assert_same_state(before, state(cache))
