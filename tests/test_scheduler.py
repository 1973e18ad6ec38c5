"""The scheduler driven for thousands of steps with a fake model runner, on caches small enough to preempt.

The runner writes each token's id (as its key) and position (as its value) into a one-layer cache and samples
each logits row from the context it reads back from the cache: next token = a weighted sum of the context's
token ids plus a salt of the request id, modulo 64 (token 0 is EOS). `solo` computes the same function on a
plain list, one request alone. So an output equals `solo` only if every page the scheduler handed out holds
the right KV: preemption and recompute, chunked prefill, prefix sharing and fork must all leave the results
unchanged.

Checked after every step: the token budget, `max_num_seqs`, chunks starting where each sequence's KV ends, the
cache holding exactly the running sequences, every page free or owned, the prefix index naming live pages
only. Checked at the end: every request finished exactly once, as it would alone, and no page leaked.
Hypothesis is derandomized with no example database, so every run does the same thing.
"""

from __future__ import annotations
import random, zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from paged_flex.block_tables import pages_needed
from paged_flex.cache import PagedKVCache
from paged_flex.scheduler import Scheduler, SchedulerConfig, SeqStatus, Sequence, StepPlan

VOCAB, EOS = 64, 0
WEIGHTS = torch.randint(1, 1 << 20, (1 << 14,), generator=torch.Generator().manual_seed(0))  # [max context]


def next_token(request_id, context: torch.Tensor) -> int:
    "The fake model: a function of the request id and its context's token ids `[n]`."
    salt = zlib.crc32(repr(request_id).encode())
    return int(((context.long() * WEIGHTS[: len(context)]).sum() + salt) % VOCAB)


class FakeRunner:
    "Write token ids (K) and positions (V) to the cache; sample each logits row from the context read back."

    def __init__(self, cache: PagedKVCache):
        self.cache = cache

    def __call__(self, plan: StepPlan) -> list[int]:
        self.cache.assign(
            0,
            plan.seq_ids,
            plan.positions,
            plan.token_ids.float().view(-1, 1, 1),
            plan.positions.float().view(-1, 1, 1),
        )  # checked: the positions must be reserved
        out = []
        for seq, i in zip(plan.logit_seqs, plan.logit_indices.tolist()):
            row, pos = int(plan.seq_ids[i]), int(plan.positions[i])
            keys, values = self.cache.gather(0, row)  # [length, 1, 1] each
            assert torch.equal(values[: pos + 1, 0, 0], torch.arange(pos + 1, dtype=torch.float32)), (
                seq.request_id
            )
            out.append(next_token(seq.request_id, keys[: pos + 1, 0, 0]))
        return out


def solo(seq: Sequence) -> tuple[list[int], str]:
    "What `seq` generates alone, with no cache and no scheduler: (tokens, finish_reason)."
    tokens, out = list(seq.prompt), []
    while True:
        t = next_token(seq.request_id, torch.tensor(tokens, dtype=torch.float32))
        tokens.append(t)
        out.append(t)
        if (t == seq.eos_id and not seq.ignore_eos) or t in seq.stop_ids:
            return out, "stop"
        if len(out) >= seq.max_tokens:
            return out, "length"


def make(num_pages, page_size, max_num_seqs=8, budget=64, chunk=None, prefix_caching=True, max_seq_len=None):
    cache = PagedKVCache(
        1,
        1,
        1,
        num_pages=num_pages,
        page_size=page_size,
        dtype=torch.float32,
        device="cpu",
        max_seqs=max_num_seqs,
        max_seq_len=max_seq_len,
    )
    return Scheduler(
        cache,
        SchedulerConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=budget,
            prefill_chunk_size=chunk,
            enable_prefix_caching=prefix_caching,
        ),
    )


class Stats:
    "What happened over a run: steps, the largest step, chunked prefills, decode-only steps."

    def __init__(self):
        self.steps = self.max_tokens = self.partial_chunks = self.decode_only = self.peak_running = 0


