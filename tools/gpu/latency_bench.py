"""The paper's Figure 3: per-token decode latency vs context length on FMS's LLaMA, three ways in one process.

- paged: our global paged cache through the FMS attention op 'paged_flex' (reserve, chunked prefill with
  `paged_forward`, then one `paged_step` + `paged_forward` + greedy pick per new token);
- contiguous: FMS's own SDPA op with `past_key_value_states` and `use_cache=True` (its store op grows every
  layer's `[batch, kv_heads, tokens, head_dim]` tensors by `torch.cat` each step), filled with the same keys
  and values copied out of the pages, so its first step must give the paged path's logits;
- no cache: one full forward of context + 1 tokens per new token (FMS's SDPA op, causal, logits of the last
  token).

Random weights (latency does not depend on them), written as a Hugging Face folder and loaded with
`paged_flex.fms.load_llama`; one FMS model serves all three ways. A step is timed on the host clock from
before the metadata to after the next tokens reach the host (`.tolist()` synchronises), so Python overhead is
part of the latency of these three; a fourth way, "paged_graphs", replays the paged step as a CUDA graph, as
the engine's decode does.
usage: python tools/gpu/latency_bench.py [llama3-8b smollm2-135m ...] [--budget S]
    (writes $OUT/latency_h100.json)"""

from __future__ import annotations
import argparse, datetime, json, os, shutil, statistics, sys, tempfile, time, traceback
from dataclasses import dataclass, asdict, field
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from transformers import LlamaConfig, LlamaForCausalLM
from paged_flex.fms import load_llama, paged_cache_for, paged_step, paged_forward
from paged_flex.block_tables import pages_needed

SHAPES = {  # Hugging Face LlamaConfig fields of each random model
    "llama3-8b": dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    ),
    "smollm2-135m": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    ),
}
METHODS = (
    "paged",
    "contiguous",
    "no_cache",
)  # plus "paged_graphs": the paged step replayed as a CUDA graph (the engine's decode)


@dataclass(frozen=True)
class BenchConfig:
    "What one sweep measures."

    contexts: tuple = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
    batches: tuple = (1, 16)
    warmup: int = 5  # untimed decode steps first, at the same context
    steps: int = 20  # timed decode steps: the median is the latency
    page_size: int = 16
    prefill_chunk: int = 16384  # tokens per prefill step of the paged cache
    no_cache_stop_s: float = 1.0  # no more no-cache points for a (model, batch) once a step takes longer
    no_cache_point_s: float = 3.0  # time a no-cache point at most this long (but >= 3 steps)
    memory_margin_GB: float = 4.0  # left free for activations when deciding what fits

    def __post_init__(self):
        if not self.contexts or sorted(self.contexts) != list(self.contexts) or min(self.contexts) < 1:
            raise ValueError(f"contexts must be increasing positive token counts, got {self.contexts}")
        if self.steps < 3 or self.warmup < 1:
            raise ValueError(f"need warmup >= 1 and steps >= 3, got {self.warmup}, {self.steps}")


@dataclass(frozen=True)
class Row:
    "One (model, batch, context, method) point."

    model: str
    batch: int
    context: int  # tokens in the cache before the first timed step
    method: str  # 'paged', 'contiguous' or 'no_cache'
    status: str  # 'ok', 'skipped' or 'error'
    ms: float | None = None  # median step = per-token latency (each sequence gets one token a step)
    ms_p10: float | None = None
    ms_p90: float | None = None
    steps: int = 0  # timed steps
    issue_ms: float | None = None  # median host time until the forward returned (launches queued)
    meta_ms: float | None = None  # median host time of reserve + paged_step (paged only)
    peak_GB: float | None = None  # peak allocated GPU memory during the timed steps, weights included
    cache_GB: float | None = None  # the cache itself: pages used x bytes per page, or FMS's K/V tensors
    pool_GB: float | None = None  # the paged pool (sized for this batch x context)
    first_logits_rel_err: float | None = None  # contiguous only: first step against the paged path's
    reason: str = ""


def _sync(device):
    torch.cuda.synchronize(device) if device.type == "cuda" else None


def _percentile(xs, q):
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


def _peak_GB(device):
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def time_steps(step, device, warmup: int, steps: int, budget_s: float | None = None) -> dict:
    """Run `step(i)` warmup + steps times; medians of the timed ones.
    `step` returns (metadata done, forward issued) clock stamps.
    """
    total, issue, meta = [], [], []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        t_meta, t_issue = step(i)  # ends with the next tokens on the host: synchronised
        t1 = time.perf_counter()
        if i >= warmup:
            total.append(t1 - t0)
            issue.append(t_issue - t0)
            meta.append(t_meta - t0)
        if budget_s is not None and len(total) >= 3 and sum(total) > budget_s:
            break
    ms = lambda xs: statistics.median(xs) * 1e3
    return dict(
        ms=ms(total),
        ms_p10=_percentile(total, 0.1) * 1e3,
        ms_p90=_percentile(total, 0.9) * 1e3,
        steps=len(total),
        issue_ms=ms(issue),
        meta_ms=ms(meta),
    )


