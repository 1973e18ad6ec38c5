"""Tensor parallel on the GPUs of one host, every configuration in one run: W1 and W5 through
`LLM(..., tensor_parallel_size=N)` beside one GPU.

W1: a LLaMA-3.2-1B shape (random bf16 weights, seed 0), 64 requests with prompts uniform in [64, 1024], 128
new tokens each, greedy, no early stop. W5: a LLaMA-3-8B shape (random bf16 weights drawn on the GPU, seed 0),
16 requests with prompts uniform in [4096, 16384] (155,847 prompt tokens), 128 new tokens each, greedy, no
early stop. Each configuration runs each workload once to warm up (CUDA graphs captured on every rank), then
once timed (`paged_flex.bench.run_w1` / `run_w5`). Configurations (TP_CONFIGS, comma-separated):
  uni  one GPU in this process (the default engine: fused kernels, CUDA graphs);
  mp1  one rank process (distributed_executor_backend='mp'): the rank path alone, on one GPU;
  tpN  N rank processes over NCCL, one per GPU (tensor_parallel_size=N).
Beside the times: the tokens the KV pool holds (the default budget: 0.8 of every rank's free memory after
its weights), each rank's peak GPU memory, and greedy agreement with the first configuration on 8 of the
prompts (the same tokens as far as the first difference; bf16 all-reduces sum in another order, so
agreement need not be total).

usage: OUT=dir python3 tools/gpu/tp_bench.py [w1|w5|all]   (TP_CONFIGS=uni,tp2 by default)
  writes $OUT/tp_<which>.json after every configuration. On the GPU machine install the wheels first
  (tools/gpu/speed_check.sh shows how). TP_SMALL=1: tiny models and short prompts on the CPU (gloo), to check
  the script before spending GPU time."""

import gc, json, os, sys, tempfile, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from paged_flex.bench import (  # noqa: E402
    DEVICE_PEAKS,
    SMALL_CONFIG,
    W1_CONFIG,
    W5_CONFIG,
    environment,
    random_model_folder,
    random_prompts,
    run_w1,
    run_w5,
    w5_floor,
)
from paged_flex.engine import LLM  # noqa: E402
from paged_flex.sampling import SamplingParams  # noqa: E402


def rank_peak_gb(worker) -> float | None:
    "On a rank (through `collective_rpc`): its GPU's peak memory since the last reset, in GB."
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 1e9


def rank_reset_peak(worker) -> None:
    "On a rank: start counting its GPU's peak memory again."
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def rank_reset_timings(worker) -> None:
    worker.timings = dict.fromkeys(worker.timings, 0.0)


def rank_timings(worker) -> dict:
    "On a rank: host seconds in execute_model (the tables' changes, the step) since the reset."
    return dict(worker.timings)


def rank_glu(worker) -> str:
    "The feed-forward module of the first layer: fused (notebook 09c) or FMS's own."
    model = worker.model.model if type(worker.model).__name__ == "RankModel" else worker.model
    return type(model.base_model.layers[0].ff_sub_layer).__name__


def agreement(tokens: list[list[int]], ref: list[list[int]]) -> dict:
    "How far greedy `tokens` follow `ref`: identical sequences, and tokens before each first difference."
    same = []
    for a, b in zip(tokens, ref):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        same.append(n)
    return {
        "identical_sequences": sum(a == b for a, b in zip(tokens, ref)),
        "sequences": len(ref),
        "tokens_before_first_difference": same,
        "fraction_before_first_difference": sum(same) / sum(map(len, ref)),
    }


def engine_kwargs(name: str) -> dict:
    "LLM's arguments of configuration `name`."
    if name == "uni":
        return {}
    if name == "mp1":
        return {"distributed_executor_backend": "mp"}
    if name.startswith("tp") and name[2:].isdigit():
        return {"tensor_parallel_size": int(name[2:])}
    sys.exit(f"unknown configuration {name!r}: expected uni, mp1 or tpN")


