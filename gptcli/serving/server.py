"""Running it: the scheduler's thread and the app under uvicorn, on a socket bound up front.

    server = Server(engine, ServeConfig(port=0), log=print)   # port 0: any free port
    print(server.banner())                                    # where it listens, the model, the batch
    server.run()     # until SIGTERM or Ctrl-C: stop accepting, let requests in flight finish, return

    server.start(); ...; server.stop()                        # the same in a background thread

A stop is uvicorn's graceful shutdown (no new connections; open ones get `drain_seconds` to end)
followed by the scheduler's drain, so a stream in flight completes and `gpt serve` exits 0. A second
Ctrl-C stops at once.
"""

import contextlib
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn

from gptcli.config import ServeConfig
from gptcli.errors import GptError
from gptcli.generation.engine import Engine
from gptcli.serving.adapters import serve_adapters
from gptcli.serving.api import ENCDEC_NO_PREFIX_CACHE, Log, create_app
from gptcli.serving.scheduler import Scheduler

# The scheduler's thread runs many short torch ops, each taking the GIL again when it ends; with
# Python's default 5 ms switch interval, every one of them can wait that long while the event loop
# thread writes chunks. 0.5 ms: 16 streaming clients got ~1.3x the tokens/s (benchmarks/bench_serve.py).
GIL_SWITCH_SECONDS = 0.0005


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on host:port (port 0: a free one), or a one-line error."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise GptError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(2048)  # from now on connections wait in the backlog until uvicorn accepts them
    return sock


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, except that after its graceful shutdown it does not raise the signal that
    started it again (which would end the process by SIGTERM or KeyboardInterrupt instead of 0)."""

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class Server:
    """An engine behind the OpenAI-compatible API (gptcli.serving.api), continuously batched."""

    def __init__(self, engine: Engine, config: ServeConfig, log: Log | None = None):
        self.engine, self.config = engine, config
        self.model_id = config.model_name or Path(config.checkpoint).resolve().name or "gpt"
        self.models = serve_adapters(engine, config.adapters, self.model_id)  # the base, then its adapters
        self.scheduler = Scheduler(engine, config.max_batch, config.prefix_cache_mb)
        self.app = create_app(self.scheduler, config, self.models, None if config.quiet else log)
        settings = uvicorn.Config(
            self.app,
            host=config.host,
            port=config.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=config.drain_seconds,
        )
        self.uvicorn = _Uvicorn(settings)
        self.socket = listen(config.host, config.port)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]  # the one bound, when the config said 0

    @property
    def url(self) -> str:
        host = self.socket.getsockname()[0]
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def banner(self) -> str:
        engine, config = self.engine, self.config
        params = sum(p.numel() for p in engine.model.parameters())
        key = "; API key required" if config.api_key else ""
        return (
            f"gpt serve: listening on {self.url} (playground at /, API at /v1){key}\n"
            f"model {self.model_id!r}: {engine.checkpoint}, {params / 1e6:.2f}M parameters, context "
            f"{engine.block_size}, on {engine.device} ({engine.describe_weights()}); batch of {config.max_batch}, "
            f"{self.prefix_cache_words()}{self.adapter_lines()}"
        )

    def prefix_cache_words(self) -> str:
        if self.scheduler.encdec:
            return ENCDEC_NO_PREFIX_CACHE
        return f"prefix cache {self.config.prefix_cache_mb:g} MiB"

    def adapter_lines(self) -> str:
        return "".join(f"\nadapter {name!r}: {run}" for name, run in self.config.adapters.items())

    def run(self) -> None:
        """Serve until SIGTERM / Ctrl-C (or stop()), then finish what is in flight and return."""
        switch = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        self.scheduler.start()
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self.scheduler.stop(self.config.drain_seconds)
            self.socket.close()
            sys.setswitchinterval(switch)

    def start(self, timeout: float = 30.0) -> "Server":
        """Serve from a background thread; returns once it accepts connections."""
        self._thread = threading.Thread(target=self.run, name="gpt-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise GptError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join()
