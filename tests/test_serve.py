"""`paged-flex serve` on 127.0.0.1, driven by the real `openai` client (CPU; SmolLM2 when installed, else a
tiny random LLaMA with a tokenizer): greedy completions equal `LLM.generate`, chat streams, 16 concurrent
streaming clients are served in one batch, a disconnect frees its pages, bad requests get 400, a full server
answers 429, and shutdown lets the request in flight finish."""

import argparse
import asyncio
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install paged_flex[serve]")
pytest.importorskip("uvicorn", reason="needs the serve extra: pip install paged_flex[serve]")
openai = pytest.importorskip("openai", reason="needs the openai client (the dev extra)")
import httpx  # noqa: E402 (openai's HTTP client)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from paged_flex.assets import smollm2_available, smollm2_folder  # noqa: E402
from paged_flex.engine import LLM, SamplingParams  # noqa: E402
from paged_flex.fms import save_random_llama  # noqa: E402
from paged_flex.serve import add_serve_parser, make_server  # noqa: E402

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
KV = str(64 * 2**20)


def start(argv: list[str]):
    "`paged-flex serve` with `argv` in a thread on a free port: (uvicorn server, thread, base url)."
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", *argv, "--port", "0", "--device", "cpu", "--log-level", "warning"])
    server = make_server(args)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}/v1"


def stop(server, thread) -> None:
    "Shut down as on SIGTERM, and check that the HTTP and engine threads ended."
    server.should_exit = True
    thread.join(60)
    assert not thread.is_alive()
    assert not serving(server).engine.is_alive()


def serving(server):
    "The `OpenAIServing` of a running server."
    return server.config.app.state.serving


