"""The engine on the CPU beside HF `generate`, in one process: SmolLM2-135M-Instruct in float32 (the folder of
`paged-flex assets`), batches of 1, 4, 8 and 16 prompts of 9-38 tokens, 48 new tokens each, greedy, no early
stop. Ours: `LLM(...).generate` (continuous batching over the paged cache, the gather attention path). Peer:
transformers' `generate` on the same token ids as one left-padded batch (sdpa attention, use_cache=True).
Each batch size: one warm-up run of each, then `--repeats` timed pairs, alternating which runs first; the
median of each. The ratio is our tokens/s over HF's.

    python tools/cpu_bench.py --threads 1 --out nbs/results/cpu_speed_epyc.json   # adds a run of 1 thread
    python tools/cpu_bench.py --batches 8 --repeats 1 --profile     # where our time goes, then HF's
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch

PROMPTS = [  # word counts 6-38: the left-padded batch pads the short ones
    "The history of the city begins",
    "In mathematics, a group is a set together with an operation that combines any two of its elements into "
    "a third element of the set, such that the operation is associative",
    "Photosynthesis is the process by which green plants and some other organisms",
    "Once upon a time, in a kingdom far away beyond seven mountains and seven seas, there lived an old "
    "king who had three daughters and a very large library full of maps",
    "Rust and Python differ in",
    "The main causes of the French Revolution were the debts of the crown, the price of bread, and",
    "To bake a loaf of bread you need flour, water, salt and yeast; first",
    "A paged key-value cache stores the keys and values of every layer in fixed-size pages, so that",
]


def cpu_name() -> str:
    "The CPU's model name, as /proc/cpuinfo gives it."
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def prompt_ids(tokenizer, batch: int) -> list[list[int]]:
    "`batch` prompts' token ids: the texts above in turn, each with its index so no two are the same."
    return [tokenizer.encode(f"{PROMPTS[i % len(PROMPTS)]} ({i})") for i in range(batch)]


def run_ours(llm, sampling, ids) -> tuple[float, list[list[int]]]:
    t = time.perf_counter()
    outs = llm.generate(ids, sampling, use_tqdm=False)
    return time.perf_counter() - t, [list(o.outputs[0].token_ids) for o in outs]


def run_hf(model, tokenizer, ids, new_tokens: int) -> tuple[float, list[list[int]]]:
    t = time.perf_counter()
    enc = tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")  # left padding
    with torch.inference_mode():
        out = model.generate(
            **enc,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
        )
    return time.perf_counter() - t, out[:, enc["input_ids"].shape[1] :].tolist()


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    "The fraction of sequences whose greedy tokens are the same in both."
    return sum(x == y for x, y in zip(a, b)) / len(a)


def profile_both(llm, sampling, model, tokenizer, ids, new_tokens: int) -> None:
    from torch.profiler import profile

    for name, fn in (
        ("ours", lambda: run_ours(llm, sampling, ids)),
        ("hf", lambda: run_hf(model, tokenizer, ids, new_tokens)),
    ):
        with profile() as p:
            fn()
        print(f"--- {name}, batch {len(ids)}")
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))


def bench_batch(llm, sampling, model, tokenizer, batch: int, new_tokens: int, repeats: int) -> dict:
    ids = prompt_ids(tokenizer, batch)
    ours_tokens = run_ours(llm, sampling, ids)[1]  # warm-up
    hf_tokens = run_hf(model, tokenizer, ids, new_tokens)[1]
    ours, hf = [], []
    for r in range(repeats):
        pair = [
            (ours, lambda: run_ours(llm, sampling, ids)),
            (hf, lambda: run_hf(model, tokenizer, ids, new_tokens)),
        ]
        for times, fn in pair if r % 2 == 0 else pair[::-1]:
            times.append(fn()[0])
    tokens = batch * new_tokens
    row = {
        "batch": batch,
        "prompt_tokens": [len(p) for p in ids],
        "ours_seconds": ours,
        "hf_seconds": hf,
        "ours_tokens_per_s": tokens / statistics.median(ours),
        "hf_tokens_per_s": tokens / statistics.median(hf),
        "greedy_agreement": agreement(ours_tokens, hf_tokens),
    }
    row["ratio"] = row["ours_tokens_per_s"] / row["hf_tokens_per_s"]
    print(
        f"batch {batch:2d}: ours {row['ours_tokens_per_s']:6.1f} tok/s, "
        f"HF {row['hf_tokens_per_s']:6.1f} tok/s, "
        f"ratio {row['ratio']:.2f}, same greedy tokens {row['greedy_agreement']:.0%}  "
        f"(load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--profile", action="store_true", help="print torch.profiler tables instead of timing")
    p.add_argument("--out", help="write the results here (JSON)")
    p.add_argument("--note", default="", help="a remark stored with the results (e.g. other load seen)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from paged_flex.assets import smollm2_folder
    from paged_flex.engine import LLM
    from paged_flex.sampling import SamplingParams

    folder = smollm2_folder(progress=False)
    llm = LLM(folder, device="cpu", dtype=torch.float32)
    sampling = SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    if args.profile:
        for b in args.batches:
            ids = prompt_ids(tokenizer, b)
            run_ours(llm, sampling, ids)
            run_hf(model, tokenizer, ids, args.new_tokens)
            profile_both(llm, sampling, model, tokenizer, ids, args.new_tokens)
        return
    load_before = os.getloadavg()
    rows = [
        bench_batch(llm, sampling, model, tokenizer, b, args.new_tokens, args.repeats) for b in args.batches
    ]
    import transformers

    result = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "workload": f"SmolLM2-135M-Instruct fp32 on the CPU; batches {args.batches} of prompts of 9-38 "
        "tokens "
        f"(tools/cpu_bench.py PROMPTS), {args.new_tokens} new tokens each, greedy, no early stop; ours "
        f"LLM.generate (backend auto: gather), HF generate on the same ids as one left-padded batch (sdpa, "
        f"use_cache=True); one warm-up each, then {args.repeats} alternating timed runs, median",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "note": args.note,
        "rows": rows,
    }
    if args.out:
        save_run(args.out, result)


def save_run(path: str, run: dict) -> None:
    "Add `run` to the runs in `path` (a JSON file), replacing an earlier run with the same thread count."
    runs = []
    if os.path.exists(path):
        with open(path) as f:
            runs = [r for r in json.load(f)["runs"] if r["threads"] != run["threads"]]
    with open(path, "w") as f:
        json.dump({"runs": sorted(runs + [run], key=lambda r: r["threads"])}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
