"""`gpt chat` as a user runs it: through a pipe (each line a turn; --json), every slash command, a
full context, a base model's error; and on a pseudo-terminal: line editing and history, Ctrl-C
during a reply, /save of the partial reply, Ctrl-D."""

import fcntl
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import time

import pytest

from gptcli.chat.session import ChatSession
from gptcli.config import SampleConfig
from gptcli.generation import Engine
from tests.conftest import assert_one_line_error, run_cli
from tests.serving.helpers import save_tiny_chat_checkpoint, save_tiny_checkpoint

GREEDY = ("--temperature", "0")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_chat_checkpoint(tmp_path_factory.mktemp("chat") / "tiny", printable=True)


def chat(checkpoint, lines: list[str], *args: str):
    return run_cli("chat", "-c", str(checkpoint), *args, input="".join(line + "\n" for line in lines))


def turns(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_lines_are_turns_each_reply_followed_by_an_empty_line(checkpoint):
    result = chat(checkpoint, ["Hello", "", "And you?"], *GREEDY, "--max-new-tokens", "12")
    assert result.exit_code == 0, result.stderr
    replies = result.stdout.split("\n\n")
    assert len(replies) == 3 and replies[2] == ""  # two replies, each followed by an empty line
    # the same conversation through the library: the same replies
    session = ChatSession(
        Engine.from_checkpoint(checkpoint, device="cpu"), SampleConfig(max_new_tokens=12, temperature=0)
    )
    assert [session.say("Hello").text(), session.say("And you?").text()] == replies[:2]


def test_json_turns_count_what_each_turn_prefilled_and_depend_on_earlier_turns(checkpoint):
    result = chat(checkpoint, ["Tell me of roses.", "And then?"], *GREEDY, "--max-new-tokens", "10", "--json")
    assert result.exit_code == 0, result.stderr
    first, second = turns(result)
    assert set(first) == {"reply", "finish_reason", "prompt_tokens", "new_prompt_tokens", "completion_tokens",
                          "ttft_s", "seconds"}  # fmt: skip
    assert first["new_prompt_tokens"] == first["prompt_tokens"] and first["completion_tokens"] == 10
    # turn 2 prefills its own tokens (and turn 1's last sampled token), not the history
    new_turn = second["prompt_tokens"] - first["prompt_tokens"] - first["completion_tokens"] + 1
    assert second["new_prompt_tokens"] == new_turn < second["prompt_tokens"] / 2
    assert first["finish_reason"] == "length" and 0 < first["ttft_s"] <= first["seconds"]
    other = chat(checkpoint, ["What of the sea?", "And then?"], *GREEDY, "--max-new-tokens", "10", "--json")
    assert turns(other)[1]["reply"] != second["reply"]  # turn 2 depends on turn 1


def test_every_slash_command(checkpoint, tmp_path):
    saved = tmp_path / "conversation.json"
    lines = [
        "/help",
        "/system Answer in verse.",
        "One",
        "Two",
        "/undo",
        "/retry",
        f"/save {saved}",
        "/reset",
        "Three",
        f"/load {saved}",
        "Four",
        "/system",
        "/exit",
        "never read",
    ]
    result = chat(checkpoint, lines, "--max-new-tokens", "6", "--seed", "1", "--json")
    assert result.exit_code == 0, result.stderr
    out = turns(result)
    assert len(out) == 5  # One, Two, the retried One, Three, Four: nothing after /exit
    assert out[2]["reply"] != out[0]["reply"] and out[2]["new_prompt_tokens"] == 1  # /retry: cached prompt
    messages = json.loads(saved.read_text())["messages"]
    assert messages == [{"role": "system", "content": "Answer in verse."}, {"role": "user", "content": "One"},
                        {"role": "assistant", "content": out[2]["reply"]}]  # fmt: skip
    assert out[4]["prompt_tokens"] > out[3]["prompt_tokens"]  # /load brought the saved exchange back
    for said in ("/retry", "/save FILE", "system message set", "dropped the last exchange", "saved 3 messages",
                 "conversation cleared", "loaded 3 messages", "system message removed"):  # fmt: skip
        assert said in result.stderr, said


def test_a_bad_command_or_file_is_an_error_line_and_the_exit_status_says_so(checkpoint, tmp_path):
    result = chat(checkpoint, ["/bogus", "/save", f"/load {tmp_path / 'none.json'}", "//slash", "/retry"],
                  "--max-new-tokens", "4", "--json")  # fmt: skip
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3 and "unknown command /bogus" in errors[0] and "not found" in errors[2]
    assert "/save needs a file" in errors[1]
    assert len(turns(result)) == 2  # "/slash" was sent as a message, then retried


def test_a_full_context_drops_the_oldest_exchanges_with_a_note(tmp_path):
    short = save_tiny_chat_checkpoint(tmp_path / "short", block_size=80, printable=True)
    lines = [f"message number {i}" for i in range(5)]
    result = chat(short, lines, *GREEDY, "--max-new-tokens", "10", "--json", "--system", "Sys")
    assert result.exit_code == 0, result.stderr
    assert all(turn["prompt_tokens"] + 10 <= 80 for turn in turns(result))
    assert (
        "note: the conversation outgrew the model's context of 80 tokens: dropped the oldest" in result.stderr
    )
    too_long = chat(short, ["x" * 100], "--json")
    assert too_long.exit_code == 1 and "error: the message takes" in too_long.stderr


def test_a_base_model_is_a_one_line_error_pointing_to_finetune(tmp_path):
    base = save_tiny_checkpoint(tmp_path / "base")
    assert_one_line_error(chat(base, ["Hi"]), "no chat template", "gpt finetune")


# ---- on a terminal


class Terminal:
    """`gpt chat` on a pseudo-terminal it has as its controlling terminal (so ^C is a SIGINT)."""

    def __init__(self, *args: str):
        master, slave = pty.openpty()
        env = {**os.environ, "TERM": "xterm", "COLUMNS": "200", "NO_COLOR": "1"}

        def controlling_terminal():
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            # a suite started in the background (`cmd &` in a script) ignores SIGINT, and a child
            # inherits that: Python would then never raise KeyboardInterrupt for ^C
            signal.signal(signal.SIGINT, signal.SIG_DFL)

        self.proc = subprocess.Popen([sys.executable, "-m", "gptcli", "chat", *args], stdin=slave, stdout=slave,
                                     stderr=slave, env=env, start_new_session=True,
                                     preexec_fn=controlling_terminal)  # fmt: skip
        os.close(slave)
        self.master, self.seen = master, ""

    def expect(self, pattern: str, timeout: float = 60) -> str:
        """Read until `pattern` (a regex) shows up in what came since the last match; -> that stretch."""
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, self.seen)):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in {self.seen[-2000:]!r}")
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    self.seen += os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # the process has ended
                    pass
        stretch, self.seen = self.seen[: found.end()], self.seen[found.end() :]
        return stretch

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> int:
        code = self.proc.wait(timeout=30)
        os.close(self.master)
        return code


