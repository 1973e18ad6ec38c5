"""Online serving benchmark: streaming completions arriving as a Poisson process at an OpenAI-compatible
server, measured at the client through the `openai` client's streaming API: TTFT, TPOT and ITL (p50/p99),
request and token throughput. Works against any OpenAI-compatible server (paged-flex serve, vLLM, transformers
serve).

    python tools/serve_bench.py --base-url http://127.0.0.1:8000/v1 --model NAME \
        --num-requests 64 --rate 4 --input-words 128 --output-len 128 --out serve_bench.json

TTFT: request sent -> first text. TPOT: (last text - first text) / (tokens - 1), per request. ITL: time
between chunks with text (a server that sends several tokens per chunk shows fewer, longer gaps). Tokens are
the server's usage count (stream_options.include_usage) where it reports one, else chunks with text.
"""

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import openai

WORDS = "the cache holds pages of keys and values for every layer while requests come and go".split()


@dataclass(frozen=True)
class Config:
    base_url: str
    model: str
    num_requests: int
    rate: float  # requests per second (Poisson arrivals); 0: all at once
    input_words: int
    output_len: int
    ignore_eos: bool
    seed: int


@dataclass(frozen=True)
class Sample:
    "One request as the client saw it."

    ttft: float
    tpot: float | None
    itl: list[float]
    tokens: int
    latency: float


async def one(client, cfg: Config, prompt: str) -> Sample:
    extra = {"ignore_eos": True} if cfg.ignore_eos else {}
    t0 = time.perf_counter()
    stream = await client.completions.create(
        model=cfg.model,
        prompt=prompt,
        max_tokens=cfg.output_len,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
    times, tokens = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            times.append(time.perf_counter())
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    tokens = tokens if tokens is not None else len(times)
    if not times:
        raise RuntimeError(f"a request returned no text ({tokens} tokens)")
    tpot = (times[-1] - times[0]) / (tokens - 1) if tokens > 1 else None
    return Sample(times[0] - t0, tpot, [b - a for a, b in zip(times, times[1:])], tokens, end - t0)


def percentiles(xs: list[float]) -> dict:
    "p50, p99 and mean in milliseconds."
    if not xs:
        return {}
    q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else [xs[0]] * 99
    return {"p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3, "mean_ms": statistics.fmean(xs) * 1e3}


async def run(cfg: Config) -> dict:
    rng = random.Random(cfg.seed)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(cfg.input_words)) for _ in range(cfg.num_requests)]
    async with openai.AsyncOpenAI(base_url=cfg.base_url, api_key="-", max_retries=0, timeout=600) as client:
        t0 = time.perf_counter()
        tasks = []
        for p in prompts:
            tasks.append(asyncio.create_task(one(client, cfg, p)))
            if cfg.rate > 0:
                await asyncio.sleep(rng.expovariate(cfg.rate))
        samples = await asyncio.gather(*tasks)
        secs = time.perf_counter() - t0
    tokens = sum(s.tokens for s in samples)
    return {
        "config": asdict(cfg),
        "duration_s": secs,
        "requests_per_s": len(samples) / secs,
        "output_tokens_per_s": tokens / secs,
        "output_tokens": tokens,
        "ttft": percentiles([s.ttft for s in samples]),
        "tpot": percentiles([s.tpot for s in samples if s.tpot is not None]),
        "itl": percentiles([x for s in samples for x in s.itl]),
        "latency": percentiles([s.latency for s in samples]),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--model", required=True)
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--rate", type=float, default=4.0, help="requests per second; 0 sends them all at once")
    p.add_argument("--input-words", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--no-ignore-eos", action="store_true", help="for servers that refuse vLLM's ignore_eos")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    a = p.parse_args(argv)
    cfg = Config(
        a.base_url, a.model, a.num_requests, a.rate, a.input_words, a.output_len, not a.no_ignore_eos, a.seed
    )
    res = asyncio.run(run(cfg))
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