def wait_until(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    "A model folder and the flags it needs: SmolLM2 (it has a chat template), or a random LLaMA with ChatML."
    if smollm2_available():
        return str(smollm2_folder()), []
    return str(save_random_llama(tmp_path_factory.mktemp("llama"), tokenizer=True)), [
        "--chat-template",
        CHATML,
    ]


@pytest.fixture(scope="module")
def served(model):
    folder, flags = model
    argv = [folder, *flags, "--max-num-seqs", "16", "--kv-cache-memory", KV, "--num-scheduler-steps", "4"]
    server, thread, url = start(argv)
    yield server, url, openai.OpenAI(base_url=url, api_key="-", max_retries=0)
    stop(server, thread)


@pytest.fixture(scope="module")
def llm(model):
    return LLM(model[0], device="cpu", max_num_seqs=16, kv_cache_memory=int(KV))


def test_models_and_health(served, model):
    server, url, client = served
    (card,) = client.models.list().data
    assert card.id == model[0] and card.max_model_len == serving(server).max_model_len
    assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200


def test_greedy_completions_equal_generate(served, llm, model):
    _, _, client = served
    prompts = ["The capital of France is", "Once upon a time", "def add(a, b):"]
    want = llm.generate(prompts, SamplingParams(max_tokens=8, temperature=0), use_tqdm=False)
    out = client.completions.create(model=model[0], prompt=prompts, max_tokens=8, temperature=0)
    got = sorted(out.choices, key=lambda c: c.index)
    assert [c.text for c in got] == [o.outputs[0].text for o in want]
    assert [c.finish_reason for c in got] == [o.outputs[0].finish_reason for o in want]
    assert out.usage.completion_tokens == sum(len(o.outputs[0].token_ids) for o in want)
    ids = want[1].prompt_token_ids  # the prompt as token ids gives the same text
    out = client.completions.create(model=model[0], prompt=ids, max_tokens=8, temperature=0)
    assert out.choices[0].text == want[1].outputs[0].text


def test_streaming_chat(served, llm, model):
    _, _, client = served
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    template = None if smollm2_available() else CHATML
    text = llm.tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    ids = llm.tokenizer(text, add_special_tokens=False)["input_ids"]
    (want,) = llm.generate([ids], SamplingParams(max_tokens=12, temperature=0), use_tqdm=False)
    chunks = list(
        client.chat.completions.create(
            model=model[0],
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.outputs[0].text
    assert chunks[-2].choices[0].finish_reason == want.outputs[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.outputs[0].token_ids)
    assert chunks[-1].usage.prompt_tokens == len(ids)


def test_16_concurrent_streams_in_one_batch(served, llm, model):
    server, url, _ = served
    prompts = [f"Here is a list of {i + 2} fruits:" for i in range(16)]
    sp = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    want = [o.outputs[0].text for o in llm.generate(prompts, sp, use_tqdm=False)]
    engine = serving(server).engine.engine
    engine.reset_stats()

    async def one(client, prompt):
        stream = await client.completions.create(
            model=model[0],
            prompt=prompt,
            max_tokens=8,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        return "".join([c.choices[0].text async for c in stream])

    async def all_of_them():
        async with openai.AsyncOpenAI(base_url=url, api_key="-", max_retries=0) as client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    assert asyncio.run(all_of_them()) == want
    assert engine.stats.peak_running > 1  # they ran together, not one after another


def metrics(url: str) -> dict:
    text = httpx.get(url.removesuffix("/v1") + "/metrics").text
    return {
        s.name + str(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_disconnect_frees_pages(served, model):
    server, url, client = served
    engine, m = serving(server).engine.engine, serving(server).engine.metrics
    aborted, tokens = m.finished["abort"], m.generation_tokens
    stream = client.completions.create(
        model=model[0],
        prompt="Once upon a time",
        max_tokens=300,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = iter(stream)
    next(chunks)
    next(chunks)
    assert engine.cache.allocator.num_used > 0  # it runs, holding pages
    stream.close()  # the client hangs up
    wait_until(lambda: m.finished["abort"] == aborted + 1 and not engine.has_unfinished_requests())
    assert engine.cache.allocator.num_used == 0
    assert m.generation_tokens - tokens < 300  # it stopped early
    seen = metrics(url)
    assert seen["paged_flex:kv_pages_used[]"] == 0 and seen["paged_flex:num_requests_running[]"] == 0
    assert seen["paged_flex:request_success_total[('finished_reason', 'abort')]"] >= 1
    assert seen["paged_flex:time_to_first_token_seconds_count[]"] >= 1


def test_bad_requests_get_400(served, model):
    server, url, client = served
    vocab = serving(server).engine.engine.vocab_size
    name = model[0]
    refused = [
        (lambda: client.completions.create(model=name, prompt=[5, vocab]), f"token id {vocab} is outside"),
        (lambda: client.completions.create(model=name, prompt=[5, -1]), "token id -1 is outside"),
        (
            lambda: client.completions.create(model=name, prompt="x", logit_bias={"5": 10}),
            "'logit_bias' is not",
        ),
        (
            lambda: client.completions.create(model=name, prompt="x", max_tokens=10**6),
            "maximum context length",
        ),
        (lambda: client.completions.create(model=name, prompt="x", temperature=-1), "temperature must be"),
        (
            lambda: client.chat.completions.create(model=name, messages=[{"role": "robot", "content": "x"}]),
            "role",
        ),
    ]
    for call, message in refused:
        with pytest.raises(openai.BadRequestError, match=message):
            call()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-5", prompt="x")
    r = httpx.post(url + "/completions", content=b"{not json")
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
    assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200
    assert not serving(server).engine.engine.has_unfinished_requests()


def test_full_server_429_and_graceful_shutdown(tmp_path):
    folder = str(save_random_llama(tmp_path, tokenizer=True))
    flags = ["--max-num-seqs", "1", "--max-queued-requests", "0", "--kv-cache-memory", str(2**20)]
    server, thread, url = start([folder, *flags, "--num-scheduler-steps", "1"])
    engine = serving(server).engine.engine
    try:
        client = openai.OpenAI(base_url=url, api_key="-", max_retries=0)
        stream = client.completions.create(
            model=folder, prompt=[5, 6], max_tokens=400, stream=True, extra_body={"ignore_eos": True}
        )
        chunks = iter(stream)
        next(chunks)
        with pytest.raises(openai.RateLimitError, match="the server is full"):
            client.completions.create(model=folder, prompt=[7], max_tokens=2)
    finally:
        server.should_exit = True  # as on SIGTERM, with the first request in flight
    assert engine.get_num_unfinished_requests() == 1
    rest = list(chunks)
    assert rest[-1].choices[0].finish_reason == "length"  # it finished: the shutdown waited for it
    thread.join(60)
    assert not thread.is_alive() and not serving(server).engine.is_alive()
    assert engine.cache.allocator.num_used == 0