def check_step(s: Scheduler, plan: StepPlan, stats: Stats) -> None:
    cfg, cache = s.config, s.cache
    assert plan.num_tokens <= cfg.max_num_batched_tokens, (plan.num_tokens, cfg.max_num_batched_tokens)
    assert len(s.running) <= cfg.max_num_seqs
    assert len({id(it.seq) for it in plan.items}) == len(plan.items), "a sequence scheduled twice in one step"
    for it in plan.items:
        seq = it.seq
        assert seq.status is SeqStatus.RUNNING and it.start == seq.num_computed
        assert len(it.token_ids) <= cfg.prefill_chunk_size
        assert cache.length(seq.seq_id) >= it.start + len(it.token_ids)
        assert it.token_ids == seq.token_ids[it.start : it.start + len(it.token_ids)]
        assert it.needs_logits == (it.start + len(it.token_ids) == seq.num_tokens)
        stats.partial_chunks += not it.needs_logits
    if plan.items:
        assert plan.max_context_len == max(it.start + len(it.token_ids) for it in plan.items)
        assert plan.positions.tolist() == [
            p for it in plan.items for p in range(it.start, it.start + len(it.token_ids))
        ]
    assert sorted(cache.block_tables.seq_ids) == sorted(q.seq_id for q in s.running)
    assert [q.arrival for q in s.running] == sorted(q.arrival for q in s.running)
    assert all(q.seq_id is None and q.num_computed == 0 and not q.is_finished for q in s.waiting)
    owned = {p for q in s.running for p in cache.pages(q.seq_id)}
    assert len(owned) + cache.num_free_pages == cache.num_pages, "a page leaked"
    cached = set(cache.allocator._cached)  # ownerless pages the prefix index keeps (free for admission)
    assert not cached & owned and set(s._hash_of_page) <= owned | cached
    assert len(s._page_of_hash) == len(s._hash_of_page)
    stats.steps += 1
    stats.max_tokens = max(stats.max_tokens, plan.num_tokens)
    stats.decode_only += plan.is_decode_only
    stats.peak_running = max(stats.peak_running, len(s.running))


def drive(s: Scheduler, arrivals: dict[int, list[Sequence]], max_steps: int = 200_000) -> tuple[dict, Stats]:
    "Add each request at its step and run to the end; return {request_id: finished sequence} and run stats."
    runner, done, stats, step = FakeRunner(s.cache), {}, Stats(), 0
    arrivals = {k: list(v) for k, v in arrivals.items()}

    def record(q):
        assert q.request_id not in done, f"request {q.request_id!r} finished twice"
        assert q.is_finished and q.seq_id is None
        done[q.request_id] = q

    while arrivals or s.has_unfinished():
        for q in arrivals.pop(step, []):
            if s.add(q).is_finished:
                record(q)
        plan = s.schedule()
        check_step(s, plan, stats)
        if plan.items:
            for q in s.update(plan, runner(plan)):
                record(q)
        step += 1
        assert step < max_steps, "no progress"
    return done, stats


def check_done(s: Scheduler, arrivals: dict[int, list[Sequence]], done: dict) -> None:
    "Every request finished once, as it would alone (or with an error iff it can never fit); no page leaked."
    requests = [q for qs in arrivals.values() for q in qs]
    assert sorted(done, key=repr) == sorted((q.request_id for q in requests), key=repr), "a request was lost"
    cache = s.cache
    for q in requests:
        total = len(q.prompt) + q.max_tokens
        never_fits = total > s.max_seq_len or pages_needed(total, cache.page_size) > cache.num_pages
        assert (q.finish_reason == "error") == never_fits, (q.request_id, q.finish_reason, total)
        if never_fits:
            assert q.generated == [] and str(total) in q.error
        else:
            assert (q.generated, q.finish_reason) == solo(q), q.request_id
    assert cache.num_free_pages == cache.num_pages and len(cache.block_tables) == 0
    assert set(s._hash_of_page) == set(cache.allocator._cached) and not s.has_unfinished()


