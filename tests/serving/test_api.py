"""`gpt serve`'s API against a live server (uvicorn in a thread, a free loopback port), called with the
official `openai` client and with raw HTTP: answers equal the engine's, streams equal answers,
concurrent requests equal lone ones, and every bad request is an OpenAI-style error."""

import http.client
import json
import threading
import time

import pytest

from gptcli.config import SampleConfig, ServeConfig
from gptcli.generation import Engine
from tests.serving.helpers import get, post, sse_events

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
from gptcli.serving.server import Server  # noqa: E402  (needs the serve extra)

MAX_BATCH, BODY_LIMIT = 8, 4096
QUIET_LOG: list[str] = []  # what the module's server (quiet) logged: nothing


@pytest.fixture(scope="module")
def server(checkpoint):
    engine = Engine.from_checkpoint(checkpoint, device="cpu")
    config = ServeConfig(
        checkpoint=checkpoint, port=0, max_batch=MAX_BATCH, max_body_bytes=BODY_LIMIT, quiet=True
    )
    server = Server(engine, config, log=QUIET_LOG.append).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def engine(checkpoint):
    """The reference: the same checkpoint through Engine.generate, apart from the server's."""
    return Engine.from_checkpoint(checkpoint, device="cpu")


@pytest.fixture
def slow(server, monkeypatch):
    """A slower model: every round of the scheduler takes at least 10 ms more."""
    original = server.scheduler.iterate

    def iterate(wait=0.0):
        time.sleep(0.01)
        original(wait)

    monkeypatch.setattr(server.scheduler, "iterate", iterate)


def engine_texts(engine, prompt, **sampling):
    result = engine.generate(prompt, SampleConfig(**sampling))
    reasons = ["stop" if s.finish_reason == "eos" else s.finish_reason for s in result.samples]
    return [s.text for s in result.samples], reasons, sum(len(s.ids) for s in result.samples)


def streamed(client, **request) -> dict[int, str]:
    texts = {}
    for chunk in client.completions.create(model="tiny", stream=True, **request):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    return texts


