"""`gpt generate`: flags -> SampleConfig -> gptcli.sampling.Engine; text streamed, printed or as JSON."""

import json
import sys
from pathlib import Path
from typing import Annotated

import torch
import typer

from gptcli.cli.common import (
    BestOption,
    CheckpointOption,
    QuietOption,
    VerboseOption,
    console,
    detail,
    read_text_file,
)
from gptcli.config import SampleConfig, validate
from gptcli.errors import GptError
from gptcli.generation import Engine

SEPARATOR = "\n---------------\n"  # between samples, as nanoGPT's sample.py prints them


def read_prompt(prompt: str) -> str:
    """TEXT, or FILE:path for the contents of a file (as nanoGPT's sample.py)."""
    return read_text_file(Path(prompt[5:]), "prompt file") if prompt.startswith("FILE:") else prompt


def generate_command(
    prompt: Annotated[
        str,
        typer.Option("--prompt", "-p", help="Prompt text, or FILE:path. Empty: start from <|endoftext|>."),
    ] = "",
    checkpoint: CheckpointOption = Path("out"),
    best: BestOption = False,
    num_samples: Annotated[
        int, typer.Option("--num-samples", "-n", help="Samples, generated together as one batch.")
    ] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per sample.")] = 256,
    temperature: Annotated[float, typer.Option(help="Softmax temperature; 0 = greedy.")] = 0.8,
    top_k: Annotated[int | None, typer.Option(help="Sample from the k most likely tokens only.")] = 200,
    top_p: Annotated[
        float | None, typer.Option(help="Nucleus sampling: the smallest set with this probability mass.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed: same seed + checkpoint + device = same text.")
    ] = None,
    stop: Annotated[
        list[str] | None, typer.Option(help="Stop string (repeatable): a sample ends just before it.")
    ] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Do not stop at <|endoftext|>.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto (bf16 on GPU, else fp32), fp32, bf16 or fp16.")
    ] = "auto",
    compile: Annotated[
        bool, typer.Option("--compile/--no-compile", help="torch.compile the model first.")
    ] = False,
    stream: Annotated[
        bool, typer.Option("--stream/--no-stream", help="Print tokens as they come (one sample).")
    ] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object: prompt, samples, ids, counts, speed.")
    ] = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Generate text from a checkpoint. Example: gpt generate --prompt "Once upon a time" --top-k 200"""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise GptError(f"unknown --precision {precision!r}: use auto, fp32, bf16 or fp16")
    config = validate(
        SampleConfig,
        num_samples=num_samples, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
        top_p=top_p, seed=seed, stop=stop or [], ignore_eos=ignore_eos,
    )  # fmt: skip
    text = read_prompt(prompt)
    engine = Engine.from_checkpoint(checkpoint, device=device, precision=precision, best=best)
    if compile:
        engine.model = torch.compile(engine.model)
    run = engine.start(text, config)
    detail(
        f"{engine.checkpoint} on {engine.device} ({engine.precision}); prompt {len(run.prompt_ids)} tokens; "
        f"sampling {config.model_dump_json()}"
    )
    if len(run.prompt_ids) > engine.block_size:
        console.print(
            f"[dim]the prompt has {len(run.prompt_ids)} tokens; the model sees the last {engine.block_size}[/]"
        )

    if as_json:
        for _ in run:
            pass
        out = {"checkpoint": str(engine.checkpoint), **run.result.to_json()}
        sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        return
    if stream and num_samples == 1:
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
    console.print(
        f"[dim]{r.new_tokens} tokens in {r.seconds:.2f}s ({r.tokens_per_second:,.0f} tok/s); "
        f"ended by {reasons}; {engine.checkpoint}[/]"
    )
