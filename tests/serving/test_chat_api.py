"""`gpt serve`'s POST /v1/chat/completions against a live server, called with the official `openai`
client: replies equal the engine's generation on the conversation rendered by the chat template (and,
on the model exported with `gpt export-hf`, transformers' generate after apply_chat_template),
streams equal answers, a reply ends at the template's end token unseen, and every bad request is an
OpenAI-style 400, a base model's too."""

import http.client
import json
import time

import pytest
import torch

from gptcli.chat.template import ChatTemplate, render
from gptcli.config import ModelConfig, SampleConfig, ServeConfig
from gptcli.generation import Engine
from gptcli.loading import load_checkpoint
from gptcli.models import GPT
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers import BPETokenizer
from tests.generation.test_engine import assert_greedy
from tests.serving.helpers import (
    EOT,
    IM_END,
    IM_START,
    post,
    save_tiny_chat_checkpoint,
    save_tiny_checkpoint,
    sse_events,
)

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
from gptcli.serving.server import Server  # noqa: E402  (needs the serve extra)

MAX_BATCH, CONTEXT = 8, 128
CHATML = ChatTemplate.chatml()
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]
LOG: list[str] = []


def start(checkpoint, **config) -> Server:
    engine = Engine.from_checkpoint(checkpoint, device="cpu")
    return Server(engine, ServeConfig(checkpoint=checkpoint, port=0, **config), log=LOG.append).start()


