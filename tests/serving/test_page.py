"""The playground in a real headless browser (Debian's chromium driven by Playwright, no browser
download): type a prompt, Generate, see the text stream in, Stop it; a greedy run shows what the API says.
The chat tab: a system prompt and a message, the reply streams in, a second turn, Stop, Clear; each
greedy reply is what the API answers to the conversation so far; a base model's chat tab says why not."""

import re
import time
from pathlib import Path

import pytest

from gptcli.config import ServeConfig
from gptcli.generation import Engine
from tests.serving.helpers import post, save_tiny_chat_checkpoint, save_tiny_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
pytest.importorskip("fastapi")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser test needs playwright (pip install playwright)"
)
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="the browser test needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)
from gptcli.serving.server import Server  # noqa: E402  (needs the serve extra)


def slow_server(checkpoint, **config) -> Server:
    """A server whose scheduler takes 20 ms more a round: a stream lasts long enough to be seen and stopped."""
    server = Server(
        Engine.from_checkpoint(checkpoint, device="cpu"),
        ServeConfig(checkpoint=checkpoint, port=0, quiet=True, **config),
    )
    original = server.scheduler.iterate

    def slow(wait=0.0):
        time.sleep(0.02)
        original(wait)

    server.scheduler.iterate = slow
    return server.start()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A model without <|endoftext|> (so it never ends early)."""
    checkpoint = save_tiny_checkpoint(tmp_path_factory.mktemp("page") / "playground", eot=False)
    server = slow_server(checkpoint, max_tokens_limit=64)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(server, browser):
    page = browser.new_page()
    page.goto(server.url + "/")
    yield page
    page.close()


def completion(page) -> str:
    return page.evaluate("document.getElementById('completion')?.textContent ?? ''")


def test_generate_streams_the_text_in_and_stop_stops_it(page, server):
    sync_api.expect(page.locator("#model")).to_have_text("model: playground")
    # clamped to the server's --max-tokens-limit, once /health has answered (after the model's name)
    sync_api.expect(page.locator("#max-tokens")).to_have_value("64")
    page.fill("#prompt", "Hello there")
    page.click("#generate")
    page.wait_for_function("(document.getElementById('completion')?.textContent ?? '').length >= 3")
    assert page.text_content("#status") == "generating…"  # text is arriving, the stream is not over
    assert page.is_enabled("#stop") and not page.is_enabled("#generate")
    page.click("#stop")
    sync_api.expect(page.locator("#status")).to_have_text("stopped")
    shown = completion(page)
    time.sleep(0.3)
    assert completion(page) == shown and 3 <= len(shown) < 64  # nothing more came, and not all of it had
    deadline = time.monotonic() + 5
    while server.scheduler.stats.running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.scheduler.stats.running == 0  # the aborted stream's slot is free


def test_a_greedy_run_shows_what_the_api_answers(page, server):
    page.fill("#prompt", "Once upon")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "12")
    page.click("#generate")
    sync_api.expect(page.locator("#status")).to_have_text("done (max tokens reached)")
    _, answer = post(
        server.port,
        "/v1/completions",
        {"model": "playground", "prompt": "Once upon", "max_tokens": 12, "temperature": 0},
    )
    assert completion(page) == answer["choices"][0]["text"]
    assert page.text_content("#output").startswith("Once upon")  # the prompt, then the completion


def test_the_chat_tab_of_a_base_model_says_it_has_no_chat_template(page):
    page.click("#tab-chat")
    assert page.is_hidden("#completion-panel") and page.is_visible("#chat-panel")
    page.fill("#message", "Hi")
    page.click("#send")
    sync_api.expect(page.locator("#chat-status")).to_contain_text("no chat template")
    assert "gpt finetune" in page.text_content("#chat-status")
    assert page.input_value("#message") == "Hi" and turns(page) == []  # nothing was said: back in the box
    page.click("#tab-completion")


# ---------------------------------------------------------------------------------------------
# the chat tab

SYSTEM = {"role": "system", "content": "Be brief."}


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    checkpoint = save_tiny_chat_checkpoint(tmp_path_factory.mktemp("page") / "chatty", block_size=256)
    server = slow_server(checkpoint, max_tokens_limit=40)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chat_page(chat_server, browser):
    page = browser.new_page()
    page.goto(chat_server.url + "/")
    page.click("#tab-chat")
    yield page
    page.close()


def turns(page) -> list[list[str]]:
    """The conversation shown: [role, text] per turn."""
    return page.evaluate(
        "[...document.querySelectorAll('#conversation .turn')].map(t => [t.classList[1], t.textContent])"
    )


def api_reply(server, messages) -> str:
    body = {"model": "chatty", "messages": messages, "max_completion_tokens": 40, "temperature": 0}
    status, answer = post(server.port, "/v1/chat/completions", body)
    assert status == 200, answer
    return answer["choices"][0]["message"]["content"]


def say(page, text, enter=False) -> None:
    """Send a message and wait for the whole reply."""
    page.fill("#message", text)
    page.press("#message", "Enter") if enter else page.click("#send")
    sync_api.expect(page.locator("#chat-status")).to_have_text(re.compile(r"^done \("))


def test_chat_streams_replies_turn_after_turn_then_stop_and_clear(chat_page, chat_server):
    page = chat_page
    sync_api.expect(page.locator("#chat-max-tokens")).to_have_value("40")  # the server's limit
    page.fill("#system", SYSTEM["content"])
    page.fill("#chat-temperature", "0")
    page.fill("#message", "Hello there")
    page.click("#send")
    page.wait_for_function(
        "(document.querySelector('#conversation .assistant')?.textContent ?? '').length >= 3"
    )
    assert page.text_content("#chat-status") == "generating…"  # the reply is streaming in
    assert page.is_enabled("#chat-stop") and not page.is_enabled("#send") and not page.is_enabled("#clear")
    sync_api.expect(page.locator("#chat-status")).to_have_text(re.compile(r"^done \("))
    assert page.input_value("#message") == ""
    (_, asked), (role, first) = turns(page)
    assert (asked, role) == ("Hello there", "assistant")
    messages = [SYSTEM, {"role": "user", "content": "Hello there"}]
    assert first == api_reply(chat_server, messages)  # the system prompt was sent

    say(page, "And then?", enter=True)  # a second turn: the whole conversation is sent
    assert [role for role, _ in turns(page)] == ["user", "assistant", "user", "assistant"]
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "And then?"}]
    assert turns(page)[3][1] == api_reply(chat_server, messages) != first

    page.fill("#message", "Go on")
    page.click("#send")
    page.wait_for_function(
        "(document.querySelectorAll('#conversation .assistant')[2]?.textContent ?? '').length >= 3"
    )
    page.click("#chat-stop")
    sync_api.expect(page.locator("#chat-status")).to_have_text("stopped")
    shown = turns(page)
    time.sleep(0.3)
    assert turns(page) == shown and len(shown) == 6  # nothing more came; the partial reply stays
    deadline = time.monotonic() + 5
    while chat_server.scheduler.stats.running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert chat_server.scheduler.stats.running == 0  # the aborted stream's slot is free

    page.click("#clear")
    assert turns(page) == [] and page.text_content("#chat-status") == ""
    say(page, "Hello there")  # the conversation starts over: the first reply again
    assert turns(page) == [["user", "Hello there"], ["assistant", first]]