def write_random_llama(folder, shape: dict, max_len: int, dtype: torch.dtype, device, seed: int = 0) -> int:
    """A random HF LLaMA of `shape` built on `device` in `dtype` and saved to `folder`;
    returns its parameter count.
    """
    cfg = LlamaConfig(
        **shape, max_position_embeddings=max_len, pad_token_id=0, bos_token_id=1, eos_token_id=2
    )
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    return n


def prefill(model, cache, tokens: torch.Tensor, chunk: int) -> None:
    """Reserve and fill `cache` with `tokens` `[batch, context]` (sequence ids 0..batch-1),
    `chunk` packed tokens a step.
    """
    B, L = tokens.shape
    for s in range(B):
        cache.reserve(s, L)
    ids, pos = (
        torch.arange(B).repeat_interleave(L),
        torch.arange(L).repeat(B),
    )  # [B * L] packed, sequence-major
    flat = tokens.reshape(-1)
    for a in range(0, B * L, chunk):
        step = paged_step(cache, ids[a : a + chunk], pos[a : a + chunk])
        paged_forward(model, flat[a : a + chunk], step, last_n_tokens=1)


def paged_latency(
    model, tokens: torch.Tensor, context: int, cfg: BenchConfig
) -> tuple[dict, torch.Tensor, object]:
    """Time decode over a paged cache holding `context` tokens of each row of `tokens`;
    also the first step's logits and the cache.
    """
    B, device = tokens.shape[0], next(model.parameters()).device
    total = context + 2 * (cfg.warmup + cfg.steps)  # eager steps, then graph-replayed steps
    cache = paged_cache_for(
        model, B * pages_needed(total, cfg.page_size) + 1, cfg.page_size, max_seqs=B + 1, max_seq_len=total
    )
    prefill(model, cache, tokens[:, :context], cfg.prefill_chunk)
    seqs, state = list(range(B)), {"tok": tokens[:, context].tolist()}

    def step(i):
        n = context + i  # position of the token fed now
        for s in seqs:
            cache.reserve(s, n + 1)
        st = paged_step(cache, seqs, [n] * B)
        t_meta = time.perf_counter()
        logits = paged_forward(model, state["tok"], st)
        t_issue = time.perf_counter()  # [B, vocab]
        if i == 0:
            state["first"] = logits.float().cpu()
        state["tok"] = logits.argmax(-1).tolist()
        return t_meta, t_issue

    _reset_peak(device)
    res = time_steps(step, device, cfg.warmup, cfg.steps)
    st = cache.stats()
    res.update(peak_GB=_peak_GB(device), cache_GB=st.bytes_used / 1e9, pool_GB=st.bytes_total / 1e9)
    if device.type == "cuda":  # the same decode, replayed as a CUDA graph
        from paged_flex.engine import ModelRunner, graph_buckets

        runner = ModelRunner(model, cache)
        g = runner.capture(*graph_buckets(B, total))
        base = context + cfg.warmup + cfg.steps

        def gstep(i):
            n = base + i
            for s in seqs:
                cache.reserve(s, n + 1)
            g.tokens.copy_(torch.tensor(state["tok"]))
            g.seq_ids.copy_(torch.arange(B))
            g.positions.fill_(n)
            t_meta = time.perf_counter()
            g.graph.replay()
            t_issue = time.perf_counter()
            state["tok"] = g.logits.argmax(-1).tolist()
            return t_meta, t_issue

        res["graphs"] = time_steps(gstep, device, cfg.warmup, cfg.steps)
    return res, state["first"], cache


