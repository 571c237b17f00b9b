"""benchmarks/bench_chat.py end to end at its tiniest: a 2 x 64 model, two turns held four ways (two
`gpt serve` processes, ChatSession kept and re-prefilled) and two clients at once; the table and
the JSON line come out, and the figures hang together (timings are not checked: not a test's job)."""

import json
import subprocess
import sys

from tests.conftest import REPO


def test_the_tiniest_run_prints_every_figure():
    argv = [sys.executable, "benchmarks/bench_chat.py", "--small", "--turns", "2", "--repeats", "1",
            "--clients", "2", "--client-turns", "1", "--json"]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout.splitlines()[-1])
    first, second = r["turns_table"]
    # every reply is exactly --reply-tokens long, and the second turn repeats the first and its reply
    assert first["serve_reply_tokens"] == second["chat_reply_tokens"] == r["reply_tokens"]
    assert first["serve_cached_tokens"] == 0 and first["chat_new_tokens"] == first["chat_prompt_tokens"]
    assert second["serve_prompt_tokens"] == second["chat_prompt_tokens"] > first["serve_prompt_tokens"] + 40
    assert second["serve_cached_tokens"] >= first["serve_prompt_tokens"] - 16  # whole blocks of turn 1
    assert second["chat_new_tokens"] < second["chat_prompt_tokens"] - first["chat_prompt_tokens"]
    assert all(row[key] > 0 for row in (first, second) for key in row if key.endswith("_ms"))
    many = r["clients"]
    assert many["together"]["tokens"] == many["one_at_a_time"]["tokens"] == 2 * r["reply_tokens"]
    assert "ratio" in done.stdout and "gpt chat (ChatSession)" in done.stdout
