"""The playground in a real headless browser (Debian's chromium driven by Playwright, no browser
download): type a prompt, Generate, see the text stream in, Stop it; a greedy run shows what the API says."""

import time
from pathlib import Path

import pytest

from gptcli.config import ServeConfig
from gptcli.generation import Engine
from tests.serving.helpers import post, save_tiny_checkpoint

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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A model without <|endoftext|> (so it never ends early), a round of the scheduler taking 20 ms more:
    a stream lasts long enough to be seen and stopped."""
    checkpoint = save_tiny_checkpoint(tmp_path_factory.mktemp("page") / "playground", eot=False)
    server = Server(
        Engine.from_checkpoint(checkpoint, device="cpu"),
        ServeConfig(checkpoint=checkpoint, port=0, quiet=True, max_tokens_limit=64),
    )
    original = server.scheduler.iterate

    def slow(wait=0.0):
        time.sleep(0.02)
        original(wait)

    server.scheduler.iterate = slow
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page()
        page.goto(server.url + "/")
        yield page
        browser.close()


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