def contiguous_from_paged(cache, batch: int, context: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """FMS's contiguous cache, per layer (K, V) `[batch, kv_heads, context, head_dim]`,
    copied out of the pages.
    """
    pages = torch.tensor(
        [cache.pages(s) for s in range(batch)], device=cache.device
    )  # [batch, pages per sequence]
    return [
        tuple(
            pool[layer][pages].flatten(1, 2)[:, :context].transpose(1, 2).contiguous()
            for pool in (cache.k, cache.v)
        )
        for layer in range(cache.num_layers)
    ]


def contiguous_latency(
    model, kv, tokens: torch.Tensor, context: int, cfg: BenchConfig
) -> tuple[dict, torch.Tensor]:
    """Time FMS's own decode (SDPA op, `past_key_value_states`, `use_cache=True`)
    from the contiguous cache `kv`.
    """
    B, device = tokens.shape[0], next(model.parameters()).device
    state = {"tok": tokens[:, context : context + 1].to(device), "kv": kv}  # [B, 1]

    def step(i):
        pos = torch.full((B, 1), context + i, device=device)
        with torch.no_grad():
            logits, state["kv"] = model(
                state["tok"],
                position_ids=pos,
                past_key_value_states=state["kv"],
                use_cache=True,
                last_n_tokens=1,
            )  # [B, 1, vocab]
        t_issue = time.perf_counter()
        if i == 0:
            state["first"] = logits[:, -1].float().cpu()
        state["tok"] = logits[:, -1].argmax(-1, keepdim=True)
        state["tok"].tolist()
        return t_issue, t_issue

    _reset_peak(device)
    res = time_steps(step, device, cfg.warmup, cfg.steps)
    cache_bytes = sum(t.numel() * t.element_size() for layer in state["kv"] for t in layer)
    res.update(peak_GB=_peak_GB(device), cache_GB=cache_bytes / 1e9, meta_ms=None)
    return res, state["first"]


def no_cache_latency(model, tokens: torch.Tensor, context: int, cfg: BenchConfig) -> dict:
    "Time one full forward of context + 1 tokens per new token (FMS's SDPA op, no cache)."
    device = next(model.parameters()).device
    ids = tokens.to(device)  # [B, context + warmup + steps + 1]

    def step(i):
        with torch.no_grad():
            logits = model(ids[:, : context + 1 + i], use_cache=False, last_n_tokens=1)  # [B, 1, vocab]
        t_issue = time.perf_counter()
        logits[:, -1].argmax(-1).tolist()
        return t_issue, t_issue

    _reset_peak(device)
    res = time_steps(step, device, 1, cfg.steps, budget_s=cfg.no_cache_point_s)
    res.update(peak_GB=_peak_GB(device), cache_GB=0.0, meta_ms=None)
    return res


def kv_bytes(model, batch: int, tokens: int) -> int:
    c = model.config
    return (
        2
        * c.nlayers
        * batch
        * tokens
        * (c.kvheads or c.nheads)
        * (c.emb_dim // c.nheads)
        * next(model.parameters()).element_size()
    )


def _free_GB(device) -> float:
    if device.type != "cuda":
        return float("inf")
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info(device)[0] / 1e9


def sweep(name: str, model, cfg: BenchConfig, deadline: float = float("inf"), log=print) -> list[Row]:
    "All (batch, context, method) points of one model: paged, then contiguous from its pages, then no cache."
    rows, device, vocab = [], next(model.parameters()).device, model.config.src_vocab_size
    add = lambda r: (rows.append(r), log(_fmt(r)))
    for B in cfg.batches:
        no_cache_stopped = ""
        for L in cfg.contexts:
            skip = lambda m, why: add(Row(name, B, L, m, "skipped", reason=why))
            if time.time() > deadline:
                for m in METHODS:
                    skip(m, "time budget of the run spent")
                continue
            g = torch.Generator().manual_seed(L * 100 + B)
            tokens = torch.randint(3, vocab, (B, L + cfg.warmup + cfg.steps + 1), generator=g)  # [B, tokens]
            kv_GB = kv_bytes(model, B, L + cfg.warmup + cfg.steps) / 1e9
            free = _free_GB(device) - cfg.memory_margin_GB
            first = cache = None
            if kv_GB > free:
                skip("paged", f"pool of {kv_GB:.1f} GB > {free:.1f} GB free")
                skip("contiguous", "paged cache did not fit")
            else:
                try:
                    res, first, cache = paged_latency(model, tokens, L, cfg)
                    graphs = res.pop("graphs", None)
                    add(Row(name, B, L, "paged", "ok", **res))
                    if graphs:
                        add(Row(name, B, L, "paged_graphs", "ok", **graphs))
                except Exception as e:
                    add(Row(name, B, L, "paged", "error", reason=_err(e)))
                    cache = None
                if cache is None:
                    skip("contiguous", "no paged cache to copy from")
                elif 2 * kv_GB > free:
                    skip(
                        "contiguous",
                        f"2 x {kv_GB:.1f} GB (old and new cache of a torch.cat step) > {free:.1f} GB free",
                    )
                else:
                    try:
                        kv = contiguous_from_paged(cache, B, L)
                        del cache
                        cache = None
                        res, c_first = contiguous_latency(model, kv, tokens, L, cfg)
                        del kv
                        err = ((c_first - first).norm() / first.norm()).item()
                        add(Row(name, B, L, "contiguous", "ok", first_logits_rel_err=err, **res))
                    except Exception as e:
                        add(Row(name, B, L, "contiguous", "error", reason=_err(e)))
                cache = kv = None
            if no_cache_stopped:
                skip("no_cache", no_cache_stopped)
            else:
                try:
                    res = no_cache_latency(model, tokens, L, cfg)
                    add(Row(name, B, L, "no_cache", "ok", **res))
                    if res["ms"] > cfg.no_cache_stop_s * 1e3:
                        no_cache_stopped = (
                            f"a no-cache step took {res['ms']:.0f} ms at context {L}: longer contexts not run"
                        )
                except Exception as e:
                    add(Row(name, B, L, "no_cache", "error", reason=_err(e)))
                    no_cache_stopped = f"no-cache failed at context {L}"
            _reset_peak(device)
    return rows


def _err(e) -> str:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "out of memory: " + str(e)[:200]
    return "".join(traceback.format_exception(e))[-800:]


def _fmt(r: Row) -> str:
    if r.status != "ok":
        return f"{r.model:>13} B={r.batch:<3} L={r.context:<6} {r.method:<10} {r.status}: {r.reason[-160:]}"
    extra = f" err {r.first_logits_rel_err:.1e}" if r.first_logits_rel_err is not None else ""
    meta = f" meta {r.meta_ms:.2f}" if r.meta_ms is not None else ""
    peak = f" peak {r.peak_GB:.1f} GB cache {r.cache_GB:.2f} GB" if r.peak_GB is not None else ""
    return (
        f"{r.model:>13} B={r.batch:<3} L={r.context:<6} {r.method:<10} {r.ms:8.2f} ms (p10 "
        f"{r.ms_p10:.2f}, p90 {r.ms_p90:.2f}, "
        f"n={r.steps}) issue {r.issue_ms:.2f}{meta}{peak}{extra}"
    )


def load_random(
    name: str, device, dtype, max_len: int, folder_root: str | None = None
) -> tuple[object, dict]:
    "Write the random `name` model to a temporary HF folder, load it with `load_llama`, delete the folder."
    shape, t0 = SHAPES[name], time.time()
    root = folder_root or (
        "/dev/shm" if os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > 40e9 else None
    )
    folder = tempfile.mkdtemp(prefix=f"latency-{name}-", dir=root)
    try:
        n = write_random_llama(folder, shape, max_len, dtype, device)
        t1 = time.time()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model, _ = load_llama(folder, device, dtype)
        t2 = time.time()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    info = dict(
        hf_config=shape,
        max_position_embeddings=max_len,
        params=n,
        dtype=str(dtype),
        weights_GB=sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9,
        fms_max_expected_seq_len=model.config.max_expected_seq_len,
        build_and_save_s=t1 - t0,
        load_s=t2 - t1,
    )
    return model, info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="*", help=f"of {list(SHAPES)}; default: smollm2-135m llama3-8b")
    p.add_argument(
        "--budget",
        type=float,
        default=330,
        help="seconds from start after which remaining points are skipped",
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--contexts", type=int, nargs="*")
    p.add_argument("--batches", type=int, nargs="*")
    p.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "latency_h100.json"))
    a = p.parse_args(argv)
    a.models = a.models or ["smollm2-135m", "llama3-8b"]
    if set(a.models) - set(SHAPES):
        p.error(f"unknown models {sorted(set(a.models) - set(SHAPES))}; known: {list(SHAPES)}")
    start, device = time.time(), torch.device(a.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = BenchConfig(**{k: tuple(v) for k, v in (("contexts", a.contexts), ("batches", a.batches)) if v})
    import triton, transformers, fms
    from importlib.metadata import version

    out = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "transformers": transformers.__version__,
        "ibm_fms": version("ibm-fms"),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "gpu_memory_GB": torch.cuda.get_device_properties(device).total_memory / 1e9
        if device.type == "cuda"
        else None,
        "workload": "per-token decode latency (median step of greedy decode) against context length; random "
        f"{dtype} weights seed 0; contexts {list(cfg.contexts)}, batches {list(cfg.batches)}; random "
        f"prompt tokens; "
        "paged (FMS op paged_flex, page 16, backend auto) vs FMS contiguous cache (sdpa op, torch.cat store) "
        "vs no cache (full forward of context + 1 tokens, last-token logits)",
        "command": "python tools/gpu/latency_bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": asdict(cfg),
        "models": {},
        "rows": [],
    }

    def dump():
        json.dump(out, open(a.out, "w"), indent=1)

    for name in a.models:
        model, info = load_random(
            name, device, dtype, max_len=max(cfg.contexts) + cfg.warmup + cfg.steps + 64
        )
        out["models"][name] = info
        print(name, {k: v for k, v in info.items() if k != "hf_config"}, flush=True)
        rows = sweep(name, model, cfg, deadline=start + a.budget, log=lambda s: print(s, flush=True))
        out["rows"] += [asdict(r) for r in rows]
        dump()
        del model
        _reset_peak(device)
    out["wall_s"] = time.time() - start
    dump()
    print(f"done in {out['wall_s']:.0f} s -> {a.out}")


if __name__ == "__main__":
    main()
