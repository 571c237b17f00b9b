"""`gpt load-gpt2` and `gpt export-hf`: OpenAI GPT-2 weights in, GPT-2-shaped checkpoints out."""

from pathlib import Path
from typing import Annotated

import typer

from gptcli.cli.common import BestOption, QuietOption, VerboseOption, console, warn
from gptcli.config import HUB_NAMES


def load_gpt2_command(
    source: Annotated[
        str, typer.Argument(help=f"{', '.join(HUB_NAMES)} (downloaded), or a local HF GPT-2 folder.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint directory to write.")] = Path(
        "checkpoints/gpt2"
    ),
    tokenizer: Annotated[
        Path | None,
        typer.Option("--tokenizer", "-t", help="Folder with vocab.json + merges.txt (default: SOURCE)."),
    ] = None,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Import GPT-2 weights and tokenizer into a checkpoint that generate and train --init-from use."""
    from gptcli.hf_gpt2 import import_gpt2  # torch loads only once a command runs

    path = import_gpt2(source, out, tokenizer)
    console.print(f'wrote {path} (try: gpt generate --checkpoint {path} --prompt "Hello, my name is")')


def export_hf_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint dir, or a run dir (its newest checkpoint).")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Folder for config.json, model.safetensors and the tokenizer files."
        ),
    ] = Path("hf_export"),
    best: BestOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Export a GPT-2-shaped checkpoint so transformers' GPT2LMHeadModel.from_pretrained loads it; a
    fine-tuned one with its chat template (for apply_chat_template) and its end token (generate stops there)."""
    from gptcli.hf_gpt2 import export_hf_gpt2  # torch loads only once a command runs

    written = export_hf_gpt2(checkpoint, out, best=best, warn=warn)  # a char tokenizer: says none is written
    console.print(f"wrote {', '.join(str(p) for p in written)}")
