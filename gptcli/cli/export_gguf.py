"""`gpt export-gguf`: a checkpoint as one GGUF file, for llama.cpp, llama-cpp-python and Ollama."""

from pathlib import Path
from typing import Annotated, Literal

import typer

from gptcli.cli.common import BestOption, QuietOption, VerboseOption, console


def export_gguf_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint dir, or a run dir (its newest checkpoint).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The GGUF file to write.")] = Path("model.gguf"),
    dtype: Annotated[
        Literal["f32", "f16", "q8_0"],
        typer.Option(help="Weights' type: f32, f16, or q8_0 (8-bit blocks; norms and biases stay f32)."),
    ] = "f32",
    best: BestOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Write a GGUF file llama.cpp runs: learned positions as its gpt2 architecture, rotary ones as
    starcoder2, the tokenizer and a fine-tuned model's chat template inside."""
    from gptcli.gguf_export import export_gguf  # torch loads only once a command runs

    path = export_gguf(checkpoint, out, dtype=dtype, best=best)
    console.print(f"wrote {path} (try: llama-cli -m {path} -p 'Hello')")
