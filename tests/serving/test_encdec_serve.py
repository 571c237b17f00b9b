"""`gpt serve` with an encoder-decoder: /v1/completions through the same continuous batching (each
prompt encoded apart, its row copied into the batch) answers what `gpt generate` does, alone or among
other requests; no prefix cache; chat, adapters and int8 are refused in one line."""

import json
import threading

import pytest

from gptcli.config import SampleConfig, ServeConfig
from gptcli.generation import Engine
from tests.conftest import assert_one_line_error, run_cli
from tests.generation.test_encdec_generate import save_tiny_encdec_checkpoint
from tests.serving.helpers import get

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
from gptcli.serving.server import Server  # noqa: E402  (needs the serve extra)

BLOCK = 32  # the tiny model's context: the encoder's, and the decoder's


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_encdec_checkpoint(tmp_path_factory.mktemp("encdec-serve") / "tiny", pos_emb="rope")


@pytest.fixture(scope="module")
def engine(checkpoint):
    """The reference: the same checkpoint through Engine.generate, apart from the server's."""
    return Engine.from_checkpoint(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def server(checkpoint):
    engine = Engine.from_checkpoint(checkpoint, device="cpu")
    config = ServeConfig(checkpoint=checkpoint, port=0, max_batch=8, prefix_cache_mb=16, quiet=True)
    server = Server(engine, config).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=30)


def engine_texts(engine, prompt, **sampling) -> list[str]:
    return [s.text for s in engine.generate(prompt, SampleConfig(**sampling)).samples]


def test_greedy_completion_equals_gpt_generate(client, checkpoint):
    answer = client.completions.create(model="tiny", prompt="Hello there", max_tokens=12, temperature=0)
    cli = run_cli("generate", "-c", str(checkpoint), "-p", "Hello there", "--max-new-tokens", "12",
                  "--temperature", "0", "--json")  # fmt: skip
    sample = json.loads(cli.stdout)["samples"][0]
    assert answer.choices[0].text == sample["text"] and answer.choices[0].finish_reason == "length"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len("Hello there"), 12)
    streamed = client.completions.create(
        model="tiny", prompt="Hello there", max_tokens=12, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == sample["text"]


def test_n_seed_and_stop(client, engine):
    sampling = dict(temperature=0.9, top_p=0.9, seed=7)
    request = dict(prompt="abc", n=3, max_tokens=10, extra_body={"top_k": 50}, **sampling)
    answer = client.completions.create(model="tiny", **request)
    expected = engine_texts(engine, "abc", num_samples=3, max_new_tokens=10, top_k=50, **sampling)
    assert [c.text for c in answer.choices] == expected and len(set(expected)) > 1
    text = engine_texts(engine, "abc", max_new_tokens=10, temperature=0)[0]
    stop = text[3:5]
    cut = client.completions.create(model="tiny", prompt="abc", max_tokens=10, temperature=0, stop=stop)
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_concurrent_prompts_of_different_lengths_answer_as_alone(client, engine):
    prompts = ["a", "a longer prompt", "mid size", "x" * 40]  # the last: longer than the context
    expected = [engine_texts(engine, p, max_new_tokens=15, temperature=0)[0] for p in prompts]
    answers: dict[int, str] = {}

    def ask(i: int) -> None:
        answer = client.completions.create(model="tiny", prompt=prompts[i], max_tokens=15, temperature=0)
        answers[i] = answer.choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [answers[i] for i in range(len(prompts))] == expected


def test_a_full_decoder_context_ends_with_length(client, engine, server):
    answer = client.completions.create(model="tiny", prompt="hi", max_tokens=50, temperature=0)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == BLOCK
    assert answer.choices[0].text == engine_texts(engine, "hi", max_new_tokens=50, temperature=0)[0]
    assert "at most 32 tokens" in answer.model_extra["context_note"]
    health = json.loads(get(server.port, "/health")[1])
    assert "no prefix cache" in health["note"] and health["prefix_cache"]["hits"] == 0


def test_chat_completions_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    error = caught.value.body
    assert "not supported for this architecture" in error["message"] and "/v1/completions" in error["message"]


def test_adapters_and_int8_are_refused_in_one_line(checkpoint):
    base = ("serve", "-c", str(checkpoint), "--port", "0")
    assert_one_line_error(run_cli(*base, "--adapter", "x=nowhere"), "encoder-decoder")
    assert_one_line_error(run_cli(*base, "--quantize", "int8"), "EncoderDecoder")


def test_jobs_admitted_together_decode_as_alone(engine):
    """Prompts of several lengths (two alike: encoded together) in one batch; one fills its context."""
    from gptcli.serving.scheduler import ChoiceDelta, Job, Scheduler

    scheduler = Scheduler(engine, max_batch=8)
    prompts, lengths = ["a", "abc", "xyz", "hello world", "y" * 40], [5, 9, 50, 7, 12]
    texts, reasons = [""] * len(prompts), [None] * len(prompts)

    def emit(i):
        def put(event):
            if isinstance(event, ChoiceDelta):
                texts[i] += event.text
                reasons[i] = event.finish_reason or reasons[i]

        return put

    for i, (prompt, n) in enumerate(zip(prompts, lengths)):
        config = SampleConfig(max_new_tokens=n, temperature=0)
        scheduler.submit(Job(engine.encode_prompt(prompt), config, emit(i)))
    while scheduler.running or not scheduler.inbox.empty() or scheduler.waiting:
        scheduler.iterate()
    expected = [
        engine.generate(p, SampleConfig(max_new_tokens=n, temperature=0)) for p, n in zip(prompts, lengths)
    ]
    assert texts == [r.samples[0].text for r in expected] and reasons == ["length"] * len(prompts)
    assert scheduler.stats.max_running == len(prompts)  # decoded together
