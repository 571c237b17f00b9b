"""`gpt eval` and `gpt info`: measure a checkpoint on a text; show what a checkpoint or run holds."""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from gptcli import checkpoint as ckpt
from gptcli.cli.common import (
    BestOption,
    CheckpointOption,
    console,
    human_bytes,
    read_text_file,
    stage_progress,
)
from gptcli.evaluate import evaluate_text
from gptcli.trainer import resolve_device


def eval_command(
    data: Annotated[Path, typer.Option("--data", "-d", help="Text file to evaluate on.")],
    checkpoint: CheckpointOption = Path("out"),
    best: BestOption = False,
    batch_size: Annotated[int, typer.Option(help="Windows of block_size tokens per forward pass.")] = 8,
    max_tokens: Annotated[int | None, typer.Option(help="Evaluate only the first N tokens.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Loss, perplexity and bits per byte (comparable across tokenizers) of a checkpoint on a text file."""
    directory = ckpt.resolve_checkpoint(checkpoint, best=best)
    model, tokenizer, _ = ckpt.load_checkpoint(directory, resolve_device(device))
    text = read_text_file(data, "data file")
    with stage_progress(enabled=not as_json) as progress:
        result = evaluate_text(
            model, tokenizer, text, batch_size=batch_size, max_tokens=max_tokens, progress=progress
        )
    if as_json:
        sys.stdout.write(
            json.dumps({"checkpoint": str(directory), "data": str(data), **result.to_json()}) + "\n"
        )
        return
    sys.stdout.write(
        f"loss {result.loss:.4f}  perplexity {result.perplexity:.2f}  bits/byte {result.bits_per_byte:.4f}  "
        f"({result.tokens:,} tokens, {human_bytes(result.bytes)}; {directory})\n"
    )


def info_command(
    path: Annotated[Path, typer.Argument(help="A checkpoint or run directory.")] = Path("out"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """What a checkpoint or run directory holds: model shape, parameters, tokenizer, step, losses, files."""
    info = ckpt.describe(path)
    if as_json:
        sys.stdout.write(json.dumps(info, ensure_ascii=False) + "\n")
        return
    m = info["model"]
    lines = [
        f"checkpoint   {info['checkpoint']}",
        f"model        {m['n_layer']} layers, {m['n_head']} heads ({m['n_kv_head']} kv), {m['n_embd']} wide, "
        f"context {m['block_size']}, {m['pos_emb']} positions, {m['norm']}, window {m['window'] or 'off'}",
        f"parameters   {info['parameters']:,}",
        f"tokenizer    {info['tokenizer']['kind']}, {info['tokenizer']['vocab_size']:,} tokens",
    ]
    for key in ("step", "train_loss", "val_loss", "source"):
        if info.get(key) is not None:
            value = f"{info[key]:.4f}" if isinstance(info[key], float) else info[key]
            lines.append(f"{key:<12} {value}")
    lines.append("files        " + ", ".join(f"{k} ({human_bytes(v)})" for k, v in info["files"].items()))
    if "run" in info:
        r = info["run"]
        lines.append(
            f"run          {r['run_dir']}: {len(r['checkpoints'])} checkpoint(s), best {r['best']} (val {r['best_val_loss']})"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    console.print("[dim]--json for everything[/]")