def client_of(server, api_key="none"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_chat_checkpoint(tmp_path_factory.mktemp("chat") / "tiny", block_size=CONTEXT)


@pytest.fixture(scope="module")
def server(checkpoint):
    server = start(checkpoint, max_batch=MAX_BATCH, max_body_bytes=4096)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    return client_of(server)


@pytest.fixture(scope="module")
def engine(checkpoint):
    """The reference: the same checkpoint through Engine.generate, apart from the server's."""
    return Engine.from_checkpoint(checkpoint, device="cpu")


def engine_replies(engine, messages, **sampling) -> tuple[list[str], list[str], list[int]]:
    """Engine.generate on the rendered conversation, ending where a reply ends: at end-of-text, or at
    the end token (whose text is a stop string there: the engine itself stops at end-of-text only).
    -> texts, finish reasons, tokens (the end token's included, if it ended one)."""
    ids = render(messages, CHATML, engine.tokenizer, add_generation_prompt=True).ids
    samples = engine.generate(ids, SampleConfig(stop=[CHATML.end_token], **sampling)).samples
    reasons = ["stop" if s.finish_reason == "eos" else s.finish_reason for s in samples]
    return [s.text for s in samples], reasons, [len(s.ids) for s in samples]


def chat(client, **request):
    return client.chat.completions.create(model="tiny", **request)


def streamed(client, **request) -> tuple[dict[int, str], dict[int, str]]:
    """A stream's text and finish_reason per choice, checking OpenAI's order: the role first, then
    the content, then the finish_reason with an empty delta."""
    texts, reasons = {}, {}
    for chunk in chat(client, stream=True, **request):
        assert chunk.object == "chat.completion.chunk" and chunk.id.startswith("chatcmpl-")
        for choice in chunk.choices:
            i, delta = choice.index, choice.delta
            assert i not in reasons, "nothing after the finish_reason"
            if i not in texts:
                assert (delta.role, delta.content, choice.finish_reason) == ("assistant", "", None)
                texts[i] = ""
            elif choice.finish_reason is not None:
                assert delta.content is None and delta.role is None
                reasons[i] = choice.finish_reason
            else:
                assert delta.role is None and delta.content
                texts[i] += delta.content
    return texts, reasons


def wait_for(condition, timeout=5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ---------------------------------------------------------------------------------------------


def test_greedy_equals_the_engine_on_the_rendered_conversation_and_streamed_equals_plain(client, engine):
    seen = set()
    for messages in (HELLO, TURNS):  # one runs to max tokens, one ends at <|endoftext|>
        texts, reasons, tokens = engine_replies(engine, messages, max_new_tokens=30, temperature=0)
        answer = chat(client, messages=messages, max_completion_tokens=30, temperature=0)
        assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
        assert answer.model == "tiny" and len(answer.choices) == 1
        choice = answer.choices[0]
        assert choice.message.role == "assistant" and choice.index == 0
        assert (choice.message.content, choice.finish_reason) == (texts[0], reasons[0])
        assert "<|endoftext|>" not in texts[0]
        prompt = render(messages, CHATML, engine.tokenizer, add_generation_prompt=True).ids
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(prompt), tokens[0])
        assert answer.usage.total_tokens == len(prompt) + tokens[0]
        assert streamed(client, messages=messages, max_completion_tokens=30, temperature=0) == (
            {0: texts[0]}, {0: reasons[0]}
        )  # fmt: skip
        seen.add(reasons[0])
    assert seen == {"length", "stop"}


def test_seeded_sampling_n_choices_equal_the_engine_and_the_same_seed_the_same_text(client, engine):
    sampling = dict(temperature=0.9, top_p=0.9, seed=7)
    request = dict(messages=TURNS, n=3, max_tokens=12, extra_body={"top_k": 50}, **sampling)
    answer = chat(client, **request)
    texts, _, _ = engine_replies(engine, TURNS, num_samples=3, max_new_tokens=12, top_k=50, **sampling)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert [c.message.content for c in answer.choices] == texts and len(set(texts)) > 1
    assert [c.message.content for c in chat(client, **request).choices] == texts  # the same seed
    assert streamed(client, **request)[0] == dict(enumerate(texts))
    other = chat(client, **{**request, "seed": 8})
    assert [c.message.content for c in other.choices] != texts


def test_stop_strings_end_the_reply_before_them(client):
    full = chat(client, messages=HELLO, max_tokens=40, temperature=0).choices[0].message.content
    stop = next(ch for ch in full[3:] if ch.isascii() and ch.isalnum())
    for stops in (stop, [stop, "never-there"]):
        answer = chat(client, messages=HELLO, max_tokens=40, temperature=0, stop=stops)
        assert answer.choices[0].message.content == full[: full.index(stop)]
        assert answer.choices[0].finish_reason == "stop"
        assert streamed(client, messages=HELLO, max_tokens=40, temperature=0, stop=stops) == (
            {0: full[: full.index(stop)]}, {0: "stop"}
        )  # fmt: skip


def test_usage_in_a_stream_only_when_asked_and_the_token_limits(client, engine):
    chunks = list(chat(client, messages=HELLO, max_completion_tokens=4, temperature=0, stream=True,
                       stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert chunks[-2].choices[0].finish_reason == "length" and all(c.usage is None for c in chunks[:-1])
    plain = list(chat(client, messages=HELLO, max_completion_tokens=4, temperature=0, stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "length"
    for limits, tokens in (({"max_tokens": 7}, 7), ({"max_completion_tokens": 5, "max_tokens": 9}, 5)):
        answer = chat(client, messages=HELLO, temperature=0, **limits)
        assert answer.usage.completion_tokens == tokens and answer.choices[0].finish_reason == "length"
    # without a limit: what the context has left after the prompt (no context_note: it fits)
    answer = chat(client, messages=HELLO, temperature=0)
    prompt = len(render(HELLO, CHATML, engine.tokenizer, add_generation_prompt=True).ids)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == CONTEXT - prompt
    assert "context_note" not in (answer.model_extra or {})


def test_text_parts_are_the_text_and_developer_is_system(client):
    def reply(messages):
        return chat(client, messages=messages, max_tokens=20, temperature=0).choices[0].message.content

    parts = [
        {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]}
    ]
    assert reply(parts) == reply([{"role": "user", "content": "Hello\nthere"}])  # joined by newlines
    system = [{**HELLO[0], "content": [{"type": "text", "text": "Be brief."}]}, HELLO[1]]
    assert reply(system) == reply(HELLO) == reply([{**HELLO[0], "role": "developer"}, HELLO[1]])
    assert reply(HELLO) != reply(HELLO[1:])  # (the system message counts)


def test_a_long_conversation_slides_and_says_so(client):
    long = [{"role": "user", "content": "x" * (CONTEXT + 10)}]
    answer = chat(client, messages=long, max_tokens=10, temperature=0)
    assert answer.usage.completion_tokens == 10 and "context of 128" in answer.model_extra["context_note"]


@pytest.fixture
def slow(server, monkeypatch):
    """A slower model: every round of the scheduler takes at least 10 ms more."""
    original = server.scheduler.iterate

    def iterate(wait=0.0):
        time.sleep(0.01)
        original(wait)

    monkeypatch.setattr(server.scheduler, "iterate", iterate)


def test_chat_and_completions_share_the_batch(client, server, slow):
    server.scheduler.stats.max_running = 0
    stream = chat(client, messages=HELLO, max_tokens=60, temperature=0, stream=True)
    next(iter(stream))
    completion = client.completions.create(model="tiny", prompt="hello", max_tokens=20, temperature=0)
    assert completion.usage.completion_tokens <= 20
    assert len("".join(c.choices[0].delta.content or "" for c in stream if c.choices)) > 0
    assert server.scheduler.stats.max_running == 2  # one batch, one row each
    assert any(line.startswith("chat completion: 2 message(s) x 1, ") for line in LOG), LOG


# ---------------------------------------------------------------------------------------------
# the end token


@pytest.fixture(scope="module")
def ending(checkpoint, engine, tmp_path_factory):
    """The tiny model with <|im_end|>'s output row a little above that of the token its greedy reply
    to HELLO has 4th: the reply ends there, at the template's end token."""
    model, tokenizer, config = load_checkpoint(checkpoint)
    ids = render(HELLO, CHATML, tokenizer, add_generation_prompt=True).ids
    fourth = engine.generate(ids, SampleConfig(max_new_tokens=4, temperature=0)).samples[0].ids[3]
    with torch.no_grad():
        model.lm_head.weight[IM_END] = 1.01 * model.lm_head.weight[fourth]
    info = {"step": 1, "chat_template": CHATML.to_json()}
    saved = ckpt.save_checkpoint(
        tmp_path_factory.mktemp("ending") / "tiny", model, model.config, tokenizer, info
    )
    server = start(saved, quiet=True)
    yield client_of(server), Engine.from_checkpoint(saved, device="cpu")
    server.stop()


def test_a_reply_ends_at_the_end_token_which_is_never_shown(ending):
    client, engine = ending
    answer = chat(client, messages=HELLO, max_tokens=30, temperature=0)
    text, reason = answer.choices[0].message.content, answer.choices[0].finish_reason
    assert reason == "stop" and 1 <= answer.usage.completion_tokens <= 3  # the end token is not counted
    assert "<|im_end|>" not in text and "im_end" not in text
    assert engine_replies(engine, HELLO, max_new_tokens=30, temperature=0)[:2] == ([text], ["stop"])
    assert streamed(client, messages=HELLO, max_tokens=30, temperature=0) == ({0: text}, {0: "stop"})


# ---------------------------------------------------------------------------------------------
# bad requests

USER = [{"role": "user", "content": "hi"}]
BAD = [
    ({"messages": []}, "messages", "empty"),
    ({"messages": "hi"}, "messages", "array"),
    ({"messages": ["hi"]}, "messages", "message 0 is not an object"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages", "role 'tool'"),
    ({"messages": [{"content": "x"}]}, "messages", "role None"),
    ({"messages": [{"role": "user"}]}, "messages", "no content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages", "string or a list of text parts"),
    ({"messages": [{"role": "user", "content": None}]}, "messages", "string or a list of text parts"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "messages",
        "'image_url'",
    ),  # fmt: skip
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages", "no string 'text'"),
    ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages", "'name' is not supported"),
    (
        {"messages": [*USER, {"role": "assistant", "content": "yo"}]},
        "messages",
        "last message is the assistant's",
    ),
    ({"messages": USER, "bogus": 1}, "bogus", "unknown field"),
    ({"messages": USER, "max_completion_tokens": 0}, "max_completion_tokens", "greater than"),
    ({"messages": USER, "max_completion_tokens": 4097}, "max_completion_tokens", "at most 4096"),
    ({"messages": USER, "max_tokens": 4097}, "max_tokens", "at most 4096"),
    ({"messages": USER, "temperature": 2.5}, "temperature", "less than"),
    ({"messages": USER, "n": MAX_BATCH + 1}, "n", "at most 8"),
    ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"messages": USER, "logprobs": True}, "logprobs", "not supported"),
    ({"messages": USER, "presence_penalty": 0.5}, "presence_penalty", "not supported"),
    (
        {"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}]},
        "tools",
        "not supported",
    ),
    ({"messages": USER, "response_format": {"type": "json_object"}}, "response_format", "not supported"),
]


@pytest.mark.parametrize("body,param,fragment", BAD, ids=[str(b[0])[:50] for b in BAD])
def test_bad_requests_get_an_openai_style_400(server, body, param, fragment):
    status, answer = post(server.port, "/v1/chat/completions", {"model": "tiny", **body})
    assert status == 400, answer
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and fragment in error["message"], error


def test_openai_neutral_fields_are_accepted_and_the_client_sees_errors(client):
    neutral = dict(user="me", presence_penalty=0, frequency_penalty=0, logit_bias={}, logprobs=False,
                   response_format={"type": "text"}, store=False)  # fmt: skip
    assert chat(client, messages=USER, max_tokens=2, **neutral).choices[0].message.role == "assistant"
    with pytest.raises(openai.BadRequestError, match="image_url") as caught:
        chat(
            client, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
        )
    assert caught.value.status_code == 400 and caught.value.body["param"] == "messages"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=USER)


def test_a_base_model_has_no_chat_template_and_the_key_guards_the_route(tmp_path):
    base = save_tiny_checkpoint(tmp_path / "base")
    server = start(base, quiet=True, api_key="sk-test")
    try:
        with pytest.raises(openai.AuthenticationError):
            client_of(server, "wrong").chat.completions.create(model="base", messages=USER)
        with pytest.raises(openai.BadRequestError) as caught:
            client_of(server, "sk-test").chat.completions.create(model="base", messages=USER)
        message = caught.value.body["message"]
        assert "no chat template" in message and "gpt finetune" in message and "/v1/completions" in message
        answer = client_of(server, "sk-test").completions.create(model="base", prompt="hi", max_tokens=2)
        assert answer.choices  # completions as before
    finally:
        server.stop()


def test_a_client_that_disconnects_mid_stream_frees_its_slots(server, client, slow):
    stats = server.scheduler.stats
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    body = {"model": "tiny", "messages": USER, "max_tokens": 100, "n": 2, "stream": True}
    connection.request("POST", "/v1/chat/completions", body=json.dumps(body),
                       headers={"Content-Type": "application/json"})  # fmt: skip
    response = connection.getresponse()
    assert response.status == 200
    next(sse_events(response))  # the stream runs ...
    assert wait_for(lambda: stats.running == 2)
    connection.sock.shutdown(2)  # ... and the client goes away
    connection.close()
    assert wait_for(lambda: stats.running == 0)
    assert chat(client, messages=USER, max_tokens=3).usage.completion_tokens <= 3


# ---------------------------------------------------------------------------------------------
# transformers on the exported model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tied (so GPT-2-shaped) chat model that writes ASCII only (the output rows of the other bytes
    and of <|endoftext|> and <|im_start|> are zero; prompts are ASCII), so a reply's text gives back
    its ids; exported with `gpt export-hf`. Its blocks' weights are scaled up: a random tied model
    otherwise repeats one token."""
    from gptcli.hf_gpt2 import export_hf_gpt2

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    tokenizer = BPETokenizer(
        [], special_tokens={"<|endoftext|>": EOT, "<|im_start|>": IM_START, "<|im_end|>": IM_END}
    )
    config = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=CONTEXT, n_layer=2, n_head=2, n_embd=32,
                         dropout=0.0)  # fmt: skip
    model = GPT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("c_attn.weight", "c_fc.weight", "c_proj.weight")):
                p.mul_(10)
        wte = model.transformer.wte.weight
        wte[:10], wte[11:32], wte[127:IM_END] = 0, 0, 0
    info = {"step": 1, "chat_template": CHATML.to_json()}
    saved = ckpt.save_checkpoint(root / "tiny", model, config, tokenizer, info)
    export_hf_gpt2(saved, root / "export")
    server = start(saved, quiet=True)
    yield saved, root / "export", client_of(server)
    server.stop()


def test_the_greedy_reply_equals_transformers_on_the_export_with_apply_chat_template(exported):
    transformers = pytest.importorskip("transformers")
    saved, folder, client = exported
    model, tokenizer, _ = load_checkpoint(saved)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    for messages in (HELLO, TURNS):
        prompt = list(
            hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        )
        assert prompt == render(messages, CHATML, tokenizer, add_generation_prompt=True).ids
        x = torch.tensor([prompt])
        theirs = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=40, do_sample=False)
        theirs = theirs[0, len(prompt) :].tolist()  # stopped by generation_config.json at <|im_end|>
        answer = chat(client, messages=messages, max_tokens=40, temperature=0).choices[0]
        ours = list(answer.message.content.encode("ascii")) + (
            [IM_END] if answer.finish_reason == "stop" else []
        )
        assert len(set(ours)) > 3  # it says varied things
        if theirs != ours:  # only where two logits tie: each is greedy decoding up to there
            assert_greedy(theirs, model, prompt)
            assert_greedy(ours, model, prompt)
