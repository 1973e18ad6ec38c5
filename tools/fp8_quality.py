"""fp8 KV pages against the model's own dtype on the CPU (issue 13): SmolLM2-135M-Instruct (the folder of
`paged-flex assets`) in `--dtype` weights and activations, its paged cache storing pages as "auto" (the
model's dtype), "fp8_e4m3" and "fp8_e5m2", scales left at 1.0 (the cache's default; no calibration).

- Perplexity: notebook 13's sliding windows (1,024 tokens every 512, chunks of 256, two windows per step,
  pages of 16) over the first `--tokens` tokens of the cleaned Wikipedia sample, tokenized as notebook 13 does
  (articles joined by blank lines).
- Greedy agreement: `--prompts` prompts, each the first `--prompt-tokens` tokens of an article spread over the
  sample, `--new-tokens` new tokens each through `paged_flex.fms.generate` (packed prefill, batched decode;
  no early stop), each fp8 run compared token by token with the "auto" run of the same model. For a bfloat16
  model, the float32 model runs too: its fp8 runs against its float32 pages (a reference without bfloat16's
  rounding), and its "auto" run against the bfloat16 model's (the size of a change that is not fp8's).

    python tools/fp8_quality.py --out nbs/results/fp8_kv_quality_cpu.json
"""

import argparse
import datetime
import json
import platform
import time

import torch

from paged_flex.assets import smollm2_folder, wikipedia_dataset
from paged_flex.fms import generate, load_llama, paged_cache_for
from paged_flex.perplexity import sliding_windows, token_nll

KV_DTYPES = ("auto", "fp8_e4m3", "fp8_e5m2")
WINDOW, STRIDE, CHUNK, BATCH = 1024, 512, 256, 2  # notebook 13's


def cpu_name() -> str:
    "The CPU's model name, as /proc/cpuinfo gives it."
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def perplexities(model, wiki_ids: torch.Tensor, num_tokens: int) -> dict:
    "Perplexity and seconds of each KV dtype on the first `num_tokens` tokens."
    windows = sliding_windows(num_tokens, WINDOW, STRIDE)
    out = {}
    for kv in KV_DTYPES:
        t0 = time.perf_counter()
        nll = token_nll(model, wiki_ids, windows, chunk=CHUNK, batch=BATCH, kv_cache_dtype=kv)  # [tokens - 1]
        out[kv] = {"perplexity": nll.mean().exp().item(), "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{kv}: perplexity {out[kv]['perplexity']:.5f} ({out[kv]['seconds']} s)", flush=True)
    base = out["auto"]["perplexity"]
    for kv in KV_DTYPES[1:]:
        out[kv]["relative_difference"] = out[kv]["perplexity"] / base - 1
    return {"windows": len(windows), "tokens_scored": num_tokens - 1, "results": out}


def first_divergence(a: list[int], b: list[int]) -> int | None:
    "The first position where `a` and `b` differ, None if they agree."
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def continue_greedily(model, prompts: list[list[int]], new_tokens: int, kv: str) -> list[list[int]]:
    "`new_tokens` greedy tokens after each prompt, over a paged cache of `kv` pages."
    longest = max(map(len, prompts)) + new_tokens
    cache = paged_cache_for(
        model, len(prompts) * (longest // 16 + 1), max_seqs=len(prompts), kv_cache_dtype=kv
    )
    return generate(model, None, prompts, cache, max_new_tokens=new_tokens, eos_token_id=[])


def agreement(ref: list[list[int]], other: list[list[int]]) -> dict:
    "How greedy continuations `other` agree with `ref`, token by token."
    new_tokens = sum(map(len, ref))
    firsts = [first_divergence(a, b) for a, b in zip(ref, other)]
    return {
        "identical_token_fraction": sum(x == y for a, b in zip(ref, other) for x, y in zip(a, b))
        / new_tokens,
        # tokens before each prompt's first divergence
        "identical_prefix_fraction": sum(len(a) if f is None else f for a, f in zip(ref, firsts))
        / new_tokens,
        "sequences_identical": sum(f is None for f in firsts),
        "first_divergence": firsts,
    }


def greedy(models: dict, prompts: list[list[int]], new_tokens: int) -> dict:
    """Greedy continuations of each model (`{dtype name: model}`, the measured one first) with each KV dtype;
    each fp8 run against its model's 'auto' run, and each later model's 'auto' run against the first's."""
    runs = {
        m: {kv: continue_greedily(model, prompts, new_tokens, kv) for kv in KV_DTYPES}
        for m, model in models.items()
    }
    first = next(iter(models))
    out = {m: {kv: agreement(r["auto"], r[kv]) for kv in KV_DTYPES[1:]} for m, r in runs.items()}
    for m in list(models)[1:]:
        out[f"{m} vs {first}"] = {"auto": agreement(runs[first]["auto"], runs[m]["auto"])}
    for m, by_kv in out.items():
        for kv, a in by_kv.items():
            print(f"greedy, {m}, {kv}: {a}", flush=True)
    return {"agreement": out, "tokens": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--tokens", type=int, default=4096, help="text tokens for the perplexity (notebook 13: 4096)"
    )
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=48)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="a JSON file for the results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model, tok = load_llama(smollm2_folder(progress=False), device="cpu", dtype=dtype)
    articles = wikipedia_dataset(progress=False)["text"]
    wiki_ids = torch.tensor(tok("\n\n".join(articles))["input_ids"])  # [625k]
    picks = range(0, len(articles), len(articles) // args.prompts)[: args.prompts]
    prompts = [tok(articles[i])["input_ids"][: args.prompt_tokens] for i in picks]
    t0 = time.perf_counter()
    ppl = perplexities(model, wiki_ids, args.tokens)
    models = {args.dtype: model}
    if dtype != torch.float32:
        models["float32"] = load_llama(smollm2_folder(progress=False), "cpu", torch.float32)[0]
    agree = greedy(models, prompts, args.new_tokens)
    result = {
        "what": "SmolLM2 perplexity and greedy agreement with fp8 KV pages vs the model's dtype (issue 13)",
        "command": "python tools/fp8_quality.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_name()}, {args.threads} threads",
        "torch": torch.__version__,
        "model": "SmolLM2-135M-Instruct",
        "model_dtype": args.dtype,
        "kv_scales": "1.0 (default, uncalibrated)",
        "perplexity_workload": f"Wikipedia sample, first {args.tokens} tokens; windows of {WINDOW} every "
        f"{STRIDE}, chunks of {CHUNK}, {BATCH} windows per step, pages of 16",
        **ppl,
        "greedy_workload": f"{args.prompts} prompts (the first {args.prompt_tokens} tokens of articles "
        f"{list(picks)}), {args.new_tokens} new tokens each, greedy, no early stop",
        "greedy": agree["agreement"],
        "greedy_tokens": agree["tokens"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
