"""Property tests: random RESERVE / ASSIGN / FREE on `PagedKVCache` (and share / free on `PageAllocator`),
checked step by step against a pure-Python model of what the cache should hold.

Three drivers share one model (`Model`):
- `test_long_random_workload`: a seeded, deterministic op stream of 5,000 operations over 1,200 sequence ids
  per page size (16, 32, 64, 128); cheap invariants after every op, all data every 100 ops and at the end.
- `TestCacheMachine`: a Hypothesis `RuleBasedStateMachine`, every invariant (data included) after every step.
- `TestAllocatorMachine`: the page allocator alone, with an exact model of its LIFO free list and refcounts.

Everything runs on the CPU in float32 with a tiny model shape; Hypothesis is derandomized with no example
database, so every run (CI included) does the same thing.
"""

from __future__ import annotations
import math, random
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from paged_flex import OutOfPagesError, PageAllocator, PagedKVCache
from paged_flex.block_tables import pages_needed

PAGE_SIZES = (16, 32, 64, 128)
HEAD_DIM = 4
MAX_SEQS = 1200  # >= 1,100 rows in the block table

_BITS = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def bits(t: torch.Tensor) -> torch.Tensor:
    "The raw bits of a float tensor, so that comparisons are bitwise (-0.0 != 0.0, NaN == NaN)."
    return t.view(_BITS[t.dtype])


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(bits(a), bits(b))


# ------------------------------------------------------------------------------------------------------------
# Snapshots: a failed call must leave every part of the cache exactly as it was.


def snapshot(cache: PagedKVCache) -> dict:
    bt, alloc = cache.block_tables, cache.allocator
    pl = getattr(
        cache, "page_logical", None
    )  # [num_pages] logical index of each page, where the cache keeps one
    return dict(
        k=cache.k.clone(),
        v=cache.v.clone(),
        table=cache.block_table.clone(),
        seq_lens=cache.seq_lens.clone(),
        page_logical=None if pl is None else pl.clone(),
        free=list(alloc._free),
        refs=[alloc.refcount(p) for p in range(cache.num_pages)],
        pages={s: list(bt.pages(s)) for s in bt.seq_ids},
        lens={s: bt.length(s) for s in bt.seq_ids},
        stats=cache.stats(),
    )


def assert_unchanged(cache: PagedKVCache, before: dict) -> None:
    now = snapshot(cache)
    for key in ("k", "v"):
        assert same_bits(now[key], before[key]), f"{key} tensor changed"
    for key in ("table", "seq_lens"):
        assert torch.equal(now[key], before[key]), f"{key} changed"
    if before["page_logical"] is not None:
        assert torch.equal(now["page_logical"], before["page_logical"]), "page_logical changed"
    for key in ("free", "refs", "pages", "lens", "stats"):
        assert now[key] == before[key], f"{key} changed"


# ------------------------------------------------------------------------------------------------------------
# The model