def random_arrivals(
    rng: random.Random,
    n: int,
    prompt_lens,
    new_lens,
    last_arrival: int,
    prefix: list[int] = (),
    prefix_share: float = 0.0,
) -> dict[int, list[Sequence]]:
    """Random prompts (a share of them starting with part of `prefix`), output lengths, EOS rules,
    arrival steps."""
    arrivals = {}
    for i in range(n):
        prompt = [rng.randrange(1, VOCAB) for _ in range(rng.randint(*prompt_lens))]
        if prefix and rng.random() < prefix_share:
            prompt = list(prefix[: rng.randint(1, len(prefix))]) + prompt
        q = Sequence(
            i,
            prompt,
            max_tokens=rng.randint(*new_lens),
            eos_id=EOS,
            ignore_eos=rng.random() < 0.5,
            stop_ids={VOCAB - 1} if rng.random() < 0.2 else (),
        )
        arrivals.setdefault(rng.randint(0, last_arrival), []).append(q)
    return arrivals


# ---------------------------------------------------------------- long seeded workloads


@pytest.mark.parametrize(
    "page_size,num_pages,max_num_seqs,budget,chunk,prefix_caching",
    [
        (8, 40, 12, 48, 16, True),  # small cache: preemption; small chunks
        (8, 40, 12, 48, 16, False),
        (4, 64, 16, 32, None, True),  # budget-bound: long prompts chunked by the budget
        (16, 24, 6, 96, 40, True),
    ],
)
def test_long_random_workload(page_size, num_pages, max_num_seqs, budget, chunk, prefix_caching):
    rng = random.Random(page_size * 1000 + num_pages)
    prefix = [rng.randrange(1, VOCAB) for _ in range(40)]
    arrivals = random_arrivals(rng, 150, (1, 90), (1, 100), 900, prefix, 0.4)
    arrivals.setdefault(5, []).append(Sequence("too long", [1] * 20, max_tokens=num_pages * page_size))
    s = make(num_pages, page_size, max_num_seqs, budget, chunk, prefix_caching)
    done, stats = drive(s, arrivals)
    check_done(s, arrivals, done)
    assert stats.steps >= 1000, stats.steps
    assert s.num_preemptions > 0 and stats.partial_chunks > 0 and stats.decode_only > 0
    assert stats.max_tokens == budget  # the budget is filled, never passed
    assert (s.num_cached_tokens > 0) == prefix_caching
    assert any(q.num_preemptions for qs in arrivals.values() for q in qs if q.finish_reason != "error")


# ---------------------------------------------------------------- hypothesis: random configs and workloads


@st.composite
def workloads(draw):
    page_size = draw(st.sampled_from([1, 2, 4, 8]))
    num_pages = draw(st.integers(2, 40))
    max_num_seqs = draw(st.integers(1, 6))
    budget = draw(st.integers(max_num_seqs, 40))
    chunk = draw(st.integers(1, budget))
    prefix_caching = draw(st.booleans())
    prefix = draw(st.lists(st.integers(1, VOCAB - 1), min_size=0, max_size=3 * page_size + 2))
    reqs = draw(
        st.lists(
            st.tuples(
                st.booleans(),
                st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=30),
                st.integers(1, 40),
                st.integers(0, 30),
                st.booleans(),
            ),
            min_size=1,
            max_size=10,
        )
    )
    arrivals = {}
    for i, (use_prefix, tail, max_tokens, step, ignore_eos) in enumerate(reqs):
        prompt = (prefix if use_prefix else []) + tail
        arrivals.setdefault(step, []).append(
            Sequence(i, prompt, max_tokens, eos_id=EOS, ignore_eos=ignore_eos)
        )
    return (page_size, num_pages, max_num_seqs, budget, chunk, prefix_caching), arrivals


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(workloads())
def test_random_configs(workload):
    (page_size, num_pages, max_num_seqs, budget, chunk, prefix_caching), arrivals = workload
    s = make(num_pages, page_size, max_num_seqs, budget, chunk, prefix_caching)
    done, _ = drive(s, arrivals)
    check_done(s, arrivals, done)


# ---------------------------------------------------------------- prefix sharing, measured


