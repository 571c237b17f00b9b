"""`gpt serve`: flags -> ServeConfig -> gptcli.serving.Server (OpenAI's API, continuous batching, a playground)."""

import time
from pathlib import Path
from typing import Annotated

import typer

from gptcli.cli.common import (
    BestOption,
    CheckpointOption,
    QuantizeOption,
    QuietOption,
    VerboseOption,
    config_option,
    console,
    detail,
    device_option,
    precision_option,
    validate_options,
    warn,
)
from gptcli.cli.generate import load_engine
from gptcli.config import Precision, ServeConfig
from gptcli.errors import GptError, OptionError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
ADAPTER_HELP = (
    "A LoRA adapter of the checkpoint (RUN: its gpt finetune --lora run), served beside it in the same "
    "batch to requests whose model is NAME; repeatable. Adapters served together share one tokenizer."
)


def _serve(name: str, *names: str, **options):
    """The option that sets ServeConfig.<name>."""
    return config_option(ServeConfig, name, *names, **options)


def parse_adapters(values: list[str]) -> dict[str, Path]:
    """--adapter NAME=RUN, repeated -> {NAME: RUN}; a one-line error for a bad one."""
    adapters: dict[str, Path] = {}
    for value in values:
        name, sep, run = (part.strip() for part in value.partition("="))
        if not sep or not name or not run:
            raise OptionError(
                f"--adapter {value!r}: expected NAME=RUN (the model id clients use, a LoRA run)"
            )
        if name in adapters:
            raise OptionError(f"--adapter: {name!r} is given twice")
        adapters[name] = Path(run)
    return adapters


def log_request(message: str) -> None:
    console.print(f"{time.strftime('%H:%M:%S')} {message}", markup=False, highlight=False, style="dim")


def serve_command(
    checkpoint: CheckpointOption = Path("out"),
    best: BestOption = False,
    host: Annotated[str | None, _serve("host", "--host")] = None,
    port: Annotated[int | None, _serve("port", "--port")] = None,
    api_key: Annotated[str | None, _serve("api_key", "--api-key", envvar="GPT_SERVE_API_KEY")] = None,
    max_batch: Annotated[int | None, _serve("max_batch", "--max-batch")] = None,
    max_tokens_limit: Annotated[int | None, _serve("max_tokens_limit", "--max-tokens-limit")] = None,
    max_body_bytes: Annotated[int | None, _serve("max_body_bytes", "--max-body-bytes")] = None,
    prefix_cache_mb: Annotated[float | None, _serve("prefix_cache_mb", "--prefix-cache-mb")] = None,
    drain_seconds: Annotated[float | None, _serve("drain_seconds", "--drain-seconds")] = None,
    model_name: Annotated[str | None, _serve("model_name", "--model-name")] = None,
    adapter: Annotated[
        list[str] | None, typer.Option("--adapter", metavar="NAME=RUN", help=ADAPTER_HELP)
    ] = None,
    device: Annotated[str, device_option()] = "auto",
    precision: Annotated[Precision, precision_option()] = "auto",
    compile: Annotated[bool, _serve("compile", "--compile/--no-compile")] = False,
    quantize: QuantizeOption = None,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Serve a checkpoint over HTTP: OpenAI's /v1/completions, continuously batched; a playground at /.

    Example: gpt serve -c out --port 8000, then open http://127.0.0.1:8000 (the API is under /v1).
    With adapters: gpt serve -c base --adapter chat=runs/chat --adapter sql=runs/sql (model "chat", ...).

    SIGTERM or Ctrl-C: stop accepting, let the requests in flight finish, exit 0.
    """
    try:
        import fastapi  # noqa: F401  (only to say clearly that the extra is missing)
        import uvicorn  # noqa: F401
    except ImportError:
        raise GptError("gpt serve needs the serve extra: pip install 'gptcli[serve]'") from None
    given = dict(checkpoint=checkpoint, best=best, device=device, precision=precision, compile=compile, quiet=quiet,
                 quantize=quantize,
                 host=host, port=port, api_key=api_key, max_batch=max_batch, max_tokens_limit=max_tokens_limit,
                 max_body_bytes=max_body_bytes, prefix_cache_mb=prefix_cache_mb, drain_seconds=drain_seconds,
                 model_name=model_name, adapters=parse_adapters(adapter or []) or None)  # fmt: skip
    config = validate_options(ServeConfig, given)
    if (
        config.quantize and config.adapters
    ):  # the adapters' layers wrap float Linears (gptcli.models.multi_lora)
        raise OptionError("--adapter with --quantize: adapters are served on a float base only")
    from gptcli.serving.server import Server  # torch, FastAPI and uvicorn load only once the command runs

    engine = load_engine(
        config.checkpoint,
        config.device,
        config.precision,
        config.best,
        False,
        config.compile,
        config.quantize,
    )
    server = Server(engine, config, log=log_request)
    typer.echo(server.banner(), err=True)
    detail(f"settings {config.model_dump_json(exclude={'api_key'})}")
    if config.host not in LOOPBACK and not config.api_key:
        warn(f"listening on {config.host} without --api-key: anyone who can reach it can use it")
    server.run()
    if not quiet:
        typer.echo("gpt serve: stopped", err=True)