class Model:
    """What a `PagedKVCache` should hold: each live sequence's reserved length and the exact rows written
    to it.
    """

    def __init__(self, cache: PagedKVCache):
        self.c = cache
        self.L, self.H, self.D = cache.num_layers, cache.num_kv_heads, cache.head_dim
        self.P, self.N = cache.page_size, cache.num_pages
        self.lens: dict[int, int] = {}
        self.ek: dict[int, torch.Tensor] = {}  # seq -> [L, len, H, D] expected keys at written positions
        self.ev: dict[int, torch.Tensor] = {}
        self.written: dict[int, torch.Tensor] = {}  # seq -> [L, len] bool: position written in that layer
        self.ever: set[int] = set()  # every sequence id that was ever live
        self.counts = Counter()

    @property
    def pages_in_use(self) -> int:
        return sum(pages_needed(n, self.P) for n in self.lens.values())

    # -- operations: each predicts the outcome, performs it, checks it, and updates the model
    # ------------------
    def reserve(self, s: int, n: int) -> str:
        c, cur = self.c, self.lens.get(s)
        if n > c.max_seq_len:
            before = snapshot(c)
            with pytest.raises(ValueError, match=f"asks for {n} tokens.*max_seq_len={c.max_seq_len}"):
                c.reserve(s, n)
            assert_unchanged(c, before)
            return self._count("too_long")
        if cur is not None and n <= cur:
            before = snapshot(c)
            c.reserve(s, n)  # never shrinks
            assert_unchanged(c, before)
            return self._count("noop")
        need = pages_needed(n, self.P) - pages_needed(cur or 0, self.P)
        free = self.N - self.pages_in_use
        if need > free:
            before = snapshot(c)
            with pytest.raises(OutOfPagesError) as info:
                c.reserve(s, n)
            e = info.value
            assert (e.pages_needed, e.pages_free, e.seq_id) == (need, free, s)
            assert f"sequence {s} needs {need} more page(s)" in str(e) and f"only {free} are free" in str(e)
            assert_unchanged(c, before)
            return self._count("oom")
        old_pages = c.pages(s) if cur is not None else []
        free_before = list(c.allocator._free)
        c.reserve(s, n)
        new_pages = c.pages(s)
        assert new_pages[: len(old_pages)] == old_pages, "a growing sequence must keep its pages"
        assert len(new_pages) - len(old_pages) == need
        assert set(new_pages[len(old_pages) :]) <= set(free_before), "new pages must come from the free list"
        grow = n - (cur or 0)
        if cur is None:
            self.ek[s] = torch.zeros(self.L, 0, self.H, self.D)
            self.ev[s] = torch.zeros(self.L, 0, self.H, self.D)
            self.written[s] = torch.zeros(self.L, 0, dtype=torch.bool)
        self.ek[s] = torch.cat([self.ek[s], torch.zeros(self.L, grow, self.H, self.D)], 1)
        self.ev[s] = torch.cat([self.ev[s], torch.zeros(self.L, grow, self.H, self.D)], 1)
        self.written[s] = torch.cat([self.written[s], torch.zeros(self.L, grow, dtype=torch.bool)], 1)
        self.lens[s] = n
        self.ever.add(s)
        return self._count("new" if cur is None else "grow")

    def assign(
        self, layer: int, pairs: list[tuple[int, int]], gen: torch.Generator, as_type: str = "list"
    ) -> None:
        "Write fresh random rows at distinct (seq, position) `pairs`; nothing else in k or v may change."
        c, P, H, D = self.c, self.P, self.H, self.D
        assert len(set(pairs)) == len(pairs)
        T = len(pairs)
        k = torch.randn(T, H, D, generator=gen)
        v = torch.randn(T, H, D, generator=gen)
        ids, pos = [s for s, _ in pairs], [p for _, p in pairs]
        if as_type == "int64":
            ids, pos = torch.tensor(ids), torch.tensor(pos)
        elif as_type == "int32":
            ids, pos = torch.tensor(ids, dtype=torch.int32), torch.tensor(pos, dtype=torch.int32)
        pages = {s: c.pages(s) for s in set(s for s, _ in pairs)}
        slots = torch.tensor([pages[s][p // P] * P + p % P for s, p in pairs], dtype=torch.long)
        exp_k, exp_v = c.k.clone(), c.v.clone()
        exp_k[layer].view(-1, H, D)[slots] = k
        exp_v[layer].view(-1, H, D)[slots] = v
        c.assign(layer, ids, pos, k, v)
        assert same_bits(c.k, exp_k) and same_bits(c.v, exp_v), "assign wrote somewhere other than its slots"
        ids_t, pos_t = torch.tensor([s for s, _ in pairs]), torch.tensor([p for _, p in pairs])
        for s in pages:
            m = ids_t == s
            self.ek[s][layer, pos_t[m]] = k[m]
            self.ev[s][layer, pos_t[m]] = v[m]
            self.written[s][layer, pos_t[m]] = True
        self.counts["assign"] += 1
        self.counts["tokens_written"] += T

    def free(self, s: int) -> None:
        c = self.c
        pages, free_before = c.pages(s), c.num_free_pages
        c.free(s)
        assert s not in c
        assert c.num_free_pages == free_before + len(pages)
        assert all(c.allocator.refcount(p) == 0 for p in pages)
        with pytest.raises(KeyError, match=f"unknown sequence {s}"):
            c.length(s)
        for d in (self.lens, self.ek, self.ev, self.written):
            del d[s]
        self.counts["free"] += 1

    def _count(self, what: str) -> str:
        self.counts[what] += 1
        return what

    # -- invariants -----------------------------------------------------------------------------------------
    def check_bookkeeping(self) -> None:
        c, P, N, alloc = self.c, self.P, self.N, self.c.allocator
        live = sorted(self.lens)
        assert sorted(c.block_tables.seq_ids) == live
        owned: list[int] = []
        pages_of = {}
        for s in live:
            assert s in c and c.length(s) == self.lens[s]
            pages_of[s] = pages = c.pages(s)
            assert len(pages) == pages_needed(self.lens[s], P), (
                f"sequence {s}: {len(pages)} pages for {self.lens[s]} tokens"
            )
            owned += pages
        owned_set, free = set(owned), list(alloc._free)
        assert len(owned_set) == len(owned), "a physical page is owned twice"
        assert len(set(free)) == len(free), "a page is on the free list twice"
        assert owned_set.isdisjoint(free), "a page is both owned and free"
        assert owned_set | set(free) == set(range(N)), "a page leaked"
        assert alloc.num_used == len(owned) == self.pages_in_use and alloc.num_free == len(free) == N - len(
            owned
        )
        assert alloc.num_used + alloc.num_free == N == c.num_pages
        assert [alloc.refcount(p) for p in range(N)] == [
            int(p in owned_set) for p in range(N)
        ]  # no sharing: 1 or 0
        assert c.num_free_pages == N - len(owned)
        # the device tensors agree with the host mirror
        expected_lens = [0] * c.max_seqs
        for s in live:
            expected_lens[s] = self.lens[s]
        assert c.seq_lens.dtype == torch.int32 and c.seq_lens.tolist() == expected_lens
        assert c.block_table.dtype == torch.int32 and c.block_table.shape == (
            c.max_seqs,
            pages_needed(c.max_seq_len, P),
        )
        if live:
            for s, row in zip(live, c.block_table[torch.tensor(live)].tolist()):
                assert row[: len(pages_of[s])] == pages_of[s], (
                    f"block table row {s} disagrees with pages({s})"
                )
        pl = getattr(c, "page_logical", None)
        if pl is not None and owned:  # the reverse map: physical page -> its logical index in its sequence
            assert pl[torch.tensor(owned)].tolist() == [i for s in live for i in range(len(pages_of[s]))]
        # stats
        st_, used, tokens = c.stats(), len(owned), sum(self.lens.values())
        bpp = 2 * self.L * P * self.H * self.D * c.k.element_size()
        assert (st_.num_seqs, st_.pages_used, st_.pages_free, st_.tokens, st_.slots_used) == (
            len(live),
            used,
            N - used,
            tokens,
            used * P,
        )
        assert (st_.bytes_per_page, st_.bytes_used, st_.bytes_total) == (bpp, used * bpp, N * bpp)
        assert st_.waste == pytest.approx(1 - tokens / (used * P) if used else 0.0, abs=1e-12)
        assert 0 <= st_.waste < 1
        assert st_.slots_used - st_.tokens <= st_.num_seqs * (P - 1), (
            "a sequence wastes at most page_size - 1 slots"
        )

    def check_data(self, seqs=None) -> None:
        c = self.c
        for s in self.lens if seqs is None else seqs:
            if s not in self.lens:
                continue
            n = self.lens[s]
            for layer in range(self.L):
                gk, gv = c.gather(layer, s)
                for got, exp in ((gk, self.ek[s][layer]), (gv, self.ev[s][layer])):
                    assert got.shape == (n, self.H, self.D) and got.dtype == c.dtype and got.is_contiguous()
                    m = self.written[s][layer]
                    assert same_bits(got[m], exp[m]), f"gather({layer}, {s}) differs from what was assigned"

    def check_all(self) -> None:
        self.check_bookkeeping()
        self.check_data()

    def drain(self) -> None:
        "Free everything; the pool must be whole again."
        for s in list(self.lens):
            self.free(s)
        self.check_all()
        c = self.c
        assert c.num_free_pages == self.N and sorted(c.allocator._free) == list(range(self.N))
        assert not c.seq_lens.any() and len(c.block_tables) == 0
        s = c.stats()
        assert (s.num_seqs, s.pages_used, s.tokens, s.slots_used, s.waste, s.bytes_used) == (
            0,
            0,
            0,
            0,
            0.0,
            0,
        )


# ------------------------------------------------------------------------------------------------------------
# Random op choices shared by the drivers


def random_pairs(rng: random.Random, lens: dict[int, int], max_tokens: int = 512) -> list[tuple[int, int]]:
    """Distinct (seq, position) pairs over 1-4 live sequences: whole prefills, decode steps, chunks,
    scattered positions.
    """
    cands = [s for s, n in lens.items() if n > 0]
    pairs: list[tuple[int, int]] = []
    for s in rng.sample(cands, min(len(cands), rng.randint(1, 4))):
        n, mode = lens[s], rng.choice(("all", "last", "chunk", "scatter"))
        if mode == "all":
            ps = range(n)
        elif mode == "last":
            ps = [n - 1]
        elif mode == "chunk":
            a = rng.randrange(n)
            ps = range(a, rng.randint(a + 1, n))
        else:
            ps = rng.sample(range(n), rng.randint(1, min(n, 16)))
        pairs += [(s, p) for p in ps]
    rng.shuffle(pairs)  # tokens of different sequences interleaved
    return pairs[:max_tokens]


def random_length(rng: random.Random, P: int, max_len: int) -> int:
    "A new sequence's length: often on or next to a page boundary."
    kind = rng.random()
    if kind < 0.05:
        return 0
    if kind < 0.35:
        return min(max_len, max(0, rng.randint(1, 3) * P + rng.choice((-1, 0, 1))))
    if kind < 0.37:
        return max_len
    return rng.randint(1, min(max_len, 3 * P))


def grown_length(rng: random.Random, P: int, cur: int, max_len: int) -> int:
    kind = rng.random()
    if kind < 0.3:
        n = -(-(cur + 1) // P) * P  # fill up to the next page boundary
    elif kind < 0.5:
        n = -(-(cur + 1) // P) * P + 1  # one past it: a new page
    elif kind < 0.6:
        n = cur + 1  # one decode step
    else:
        n = cur + rng.randint(1, 2 * P)
    return min(n, max_len)


# ------------------------------------------------------------------------------------------------------------
# 1. A long seeded workload: 5,000 ops over 1,200 sequence ids, per page size

LONG_OPS = 5000
SHAPES = {16: (2, 2), 32: (1, 1), 64: (2, 1), 128: (1, 2)}  # page_size -> (num_layers, num_kv_heads)


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_long_random_workload(page_size):
    P, (L, H) = page_size, SHAPES[page_size]
    rng, gen = random.Random(1000 + P), torch.Generator().manual_seed(2000 + P)
    N, max_len = 40, 6 * P + 3  # 40 pages: ~20 live sequences fill the pool
    cache = PagedKVCache(
        L,
        H,
        HEAD_DIM,
        num_pages=N,
        page_size=P,
        dtype=torch.float32,
        device="cpu",
        max_seqs=MAX_SEQS,
        max_seq_len=max_len,
    )
    m = Model(cache)
    ids = list(range(MAX_SEQS))
    rng.shuffle(ids)
    cursor = 0
    for step in range(LONG_OPS):
        r, live = rng.random(), list(m.lens)
        touched: list[int] = []
        if r < 0.36 or not live:  # a new sequence (ids cycle through all 1,200 rows)
            while ids[cursor % MAX_SEQS] in m.lens:
                cursor += 1
            s = ids[cursor % MAX_SEQS]
            if m.reserve(s, random_length(rng, P, max_len)) == "new":
                cursor += 1  # else retry this id later
            touched = [s]
        elif r < 0.48:  # an existing sequence grows (or hits max_seq_len / OOM)
            s = rng.choice(live)
            m.reserve(s, grown_length(rng, P, m.lens[s], max_len))
            touched = [s]
        elif r < 0.50:  # asking for fewer tokens changes nothing
            s = rng.choice(live)
            m.reserve(s, rng.randint(0, m.lens[s]))
        elif r < 0.51:  # beyond max_seq_len: ValueError, nothing changes
            m.reserve(rng.choice(live + [ids[cursor % MAX_SEQS]]), max_len + rng.randint(1, P))
        elif r < 0.74:
            pairs = random_pairs(rng, m.lens)
            if pairs:
                m.assign(rng.randrange(L), pairs, gen, rng.choice(("list", "int64", "int32")))
                touched = sorted({s for s, _ in pairs})
        else:
            m.free(rng.choice(live))
        m.check_bookkeeping()
        m.check_data(touched)
        if step % 100 == 99:
            m.check_data()
    m.check_all()
    counts = m.counts
    assert len(m.ever) >= 1000, f"only {len(m.ever)} distinct sequences"
    assert counts["oom"] >= 10 and counts["too_long"] >= 10 and counts["noop"] >= 10, counts
    assert counts["grow"] >= 100 and counts["assign"] >= 500 and counts["free"] >= 1000, counts
    m.drain()


# ------------------------------------------------------------------------------------------------------------
# 2. Hypothesis state machine over the cache: every invariant after every step


class CacheMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.m: Model | None = None

    @initialize(
        P=st.sampled_from(PAGE_SIZES),
        L=st.integers(1, 2),
        H=st.integers(1, 2),
        N=st.integers(2, 24),
        msl_pages=st.none() | st.integers(1, 8),
        msl_off=st.integers(0, 127),
        seed=st.integers(0, 2**31 - 1),
    )
    def setup(self, P, L, H, N, msl_pages, msl_off, seed):
        max_seq_len = (
            None if msl_pages is None else (msl_pages - 1) * P + 1 + msl_off % P
        )  # any value, not just k*P
        cache = PagedKVCache(
            L,
            H,
            HEAD_DIM,
            num_pages=N,
            page_size=P,
            dtype=torch.float32,
            device="cpu",
            max_seqs=MAX_SEQS,
            max_seq_len=max_seq_len,
        )
        assert cache.max_seq_len == (max_seq_len or N * P)
        self.m, self.rng, self.gen = Model(cache), random.Random(seed), torch.Generator().manual_seed(seed)

    def _length(self, data, lo=0):
        P, max_len = self.m.P, self.m.c.max_seq_len
        return data.draw(
            st.one_of(
                st.integers(lo, max_len + P),
                st.builds(lambda k, d: max(lo, k * P + d), st.integers(0, 4), st.sampled_from((-1, 0, 1))),
            )
        )

    @rule(data=st.data())
    def reserve_new(self, data):
        s = data.draw(st.integers(0, MAX_SEQS - 1))
        while s in self.m.lens:
            s = (s + 1) % MAX_SEQS  # the next id that is not live
        self.m.reserve(s, self._length(data))

    @precondition(lambda self: self.m and self.m.lens)
    @rule(data=st.data())
    def grow(self, data):
        s = data.draw(st.sampled_from(sorted(self.m.lens)))
        self.m.reserve(
            s,
            grown_length(
                random.Random(data.draw(st.integers(0, 2**31 - 1))),
                self.m.P,
                self.m.lens[s],
                self.m.c.max_seq_len,
            ),
        )

    @precondition(lambda self: self.m and self.m.lens)
    @rule(data=st.data())
    def reserve_existing(self, data):  # grow, no-op, OutOfPages or too long
        s = data.draw(st.sampled_from(sorted(self.m.lens)))
        self.m.reserve(s, self._length(data))

    @precondition(lambda self: self.m and self.m.pages_in_use > 0)
    @rule(data=st.data())
    def reserve_one_page_too_many(
        self, data
    ):  # exactly one page more than is free: must fail and change nothing
        m = self.m
        s = data.draw(st.sampled_from(sorted(m.lens)) | st.integers(0, MAX_SEQS - 1))
        have, free = pages_needed(m.lens.get(s, 0), m.P), m.N - m.pages_in_use
        n = (have + free) * m.P + data.draw(st.integers(1, m.P))
        m.reserve(s, n)  # OutOfPagesError, or ValueError when beyond max_seq_len

    @precondition(lambda self: self.m and any(self.m.lens.values()))
    @rule(data=st.data())
    def assign(self, data):
        m = self.m
        rng = random.Random(data.draw(st.integers(0, 2**31 - 1)))
        pairs = random_pairs(rng, m.lens, max_tokens=data.draw(st.sampled_from((1, 8, 512))))
        m.assign(
            data.draw(st.integers(0, m.L - 1)),
            pairs,
            self.gen,
            data.draw(st.sampled_from(("list", "int64", "int32"))),
        )

    @precondition(lambda self: self.m and self.m.lens)
    @rule(data=st.data())
    def free(self, data):
        self.m.free(data.draw(st.sampled_from(sorted(self.m.lens))))

    def teardown(self):
        if self.m is not None:
            self.m.drain()

    @invariant()
    def consistent(self):
        if self.m is not None:
            self.m.check_all()


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(
    max_examples=40,
    stateful_step_count=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# ------------------------------------------------------------------------------------------------------------
# 3. The allocator alone: allocate / share / free against an exact model (LIFO free stack, reference counts)


class AllocatorMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.a: PageAllocator | None = None

    @initialize(n=st.integers(1, 40))
    def setup(self, n):
        self.a = PageAllocator(n)
        self.n, self.refs, self.stack = n, [0] * n, list(range(n - 1, -1, -1))  # page 0 is handed out first

    def used(self):
        return [p for p in range(self.n) if self.refs[p]]

    def free_pages(self):
        return [p for p in range(self.n) if not self.refs[p]]

    def state(self):
        return list(self.a._free), [self.a.refcount(p) for p in range(self.n)]

    def unchanged_after(self, call, exc, match):
        before = self.state()
        with pytest.raises(exc, match=match):
            call()
        assert self.state() == before

    @precondition(lambda self: self.a is not None)
    @rule(k=st.integers(0, 45), seq_id=st.none() | st.integers(0, 99))
    def allocate(self, k, seq_id):
        if k > len(self.stack):
            before = self.state()
            with pytest.raises(OutOfPagesError) as info:
                self.a.allocate(k, seq_id=seq_id)
            assert (info.value.pages_needed, info.value.pages_free, info.value.seq_id) == (
                k,
                len(self.stack),
                seq_id,
            )
            assert self.state() == before
            return
        got = self.a.allocate(k, seq_id=seq_id)
        expected = [self.stack.pop() for _ in range(k)]
        assert got == expected  # LIFO: the most recently freed pages go first
        for p in got:
            self.refs[p] = 1

    @precondition(lambda self: self.a is not None and any(self.refs))
    @rule(data=st.data())
    def share(self, data):
        pages = data.draw(
            st.lists(st.sampled_from(self.used()), min_size=1, max_size=6)
        )  # repeats add one owner each
        self.a.share(pages)
        for p in pages:
            self.refs[p] += 1

    @precondition(lambda self: self.a is not None and any(self.refs))
    @rule(data=st.data())
    def free(self, data):
        pages = data.draw(st.lists(st.sampled_from(self.used()), min_size=1, max_size=8, unique=True))
        self.a.free(pages)
        for p in pages:
            self.refs[p] -= 1
            if self.refs[p] == 0:
                self.stack.append(p)

    @precondition(lambda self: self.a is not None and not all(self.refs))
    @rule(data=st.data())
    def double_free(self, data):
        bad = data.draw(st.sampled_from(self.free_pages()))
        others = (
            data.draw(st.lists(st.sampled_from(self.used()), max_size=3, unique=True))
            if any(self.refs)
            else []
        )
        pages = others + [bad]
        self.unchanged_after(
            lambda: self.a.free(pages), ValueError, f"double free: page {bad} is already free"
        )

    @precondition(lambda self: self.a is not None and any(self.refs))
    @rule(data=st.data())
    def free_listed_twice(self, data):
        p = data.draw(st.sampled_from(self.used()))
        self.unchanged_after(lambda: self.a.free([p, p]), ValueError, "listed twice")

    @precondition(lambda self: self.a is not None and not all(self.refs))
    @rule(data=st.data())
    def share_a_free_page(self, data):
        bad = data.draw(st.sampled_from(self.free_pages()))
        pages = (self.used()[:2]) + [bad]
        self.unchanged_after(lambda: self.a.share(pages), ValueError, f"cannot share page {bad}: it is free")

    @precondition(lambda self: self.a is not None)
    @rule(p=st.integers(-3, 45) | st.sampled_from([1.0, "0", None]))
    def foreign_page(self, p):
        if isinstance(p, int) and 0 <= p < self.n:
            return
        for call in (lambda: self.a.free([p]), lambda: self.a.share([p]), lambda: self.a.refcount(p)):
            self.unchanged_after(call, ValueError, f"page {p!r} is not a page of this pool")

    @invariant()
    def consistent(self):
        if self.a is None:
            return
        a = self.a
        assert list(a._free) == self.stack
        assert [a.refcount(p) for p in range(self.n)] == self.refs
        assert sorted(a._free) == self.free_pages() and len(set(a._free)) == len(a._free)
        assert a.num_free == len(self.stack) and a.num_used == self.n - len(self.stack)
        assert a.num_used + a.num_free == a.num_pages == self.n
        assert all(
            a.can_allocate(k) == (k <= len(self.stack)) for k in (0, len(self.stack), len(self.stack) + 1)
        )


TestAllocatorMachine = AllocatorMachine.TestCase
TestAllocatorMachine.settings = settings(
    max_examples=60,
    stateful_step_count=80,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ------------------------------------------------------------------------------------------------------------
# 4. Smaller @given properties


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(P=st.sampled_from(PAGE_SIZES), n=st.integers(0, 10_000))
def test_pages_needed_is_ceil(P, n):
    k = pages_needed(n, P)
    assert k == math.ceil(n / P)
    assert (k - 1) * P < n <= k * P if n else k == 0


@settings(max_examples=30, derandomize=True, database=None, deadline=None)
@given(
    P=st.sampled_from(PAGE_SIZES),
    lens=st.lists(st.integers(0, 300), min_size=1, max_size=12),
    seed=st.integers(0, 2**31 - 1),
)
def test_prefill_then_gather_roundtrip(P, lens, seed):
    """Reserve a batch, prefill every position of every sequence in one interleaved assign per layer:
    gather gives it all back.
    """
    N = sum(pages_needed(n, P) for n in lens)
    cache = PagedKVCache(
        2, 2, HEAD_DIM, num_pages=max(N, 1), page_size=P, dtype=torch.float32, device="cpu", max_seqs=MAX_SEQS
    )
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    ids = rng.sample(range(MAX_SEQS), len(lens))
    m = Model(cache)
    for s, n in zip(ids, lens):
        assert m.reserve(s, n) == "new"
    assert cache.num_free_pages == max(N, 1) - N  # the pool exactly fits the batch
    pairs = [(s, p) for s, n in zip(ids, lens) for p in range(n)]
    rng.shuffle(pairs)
    if pairs:
        for layer in range(2):
            m.assign(layer, pairs, gen, "int64")
    m.check_all()
    if N == 0:
        return
    extra = rng.choice(ids)  # the pool is full: any new page fails, changing nothing
    m.reserve(extra, pages_needed(m.lens[extra], P) * P + 1)
    assert m.counts["oom"] + m.counts["too_long"] == 1
    m.check_all()
    m.drain()