def wait_for(condition, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ---------------------------------------------------------------------------------------------


def test_models_health_and_the_page(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    status, body = get(server.port, "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, page = get(server.port, "/")
    page = page.decode()
    assert status == 200 and 'id="prompt"' in page and "AbortController" in page and "getReader" in page
    assert "http://" not in page and "https://" not in page  # self-contained: nothing from another host


def test_greedy_equals_the_engine_and_streamed_equals_plain(client, engine):
    seen = set()
    for prompt in ("Once upon", "To be"):  # one runs to max_tokens, one ends at <|endoftext|>
        texts, reasons, tokens = engine_texts(engine, prompt, max_new_tokens=40, temperature=0)
        answer = client.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=0)
        assert [c.text for c in answer.choices] == texts and [
            c.finish_reason for c in answer.choices
        ] == reasons
        assert answer.object == "text_completion" and answer.model == "tiny"
        usage = answer.usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (len(prompt.encode()), tokens)
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        assert streamed(client, prompt=prompt, max_tokens=40, temperature=0) == {0: texts[0]}
        seen.update(reasons)
    assert seen == {"length", "stop"}


def test_n_seed_and_list_prompts(client, engine):
    sampling = dict(temperature=0.9, top_p=0.9, seed=7)
    prompts = ["To be", "or not"]
    request = dict(prompt=prompts, n=3, max_tokens=12, extra_body={"top_k": 50}, **sampling)
    answer = client.completions.create(model="tiny", **request)
    expected, tokens = [], 0
    for prompt in prompts:
        texts, _, count = engine_texts(engine, prompt, num_samples=3, max_new_tokens=12, top_k=50, **sampling)
        expected, tokens = expected + texts, tokens + count
    assert [c.index for c in answer.choices] == list(range(6))
    assert [c.text for c in answer.choices] == expected  # choice i: prompt i // n, as OpenAI numbers them
    assert len(set(expected[:3])) > 1  # the n choices differ
    assert answer.usage.prompt_tokens == sum(len(p.encode()) for p in prompts)
    assert answer.usage.completion_tokens == tokens
    again = client.completions.create(model="tiny", **request)
    assert [c.text for c in again.choices] == expected  # the same seed, the same texts
    assert streamed(client, **request) == dict(enumerate(expected))


def test_stop_strings_end_the_text_before_them(client):
    full = client.completions.create(
        model="tiny", prompt="abc", max_tokens=40, temperature=0, extra_body={"ignore_eos": True}
    )
    text = full.choices[0].text
    stop = next(ch for ch in text[3:] if ch.isascii() and ch.isalnum())
    for stops in (stop, [stop, "never-there"]):
        answer = client.completions.create(model="tiny", prompt="abc", max_tokens=40, temperature=0, stop=stops,
                                           extra_body={"ignore_eos": True})  # fmt: skip
        assert answer.choices[0].text == text[: text.index(stop)]
        assert answer.choices[0].finish_reason == "stop"
        assert streamed(
            client, prompt="abc", max_tokens=40, temperature=0, stop=stops, extra_body={"ignore_eos": True}
        ) == {0: text[: text.index(stop)]}


def test_a_file_prompt_is_text_and_echo_and_usage_in_a_stream(client, server):
    prompt = "FILE:/etc/hostname"
    answer = client.completions.create(model="tiny", prompt=prompt, max_tokens=3, echo=True, seed=1)
    assert answer.usage.prompt_tokens == len(prompt.encode())  # the text itself, never the file
    assert answer.choices[0].text.startswith(prompt)
    chunks = list(client.completions.create(model="tiny", prompt="x", max_tokens=4, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert chunks[-2].choices[0].finish_reason == "length"


def test_past_the_context_the_window_slides_as_in_generate_and_the_answer_says_so(client, engine):
    """Context 64: max_tokens past it, and a prompt longer than it, are answered (the scheduler slides
    each row's window as the engine does), with the note gpt generate prints, in the same words."""
    for prompt, max_tokens in (("Once upon", 100), ("x" * 100, 20)):
        request = dict(prompt=prompt, max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True})
        answer = client.completions.create(model="tiny", **request)
        run = engine.start(prompt, SampleConfig(max_new_tokens=max_tokens, temperature=0, ignore_eos=True))
        texts, _, _ = engine_texts(engine, prompt, max_new_tokens=max_tokens, temperature=0, ignore_eos=True)
        assert [c.text for c in answer.choices] == texts
        assert answer.usage.completion_tokens == max_tokens
        assert run.context_note is not None and "context of 64" in run.context_note
        assert answer.model_extra["context_note"] == run.context_note
        chunks = list(client.completions.create(model="tiny", stream=True, **request))
        notes = [chunk.model_extra.get("context_note") for chunk in chunks]
        assert notes[0] == run.context_note and not any(notes[1:])  # said once, in the first chunk
        assert "".join(c.text for chunk in chunks for c in chunk.choices) == texts[0]
    within = client.completions.create(model="tiny", prompt="Once upon", max_tokens=10, temperature=0)
    assert "context_note" not in (within.model_extra or {})  # nothing to say: OpenAI's shape as it is


def test_concurrent_requests_each_get_what_they_get_alone(client, server):
    requests = [
        dict(
            prompt=f"request {i} says",
            max_tokens=20 + 8 * i,
            temperature=0.0 if i % 2 else 0.8,
            seed=i,
            n=1 + i % 3,
        )
        for i in range(6)
    ]

    def call(request, stream):
        if stream:
            return streamed(client, **request)
        return {c.index: c.text for c in client.completions.create(model="tiny", **request).choices}

    alone = [call(r, i % 2 == 0) for i, r in enumerate(requests)]
    server.scheduler.stats.max_running = 0
    together: list = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def worker(i):
        start.wait()
        together[i] = call(requests[i], i % 2 == 0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    assert server.scheduler.stats.max_running >= 3  # the batch grew ...
    assert wait_for(lambda: server.scheduler.stats.running == 0)  # ... and emptied


BAD = [
    (b'{"model": "tiny", "prompt": ', None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),
    ({"prompt": "x", "bogus": 1}, "bogus", "unknown field"),
    ({"prompt": 5}, "prompt", "string or a list of strings"),
    ({"prompt": ["a", 2]}, "prompt", "string or a list of strings"),
    ({"prompt": []}, "prompt", "empty"),
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens", "integer"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens", "greater than"),
    ({"prompt": "x", "max_tokens": 4097}, "max_tokens", "at most 4096"),  # --max-tokens-limit
    ({"prompt": "x", "temperature": 2.5}, "temperature", "less than"),
    ({"prompt": "x", "temperature": "hot"}, "temperature", "number"),
    ({"prompt": "x", "top_p": 0}, "top_p", "greater than"),
    ({"prompt": "x", "top_k": 0}, "top_k", "greater than"),
    ({"prompt": "x", "n": 0}, "n", "greater than"),
    ({"prompt": "x", "n": MAX_BATCH + 1}, "n", "at most 8"),
    ({"prompt": "x", "stop": [""]}, "stop", "empty"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"prompt": "x", "stream": "yes"}, "stream", "boolean"),
    ({"prompt": "x", "seed": -1}, "seed", "greater than"),
    ({"prompt": "x", "logprobs": 2}, "logprobs", "not supported"),
    ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty", "not supported"),
]


@pytest.mark.parametrize("body,param,fragment", BAD, ids=[str(b[0])[:40] for b in BAD])
def test_bad_requests_get_an_openai_style_400(server, body, param, fragment):
    if isinstance(body, dict):
        body = {"model": "tiny", **body}
    status, answer = post(server.port, "/v1/completions", body)
    assert status == 400, answer
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and fragment in error["message"], error


def test_unknown_model_route_and_method_and_the_client_sees_errors(server, client):
    status, answer = post(server.port, "/v1/completions", {"model": "other", "prompt": "x"})
    assert (
        status == 404 and answer["error"]["code"] == "model_not_found" and answer["error"]["param"] == "model"
    )
    status, body = get(server.port, "/v1/nothing")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    status, body = get(server.port, "/v1/completions")
    assert status == 405 and "error" in json.loads(body)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt="x", temperature=3)
    assert caught.value.status_code == 400 and caught.value.body["param"] == "temperature"
    missing = {"model": "tiny"}  # what the openai client sends at least: model and prompt
    assert post(server.port, "/v1/completions", missing)[1]["error"]["param"] == "prompt"


def test_a_body_over_the_limit_is_a_413(server):
    big = {"model": "tiny", "prompt": "x" * BODY_LIMIT}
    status, answer = post(server.port, "/v1/completions", big)
    assert status == 413 and answer["error"]["code"] == "request_too_large"
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)  # no Content-Length
    chunks = (json.dumps(big)[i : i + 1000].encode() for i in range(0, BODY_LIMIT + 100, 1000))
    connection.request("POST", "/v1/completions", body=chunks, encode_chunked=True,
                       headers={"Content-Type": "application/json"})  # fmt: skip
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "request_too_large"
    connection.close()


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server, client, slow):
    stats = server.scheduler.stats
    before = stats.tokens
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    body = {"model": "tiny", "prompt": "bye", "max_tokens": 64, "n": 2, "stream": True, "ignore_eos": True}
    connection.request(
        "POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    assert response.status == 200
    next(sse_events(response))  # the stream runs ...
    assert wait_for(lambda: stats.running == 2, timeout=5)
    connection.sock.shutdown(2)  # ... and the client goes away
    connection.close()
    assert wait_for(lambda: stats.running == 0, timeout=5)
    assert stats.tokens - before < 2 * 64  # it left early: not every token was generated
    answer = client.completions.create(model="tiny", prompt="hello", max_tokens=5, temperature=0)
    assert answer.usage.completion_tokens <= 5 and answer.choices[0].finish_reason in ("length", "stop")


def test_a_request_that_fails_fails_alone(server, client, slow):
    """1/temperature overflows: that request's draw fails in the scheduler, its neighbour goes on."""
    results = {}

    def good():
        results["good"] = client.completions.create(model="tiny", prompt="fine", max_tokens=30, temperature=0)

    neighbour = threading.Thread(target=good)
    neighbour.start()
    with pytest.raises(openai.InternalServerError, match="generation failed"):
        client.completions.create(model="tiny", prompt="boom", max_tokens=30, temperature=1e-40)
    with pytest.raises(openai.APIError, match="generation failed"):
        list(
            client.completions.create(
                model="tiny", prompt="boom", max_tokens=30, temperature=1e-40, stream=True
            )
        )
    neighbour.join()
    assert results["good"].usage.completion_tokens > 0
    assert client.completions.create(model="tiny", prompt="after", max_tokens=3).choices


def test_the_api_key_guards_every_route_and_requests_are_logged(checkpoint):
    lines: list[str] = []
    engine = Engine.from_checkpoint(checkpoint, device="cpu")
    keyed = Server(
        engine, ServeConfig(checkpoint=checkpoint, port=0, api_key="sk-test"), log=lines.append
    ).start()
    try:
        p = keyed.port
        for path in ("/", "/health", "/v1/models", "/nowhere"):
            status, body = get(p, path)
            assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key", path
        status, body = post(
            p, "/v1/completions", {"model": "tiny", "prompt": "x"}, {"Authorization": "Bearer wrong"}
        )
        assert status == 401 and "incorrect API key" in body["error"]["message"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=keyed.url + "/v1", api_key="sk-test", max_retries=0)
        assert good.completions.create(model="tiny", prompt="hi", max_tokens=3).usage.completion_tokens <= 3
        assert get(p, "/", {"Authorization": "Bearer sk-test"})[0] == 200
    finally:
        keyed.stop()
    assert any(
        line.startswith("completion: 1 prompt(s) x 1, 2 prompt + ") and " s" in line for line in lines
    ), lines
    assert QUIET_LOG == []  # quiet: the requests of every test above, not a line
