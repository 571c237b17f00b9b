"""`gpt generate`: flags -> SampleConfig -> gptcli.generation.Engine; text streamed, printed or as JSON."""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from gptcli.cli.common import (
    BestOption,
    CheckpointOption,
    JsonOption,
    QuantizeOption,
    QuietOption,
    StrictOption,
    VerboseOption,
    config_option,
    console,
    detail,
    device_option,
    precision_option,
    read_text_file,
    validate_options,
    warn,
)
from gptcli.config import Precision, SampleConfig

SEPARATOR = "\n---------------\n"  # between samples, as nanoGPT's sample.py prints them


def read_prompt(prompt: str) -> str:
    """TEXT, or FILE:path for the contents of a file (as nanoGPT's sample.py)."""
    return read_text_file(Path(prompt[5:]), "prompt file") if prompt.startswith("FILE:") else prompt


def sample_option(name: str, *names: str, **options):
    """The option that sets SampleConfig.<name>."""
    return config_option(SampleConfig, name, *names, **options)


def generate_command(
    prompt: Annotated[
        str,
        typer.Option("--prompt", "-p", help="Prompt text, or FILE:path. Empty: start from <|endoftext|>."),
    ] = "",
    checkpoint: CheckpointOption = Path("out"),
    best: BestOption = False,
    strict: StrictOption = False,
    num_samples: Annotated[int | None, sample_option("num_samples", "--num-samples", "-n")] = None,
    max_new_tokens: Annotated[int | None, sample_option("max_new_tokens")] = None,
    temperature: Annotated[float | None, sample_option("temperature")] = None,
    top_k: Annotated[int | None, sample_option("top_k")] = None,
    top_p: Annotated[float | None, sample_option("top_p")] = None,
    seed: Annotated[int | None, sample_option("seed")] = None,
    stop: Annotated[list[str] | None, sample_option("stop")] = None,
    ignore_eos: Annotated[bool | None, sample_option("ignore_eos", "--ignore-eos")] = None,
    device: Annotated[str, device_option()] = "auto",
    precision: Annotated[Precision, precision_option()] = "auto",
    quantize: QuantizeOption = None,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile/--no-compile",
            help="Compile the decode step (torch.compile; a CUDA graph on a GPU): "
            "slower to start, faster per token.",
        ),
    ] = False,
    stream: Annotated[
        bool, typer.Option("--stream/--no-stream", help="Print tokens as they come (one sample).")
    ] = True,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Generate text from a checkpoint. Example: gpt generate --prompt "Once upon a time" --top-k 200

    With --json: one object with the prompt, the samples (text, ids, finish reason), counts and speed.
    An encoder-decoder (arch encdec) reads the prompt with its encoder and writes at most its context.
    """
    settings = dict(num_samples=num_samples, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                    top_p=top_p, seed=seed, stop=stop, ignore_eos=ignore_eos)  # fmt: skip
    config = validate_options(SampleConfig, settings)
    text = read_prompt(prompt)
    engine = load_engine(checkpoint, device, precision, best, strict, compile, quantize)
    run = engine.start(text, config)
    detail(
        f"{engine.checkpoint} on {engine.device} ({engine.describe_weights()}); prompt {len(run.prompt_ids)} tokens; "
        f"sampling {config.model_dump_json()}"
    )
    if run.context_note is not None:  # past the context the window slides: said as gpt serve says it
        console.print(f"note: {run.context_note}", style="dim", markup=False)
    print_run(engine, run, as_json, stream and config.num_samples == 1)


def load_engine(
    checkpoint: Path,
    device: str,
    precision: str,
    best: bool,
    strict: bool,
    compile: bool,
    quantize: str | None = None,
):
    from gptcli.generation import Engine  # loaded only once a command runs, so `gpt --help` starts at once

    return Engine.from_checkpoint(
        checkpoint, device, precision, best=best, strict=strict, warn=warn, compile=compile, quantize=quantize
    )


def print_run(engine, run, as_json: bool, stream: bool) -> None:
    """The run's samples: one JSON object, streamed text, or the samples one after another."""
    if as_json:
        for _ in run:
            pass
        out = {"checkpoint": str(engine.checkpoint), **run.result.to_json()}
        if run.context_note is not None:
            out["context_note"] = run.context_note  # as gpt serve's answer has it
        sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        return
    if stream:
        sys.stdout.write(run.prompt)
        for event in run:
            sys.stdout.write(event.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        for _ in run:
            pass
        sys.stdout.write(SEPARATOR.join(run.prompt + s.text for s in run.result.samples) + "\n")
    sys.stdout.flush()
    r = run.result
    reasons = ", ".join(sorted({s.finish_reason for s in r.samples}))
    compiling = f" after {r.compile_seconds:.1f}s compiling the decode step" if r.compile_seconds else ""
    console.print(
        f"[dim]{r.new_tokens} tokens in {r.seconds - r.compile_seconds:.2f}s ({r.tokens_per_second:,.0f} "
        f"tok/s){compiling}; ended by {reasons}; {engine.checkpoint}[/]"
    )
