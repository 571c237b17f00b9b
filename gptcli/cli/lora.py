"""`gpt merge-lora` and `gpt export-peft`: a LoRA run as a standalone checkpoint, or as a PEFT adapter."""

from pathlib import Path
from typing import Annotated

import typer

from gptcli.cli.common import BestOption, CheckpointOutOption, QuietOption, VerboseOption, console, warn

RunArgument = Annotated[
    Path, typer.Argument(help="A LoRA run (gpt finetune --lora), or one of its checkpoints.")
]


def merge_lora_command(
    run: RunArgument,
    out: CheckpointOutOption,
    best: BestOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Add a LoRA adapter into its base's weights: a full checkpoint, with the chat template, that needs
    neither the base nor LoRA."""
    from gptcli.lora_export import merge_adapter  # torch loads only once a command runs

    path = merge_adapter(run, out, best=best)
    console.print(f"wrote {path} (try: gpt chat -c {path})")


def export_peft_command(
    run: RunArgument,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for adapter_config.json and adapter_model.safetensors."),
    ],
    base_out: Annotated[
        Path | None,
        typer.Option("--base-out", help="Folder for the HF base the adapter goes on (default: OUT/base)."),
    ] = None,
    best: BestOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Export a LoRA run on a GPT-2-shaped base in PEFT's format, with the base it goes on as an HF
    folder (export-hf's files), for PeftModel.from_pretrained."""
    from gptcli.lora_export import export_peft  # torch loads only once a command runs

    written, added = export_peft(run, out, base_out, best=best, warn=warn)
    base = written[2].parent
    note = (
        f"; load the adapter on that base, not the original: it carries the {added} tokens the fine-tune "
        "added (their trained rows)"
        if added
        else " (the original's weights, as gpt export-hf writes them)"
    )
    console.print(f"wrote the adapter to {out} and its base to {base}{note}")