def run_config(name, workload, folder, prompts, new, dev, dtype, small, floor_of):
    "One configuration of one workload: the timed run, pool size, rank memory and the check tokens."
    kw = dict(device=dev, dtype=dtype, **engine_kwargs(name))
    if workload == "w5":
        kw.update(max_num_seqs=len(prompts), max_num_batched_tokens=256 if small else 16384)
        kw.update(max_seq_len=max(map(len, prompts)) + max(new, 32))  # room for the 32 check tokens
    t0 = time.perf_counter()
    llm = LLM(folder, **kw)
    load_s = time.perf_counter() - t0
    runner = llm.llm_engine.runner
    multiproc = hasattr(runner, "collective_rpc")
    try:
        if multiproc:
            runner.collective_rpc(rank_reset_peak)
        res = (
            run_w1(llm, prompts, new)
            if workload == "w1"
            else run_w5(llm, prompts, new, floor_of(prompts, new))
        )
        res["rank_peak_gpu_GB"] = runner.collective_rpc(rank_peak_gb) if multiproc else [res["peak_gpu_GB"]]
        if multiproc:  # the timed run once more, with the ranks' own clocks: where a round trip's time goes
            runner.collective_rpc(rank_reset_timings)
            llm.reset_prefix_cache()
            sp = SamplingParams(max_tokens=new, temperature=0, ignore_eos=True)
            t0 = time.perf_counter()
            llm.generate(prompts, sp, use_tqdm=False)
            res["profile"] = {
                "seconds": time.perf_counter() - t0,
                "ranks": runner.collective_rpc(rank_timings),
            }
        check = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
        outs = llm.generate(prompts[:8], check, use_tqdm=False)
        res["check_tokens"] = [list(o.outputs[0].token_ids) for o in outs]
        hot = [
            SamplingParams(max_tokens=32, temperature=0.8, top_p=0.95, seed=i, ignore_eos=True)
            for i in range(8)
        ]
        outs = llm.generate(prompts[:8], hot[: len(prompts[:8])], use_tqdm=False)
        res["check_sampled_tokens"] = [list(o.outputs[0].token_ids) for o in outs]
        if workload == "w1":  # sampled W1: every row drawn on the device (on the ranks under mp)
            hot = SamplingParams(max_tokens=new, temperature=0.8, top_p=0.95, seed=0, ignore_eos=True)
            llm.reset_prefix_cache()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            llm.generate(prompts, hot, use_tqdm=False)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            res["sampled_seconds"] = time.perf_counter() - t0
            res["sampled_tokens_per_s"] = len(prompts) * new / res["sampled_seconds"]
        res.update(
            load_s=load_s,
            pool_tokens=llm.cache.num_pages * llm.page_size,
            engine=repr(llm),
            fused_glu=runner.collective_rpc(rank_glu) if multiproc else [rank_glu(runner)],
        )
    finally:
        if multiproc:
            runner.close()
        del llm, runner
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return res


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which not in ("w1", "w5", "all"):
        sys.exit(f"usage: python3 tools/gpu/tp_bench.py [w1|w5|all]; got {which!r}")
    small = os.environ.get("TP_SMALL") == "1"
    configs = os.environ.get("TP_CONFIGS", "uni,tp2").split(",")
    for c in configs:
        engine_kwargs(c)  # a bad name fails before anything loads
    dev = torch.device("cpu" if small else "cuda")
    dtype = torch.float32 if small else torch.bfloat16
    out = Path(os.environ.get("OUT", ".")) / f"tp_{which}{'_small' if small else ''}.json"
    res = {
        **environment(),
        "gpus": torch.cuda.device_count(),
        "gpu_names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "configs": configs,
        "workload": __doc__.split("\n\n")[1].replace("\n", " "),
        "results": {},
    }
    peaks = DEVICE_PEAKS.get(torch.cuda.get_device_name()) if dev.type == "cuda" else None
    tmp = Path(tempfile.mkdtemp())
    for workload in ("w1", "w5") if which == "all" else (which,):
        base = W1_CONFIG if workload == "w1" else W5_CONFIG
        cfg = {**base, **(SMALL_CONFIG if small else {})}
        t0 = time.perf_counter()
        folder = random_model_folder(cfg, tmp / workload, dtype, device=None if small else "cuda")
        gc.collect()
        torch.cuda.empty_cache() if dev.type == "cuda" else None
        print(f"{workload}: random model saved in {time.perf_counter() - t0:.0f} s", flush=True)
        if workload == "w1":
            n, lo, hi, new = (8, 16, 64, 8) if small else (64, 64, 1024, 128)
        else:
            n, lo, hi, new = (4, 64, 256, 8) if small else (16, 4096, 16384, 128)
        prompts = random_prompts(n, lo, hi, cfg["vocab_size"])

        def floor_of(prompts, new, cfg=cfg):
            return w5_floor(cfg, [len(p) for p in prompts], new, peaks, dtype) if peaks else None

        runs = res["results"].setdefault(workload, {})
        for name in configs:
            t0 = time.perf_counter()
            try:
                r = run_config(name, workload, folder, prompts, new, dev, dtype, small, floor_of)
            except Exception as e:  # kept in the JSON; the next configuration still runs
                import traceback

                r = {"error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-3000:]}
            first = next(iter(runs.values()), None)
            if "check_tokens" in r and first and "check_tokens" in first:
                r["agreement_with_" + configs[0]] = agreement(r["check_tokens"], first["check_tokens"])
                r["sampled_agreement_with_" + configs[0]] = agreement(
                    r["check_sampled_tokens"], first["check_sampled_tokens"]
                )
            if "seconds" in r and first and "seconds" in first:
                r["speedup_vs_" + configs[0]] = first["seconds"] / r["seconds"]
            runs[name] = r
            brief = {
                k: r[k]
                for k in (
                    "seconds",
                    "tokens_per_s",
                    "sampled_tokens_per_s",
                    "pool_tokens",
                    "rank_peak_gpu_GB",
                )
                if k in r
            }
            print(
                workload, name, f"({time.perf_counter() - t0:.0f} s)", brief, r.get("error", ""), flush=True
            )
            out.write_text(json.dumps(res, indent=1, default=str))
        for f in folder.glob("*.safetensors"):
            f.unlink()  # the 8B model's 16 GB
    print("wrote", out, flush=True)


if __name__ == "__main__":  # the ranks are spawned: they import this file again, and must not run it
    main()
