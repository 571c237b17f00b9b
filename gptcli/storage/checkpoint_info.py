"""What a checkpoint or run directory holds, and whether it is intact (`gpt info`, `gpt info --verify`)."""

import math
from pathlib import Path
from typing import Any

from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.storage.checkpoint import (
    CONFIG,
    TOKENIZER,
    WEIGHTS,
    best_checkpoint,
    checkpoint_digests,
    is_checkpoint,
    list_checkpoints,
    read_config,
    resolve_checkpoint,
    val_losses,
    verify_checkpoint,
)
from gptcli.storage.checksums import verify_file
from gptcli.storage.tensorfile import SafetensorsReader
from gptcli.tokenizers import load_tokenizer


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """What a checkpoint or run directory holds (for `gpt info`): shape, size, tokenizer, progress."""
    path = Path(path)
    run = None
    if not is_checkpoint(path):
        found = list_checkpoints(path)
        if not found:
            resolve_checkpoint(path)  # raises the right one-line error
        run = path
        path = found[-1]
    config = read_config(path)
    model: ModelConfig = config.pop("model")
    digests = checkpoint_digests(path)
    if digests is not None:  # what is shown must be what was saved (the weights' header is read too)
        for name in (CONFIG, TOKENIZER, WEIGHTS):
            verify_file(path / name, digests)
    tokenizer = load_tokenizer(path / TOKENIZER)
    with SafetensorsReader(path / WEIGHTS) as reader:
        n_params = sum(math.prod(reader.shape(k)) for k in reader.keys())
    info: dict[str, Any] = {
        "checkpoint": str(path),
        "model": model.model_dump(mode="json"),
        "parameters": n_params,
        "tokenizer": {
            "kind": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size,
            "special_tokens": tokenizer.special_tokens,
        },
        **{k: v for k, v in config.items() if k not in ("format", "version", "tokenizer_kind")},
        "files": {f.name: f.stat().st_size for f in sorted(path.iterdir()) if f.is_file()},
    }
    if run is not None:
        found = list_checkpoints(run)
        losses = val_losses(found)
        best = best_checkpoint(found, losses)
        info["run"] = {
            "run_dir": str(run),
            "checkpoints": [{"name": d.name, "val_loss": v} for d, v in losses.items()],
            "best": best.name if best else None,
            "best_val_loss": losses[best] if best else None,
        }
    return info


def verify_run(path: str | Path) -> list[tuple[Path, str]]:
    """(checkpoint, "intact" | "unverified (no checksums)" | "damaged: <why>") for a checkpoint or
    for every checkpoint of a run directory, oldest first."""
    path = Path(path)
    found = [path] if is_checkpoint(path) else list_checkpoints(path)
    if not found:
        resolve_checkpoint(path)  # raises the right one-line error
    results = []
    for directory in found:
        try:
            status = "intact" if verify_checkpoint(directory) else "unverified (no checksums)"
        except GptError as e:
            status = f"damaged: {e}"
        results.append((directory, status))
    return results