def prefix_arrivals(n=64, prefix_len=1024, per_step=1, seed=0):
    rng = random.Random(seed)
    prefix = [rng.randrange(1, VOCAB) for _ in range(prefix_len)]
    arrivals = {}
    for i in range(n):
        q = Sequence(
            i,
            prefix + [rng.randrange(1, VOCAB) for _ in range(rng.randint(16, 48))],
            max_tokens=96,
            ignore_eos=True,
        )
        arrivals.setdefault(i // per_step, []).append(q)
    return arrivals


def pages_in_use(arrivals, prefix_caching: bool, at_step: int) -> tuple[int, Scheduler]:
    "Run the workload; return the pages in use after `at_step` steps, and the scheduler."
    s = make(6144, 16, max_num_seqs=64, budget=2048, prefix_caching=prefix_caching)
    runner, step, used = FakeRunner(s.cache), 0, None
    pending = {k: list(v) for k, v in arrivals.items()}
    while pending or s.has_unfinished():
        for q in pending.pop(step, []):
            s.add(q)
        plan = s.schedule()
        if step == at_step:
            used = s.cache.stats().pages_used
            assert len(s.running) == 64 and all(q.num_tokens - q.num_computed == 1 for q in s.running)
        if plan.items:
            s.update(plan, runner(plan))
        step += 1
    check_done(s, arrivals, {q.request_id: q for qs in arrivals.values() for q in qs})
    return used, s


@pytest.mark.parametrize("per_step", [1, 64])
def test_prefix_sharing_saves_the_prefix(per_step):
    """64 requests with a common 1,024-token prefix (64 pages):
    the prefix's KV is held about once, not 64 times."""
    at_step = 70 if per_step == 1 else 40  # all 64 requests admitted and decoding, in both runs
    on, s_on = pages_in_use(prefix_arrivals(per_step=per_step), True, at_step)
    off, s_off = pages_in_use(prefix_arrivals(per_step=per_step), False, at_step)
    prefix_pages = 64 * (1024 // 16)
    if per_step == 1:
        assert off - on == 63 * 64  # both runs in the same state at step 70: the exact saving
    assert off - on >= 0.9 * prefix_pages, (off, on)
    assert s_on.num_cached_tokens >= 0.9 * 63 * 1024 and s_off.num_cached_tokens == 0


# ---------------------------------------------------------------- too long, abort, fork


def test_too_long_requests_fail_cleanly():
    s = make(8, 4, max_num_seqs=4, budget=16, max_seq_len=64)
    arrivals = {
        0: [
            Sequence("ok", [1, 2, 3], max_tokens=20),
            Sequence("long", [1] * 60, max_tokens=5),
            Sequence("big", [2] * 30, max_tokens=3),
        ],  # 33 tokens: 9 pages, the cache has 8
        1: [Sequence("edge", [3] * 28, max_tokens=4, ignore_eos=True)],  # 32 tokens: exactly the cache
    }
    done, _ = drive(s, arrivals)
    check_done(s, arrivals, done)
    assert "over max_seq_len=64" in done["long"].error and "the whole cache has 8" in done["big"].error
    assert done["edge"].finish_reason == "length" and done["ok"].finish_reason in ("stop", "length")


def test_abort_anywhere():
    s = make(6, 4, max_num_seqs=2, budget=8, chunk=4)
    runner = FakeRunner(s.cache)
    a, b, c = (
        s.add(Sequence(r, [i + 1 for i in range(n)], max_tokens=10, ignore_eos=True))
        for r, n in (("a", 10), ("b", 9), ("c", 3))
    )
    plan = s.schedule()
    s.update(plan, runner(plan))
    assert a.status is SeqStatus.RUNNING and 0 < a.num_computed < a.num_tokens  # mid-prefill
    assert c.status is SeqStatus.WAITING
    s.abort(a)
    s.abort(c)
    assert (a.finish_reason, c.finish_reason) == ("abort", "abort") and c not in s.waiting
    plan = s.schedule()
    sampled = runner(plan)
    s.abort(b)  # after the runner, before update(): its tokens are dropped
    s.update(plan, sampled)
    assert s.cache.num_free_pages == 6 and not s.has_unfinished() and b.finish_reason == "abort"


@pytest.mark.parametrize("num_pages", [64, 7])
def test_fork_samples_match_solo(num_pages):
    """fork() shares the prompt's KV; with no room (7 pages), children wait and recompute,
    with the same results."""
    s = make(num_pages, 4, max_num_seqs=6, budget=32)
    runner = FakeRunner(s.cache)
    parent = s.add(Sequence("p", list(range(1, 14)), max_tokens=12, eos_id=EOS))
    other = s.add(Sequence("q", [5] * 6, max_tokens=12, ignore_eos=True))
    plan = s.schedule()
    s.update(plan, runner(plan))
    used = s.cache.stats().pages_used
    kids = s.fork(parent, 5, first_tokens=[7, 8, 9, 10])
    if num_pages == 64:
        assert all(k.status is SeqStatus.RUNNING for k in kids)
        assert s.cache.stats().pages_used == used + 4  # one partial page copied each
    else:
        assert any(k.status is SeqStatus.WAITING for k in kids)
    finished = []
    while s.has_unfinished():
        plan = s.schedule()
        finished += s.update(plan, runner(plan)) if plan.items else []
    assert parent.generated == solo(parent)[0] and other.generated == solo(other)[0]
    for k, t in zip(kids, (7, 8, 9, 10)):
        alone = Sequence(k.request_id, parent.prompt + [t], max_tokens=11, eos_id=EOS)
        assert k.generated == [t] + solo(alone)[0]
    assert sorted(map(repr, finished)) == sorted(map(repr, [parent, other, *kids]))
    assert s.cache.num_free_pages == num_pages


def test_fork_errors():
    s = make(16, 4, max_num_seqs=4, budget=16)
    p = s.add(Sequence("p", [1, 2, 3], max_tokens=8, ignore_eos=True))
    with pytest.raises(ValueError, match="waiting with 3 token"):
        s.fork(p, 2)
    plan = s.schedule()
    with pytest.raises(RuntimeError, match="not while a plan runs"):
        s.fork(p, 2)
    s.update(plan, FakeRunner(s.cache)(plan))
    with pytest.raises(ValueError, match="first_tokens holds 1 token"):
        s.fork(p, 3, first_tokens=[4])
    with pytest.raises(ValueError, match="n must be a positive int"):
        s.fork(p, 0)
    assert s.fork(p, 1) == []
    s.fork(p, 2)
    with pytest.raises(ValueError, match=r"\('p', 1\)"):
        s.fork(p, 2)


# ---------------------------------------------------------------- config and protocol errors


def test_config_errors():
    with pytest.raises(ValueError, match="max_num_batched_tokens=4 must be >= max_num_seqs=8"):
        SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=4)
    with pytest.raises(ValueError, match="prefill_chunk_size=65"):
        SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, prefill_chunk_size=65)
    with pytest.raises(ValueError, match="prefill_chunk_size must be a positive int, got 0"):
        SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, prefill_chunk_size=0)
    with pytest.raises(ValueError, match="power of two, got 6"):
        SchedulerConfig(page_size=6)
    cache = PagedKVCache(1, 1, 1, num_pages=8, page_size=4, device="cpu", max_seqs=4)
    with pytest.raises(ValueError, match="page_size=8 but the cache's page_size is 4"):
        Scheduler(cache, SchedulerConfig(max_num_seqs=4, page_size=8))
    with pytest.raises(ValueError, match="only max_seqs=4 rows"):
        Scheduler(cache, SchedulerConfig(max_num_seqs=5))
    cache.reserve(0, 3)
    with pytest.raises(ValueError, match="needs an empty cache"):
        Scheduler(cache, SchedulerConfig(max_num_seqs=4))


def test_protocol_errors():
    s = make(8, 4, max_num_seqs=2, budget=8)
    a = s.add(Sequence("a", [1, 2, 3], max_tokens=4))
    with pytest.raises(ValueError, match="already added"):
        s.add(a)
    with pytest.raises(ValueError, match="'a' is already in use"):
        s.add(Sequence("a", [4]))
    plan = s.schedule()
    with pytest.raises(RuntimeError, match="before update"):
        s.schedule()
    with pytest.raises(ValueError, match="holds 2 token"):
        s.update(plan, [1, 2])
    s.update(plan, torch.tensor([5]))
    with pytest.raises(ValueError, match="once"):
        s.update(plan, [5])
    empty = make(8, 4, max_num_seqs=2, budget=8).schedule()
    assert empty.items == [] and empty.num_tokens == 0 and not empty.is_decode_only
    with pytest.raises(ValueError, match="at least one token"):
        Sequence("x", [])
    with pytest.raises(ValueError, match="int token ids"):
        Sequence("x", ["a"])