PROMPT = r">\x1b\[0m "  # the bold ">" (its escape codes marked zero-width for readline)


def test_on_a_terminal_ctrl_c_stops_a_reply_and_the_session_goes_on(tmp_path):
    long = save_tiny_chat_checkpoint(tmp_path / "long", block_size=2048, printable=True)
    saved = tmp_path / "c.json"
    term = Terminal("-c", str(long), *GREEDY, "--max-new-tokens", "1800")
    try:
        assert "/help for the commands" in term.expect(PROMPT)
        term.send("/hlep\x7f\x7f\x7felp\r")  # line editing: a typo rubbed out
        assert "/retry" in term.expect(PROMPT)
        term.send("\x1b[A\r")  # history: the arrow up brings /help back
        assert "/retry" in term.expect(PROMPT)
        term.send("Write forever\r")
        term.expect(r"Write forever\r\n.{20}")  # the reply has begun streaming
        term.send("\x03")  # Ctrl-C
        assert "note: stopped: the partial reply stays" in term.expect(PROMPT)
        term.send(f"/save {saved}\r")
        assert "saved 2 messages" in term.expect(PROMPT)  # (keys sent before the prompt may be flushed)
        term.send("\x04")  # Ctrl-D at the prompt
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    reply = json.loads(saved.read_text())["messages"][1]
    assert reply["role"] == "assistant" and 20 <= len(reply["content"]) < 1800


def test_greedy_replies_equal_the_servers_chat_completions(tmp_path):
    """The same conversation through `gpt chat` (its cache kept between turns) and through
    /v1/chat/completions (the whole history sent each turn, the prefix cache on): the same replies,
    or, where the two computations part, a tie in the model's own logits (assert_greedy)."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from gptcli.chat.template import render
    from gptcli.config import ServeConfig
    from gptcli.serving.server import Server
    from tests.generation.test_engine import assert_greedy

    checkpoint = save_tiny_chat_checkpoint(tmp_path / "tiny", block_size=256, printable=True)
    lines = ["Shall I compare thee?", "Thou art lovely.", "And temperate?"]  # all within the context
    result = chat(checkpoint, lines, *GREEDY, "--max-new-tokens", "12", "--json", "--system", "Sonnets.")
    assert result.exit_code == 0, result.stderr
    ours = [turn["reply"] for turn in turns(result)]
    engine = Engine.from_checkpoint(checkpoint, device="cpu")
    server = Server(engine, ServeConfig(checkpoint=checkpoint, port=0, quiet=True)).start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=30)
        messages, theirs = [{"role": "system", "content": "Sonnets."}], []
        for line, reply in zip(lines, ours):
            messages.append({"role": "user", "content": line})
            answer = client.chat.completions.create(
                model="tiny", messages=messages, max_tokens=12, temperature=0
            )
            theirs.append(answer.choices[0].message.content)
            if theirs[-1] != reply:  # parted: each must still be greedy on this conversation
                prompt = render(
                    messages, engine.chat_template, engine.tokenizer, add_generation_prompt=True
                ).ids
                for text in (reply, theirs[-1]):
                    assert_greedy(engine.tokenizer.encode(text), engine.model, prompt)
            messages.append({"role": "assistant", "content": reply})  # go on with gpt chat's
        assert answer.usage.prompt_tokens + 12 <= 256 and answer.usage.prompt_tokens_details.cached_tokens > 0
    finally:
        server.stop()
