"""`gpt serve` as a command: one-line errors before it listens, and a SIGTERM while a stream is in flight
(a real `gpt serve` process): it stops accepting, the stream completes, the process exits 0."""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from gptcli.config import ModelConfig
from gptcli.models import build_model
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers import BPETokenizer
from tests.conftest import assert_one_line_error, run_cli
from tests.serving.helpers import save_tiny_checkpoint, sse_events

pytest.importorskip("fastapi")


def test_without_the_serve_extra_it_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` raises ImportError
    result = run_cli("serve", "-c", str(tmp_path))
    assert_one_line_error(result, "gpt serve needs the serve extra: pip install 'gptcli[serve]'")
    assert result.exit_code == 1


def test_bad_settings_are_one_line_errors(tmp_path):
    model = save_tiny_checkpoint(tmp_path / "tiny")
    assert_one_line_error(run_cli("serve", "-c", str(model), "--port", "70000"), "port")
    assert_one_line_error(run_cli("serve", "-c", str(model), "--max-batch", "0"), "--max-batch")
    assert_one_line_error(run_cli("serve", "-c", str(tmp_path / "missing")), "missing")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_one_line_error(run_cli("serve", "-c", str(model), "--port", port, "-q"), "cannot listen", port)


def test_a_model_without_a_fixed_shape_step_is_a_one_line_error(tmp_path):
    tokenizer = BPETokenizer([], special_tokens={"<|endoftext|>": 256})
    config = ModelConfig(arch="lstm", vocab_size=257, block_size=16, n_layer=1, n_embd=16)
    ckpt.save_checkpoint(tmp_path / "lstm", build_model(config), config, tokenizer)
    assert_one_line_error(run_cli("serve", "-c", str(tmp_path / "lstm")), "fixed-shape decode step")


def refused_soon(port: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.02)
    return False


def test_sigterm_lets_the_stream_in_flight_finish_and_exits_0(tmp_path):
    model = save_tiny_checkpoint(tmp_path / "served", n_layer=2, n_embd=128, n_head=4, block_size=1024)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "gptcli", "serve", "-c", str(model), "--port", "0", "--max-batch", "4"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        banner = server.stderr.readline()
        port = int(re.search(r"listening on http://127\.0\.0\.1:(\d+)", banner).group(1))
        assert "model 'served'" in server.stderr.readline()  # the model, its size, the batch
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        body = {"model": "served", "prompt": "x", "max_tokens": 600, "ignore_eos": True, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        events = sse_events(connection.getresponse())
        next(events)  # the stream has begun
        server.send_signal(signal.SIGTERM)
        assert refused_soon(port)  # no new connections, while the stream goes on
        rest = list(events)
        assert rest[-1] == "[DONE]" and json.loads(rest[-2])["usage"]["completion_tokens"] == 600
        assert server.wait(timeout=60) == 0
        log = server.stderr.read()
        assert (
            "1 prompt + 600 completion tokens" in log
            and "gpt serve: stopped" in log
            and "Traceback" not in log
        )
    finally:
        server.kill()
        server.wait()
