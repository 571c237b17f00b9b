"""Checkpoint directories: written atomically, validated on load, never pickled.

A checkpoint is a directory that `gpt generate` can use on its own:

    model.safetensors        weights of the plain (uncompiled, unwrapped) model
    config.json              {"format": "gptcli.checkpoint", "version": 1, "model": ModelConfig,
                              "tokenizer_kind": ..., "step": ..., "val_loss": ..., ...}
    tokenizer.json           the tokenizer, self-contained

and, for checkpoints written during training, what `--resume` needs to continue exactly:

    train_state.safetensors  optimizer tensors, RNG states, the batch sampler's generator
    train_state.json         step, optimizer hyper-parameters, best val loss, ...

The files are written into a hidden temp directory that is renamed into place last, so a crash
leaves either no checkpoint or a complete one. Loading checks that every file is there, parses,
and matches the config, and reports problems as one-line GptErrors.
"""

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from gptcli.config import ModelConfig
from gptcli.errors import GptError, one_line_validation_error
from gptcli.models import build_model
from gptcli.storage.files import atomic_write_json, current_umask, read_json
from gptcli.storage.tensorfile import SafetensorsReader, write_safetensors
from gptcli.tokenizers import load_tokenizer
from gptcli.tokenizers.base import Tokenizer

FORMAT = "gptcli.checkpoint"
FORMAT_VERSION = 1
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"
STATE_TENSORS, STATE_JSON = "train_state.safetensors", "train_state.json"
REQUIRED = (WEIGHTS, CONFIG, TOKENIZER)
CHECKPOINTS = "checkpoints"  # the folder of a run directory that holds its checkpoints


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module | dict[str, torch.Tensor],
    model_config: ModelConfig,
    tokenizer: Tokenizer,
    info: dict[str, Any] | None = None,
    state_tensors: dict[str, torch.Tensor] | None = None,
    state_json: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (replacing one of the same name).

    `model` is the model, or its weights already gathered (sharded training) by our names.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700
        weights = model if isinstance(model, dict) else model_weights(model)
        write_safetensors(tmp / WEIGHTS, weights)
        config = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": model_config.model_dump(mode="json"),
            "tokenizer_kind": tokenizer.kind,
            **(info or {}),
        }
        atomic_write_json(tmp / CONFIG, config)
        tokenizer.save(tmp / TOKENIZER)
        if state_tensors is not None:
            write_safetensors(tmp / STATE_TENSORS, state_tensors)
            atomic_write_json(tmp / STATE_JSON, state_json or {})
        _fsync_tree(tmp)
        if directory.exists():  # replace: move the old one aside first so there is never a gap
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def model_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict of the plain model: no torch.compile / DDP prefixes, tied weights stored once."""
    model = unwrap(model)
    weights, seen = {}, {}
    for name, tensor in model.state_dict().items():
        ptr = (tensor.data_ptr(), tensor.shape)
        if ptr in seen:  # lm_head.weight is wte.weight when tied; safetensors refuses shared storage
            continue
        seen[ptr] = name
        weights[name] = tensor.detach().contiguous().cpu()
    return weights


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under torch.compile's and DDP's wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def all_finite(tensor: torch.Tensor, rows: int = 4096) -> bool:
    """isfinite over a big tensor in slices, so the check never holds a full-size mask."""
    flat = tensor.reshape(-1)
    step = rows * 1024
    return all(bool(torch.isfinite(flat[i : i + step]).all()) for i in range(0, flat.numel(), step))


def is_checkpoint(directory: Path) -> bool:
    return directory.is_dir() and all((directory / name).is_file() for name in REQUIRED)


def read_config(directory: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint, with its "model" validated into a ModelConfig."""
    directory = Path(directory)
    if not directory.is_dir():
        raise GptError(f"checkpoint not found: {directory}")
    missing = [name for name in REQUIRED if not (directory / name).is_file()]
    if missing:
        raise GptError(f"{directory} is not a complete checkpoint: missing {', '.join(missing)}")
    config = read_json(directory / CONFIG)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise GptError(f"{directory / CONFIG}: not a gptcli checkpoint config")
    if config.get("version") != FORMAT_VERSION:
        raise GptError(f"{directory / CONFIG}: unsupported checkpoint version {config.get('version')!r}")
    try:
        config["model"] = ModelConfig.model_validate(config.get("model"))
    except ValidationError as e:
        raise GptError(
            f"{directory / CONFIG}: invalid model config: {one_line_validation_error(e)}"
        ) from None
    if config["model"].vocab_size is None:
        raise GptError(f"{directory / CONFIG}: the model config has no vocab_size")
    return config


def load_weights(directory: Path, model: torch.nn.Module) -> None:
    """Load model.safetensors into `model` tensor by tensor, checking every key and shape."""
    path = Path(directory) / WEIGHTS
    model = unwrap(model)
    expected = model_weights(model)  # name -> the model's own tensor (tied weights once)
    with SafetensorsReader(path) as reader:
        names = reader.keys()
        missing = [k for k in expected if k not in names]
        unexpected = [k for k in names if k not in expected]
        if missing or unexpected:
            what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
            raise GptError(f"{path}: weights do not match the model config ({what})")
        for name, target in expected.items():
            if reader.shape(name) != tuple(target.shape):
                raise GptError(
                    f"{path}: {name} has shape {reader.shape(name)}, the config needs {tuple(target.shape)}"
                )
            if reader.dtype(name).is_floating_point != target.is_floating_point():
                # fp16/bf16 weights load into an fp32 model, but integers or booleans are no weights
                raise GptError(f"{path}: {name} is stored as {reader.dtype(name)}, not floating point")
            with torch.no_grad():
                if reader.dtype(name) == target.dtype:
                    reader.read_into(name, target)  # straight into the parameter: no second copy
                else:
                    target.copy_(reader.get(name))
            if target.is_floating_point() and not all_finite(target):
                raise GptError(f"{path}: {name} holds non-finite values")


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Tokenizer, dict]:
    """A checkpoint directory -> (model in eval mode on `device`, tokenizer, config dict)."""

    directory = Path(directory)
    config = read_config(directory)
    tokenizer = load_tokenizer(directory / TOKENIZER)
    if tokenizer.vocab_size != config["model"].vocab_size:
        raise GptError(
            f"{directory}: tokenizer has {tokenizer.vocab_size} tokens but the model was built for "
            f"{config['model'].vocab_size}"
        )
    model = build_model(config["model"], empty=True)  # every weight is filled from the file below
    load_weights(directory, model)
    return model.to(device).eval(), tokenizer, config


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints under a run directory's checkpoints/, oldest step first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(
        (d for d in folder.iterdir() if not d.name.startswith(".") and is_checkpoint(d)), key=_step_of
    )


def tidy_checkpoints(run_dir: Path) -> None:
    """Clean up after a save that was killed (SIGKILL, power loss) before it could clean up itself.

    A hidden `.step_N.*.tmp` is a checkpoint that never finished: removed. A hidden `.step_N.old`
    with no `step_N` beside it is a complete checkpoint caught between the two renames that
    replace one: put back.
    """
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if not entry.name.startswith("."):
            continue
        if entry.name.endswith(".tmp"):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.endswith(".old"):
            original = folder / entry.name[1 : -len(".old")]
            if original.exists():
                shutil.rmtree(entry, ignore_errors=True)
            elif is_checkpoint(entry):
                entry.rename(original)


def _step_of(directory: Path) -> int:
    try:
        return int(directory.name.rsplit("_", 1)[-1])
    except ValueError:
        return -1


def resolve_checkpoint(path: str | Path, best: bool = False) -> Path:
    """A checkpoint dir, or a run dir -> its newest (or best by val loss) complete checkpoint."""
    path = Path(path)
    if is_checkpoint(path):
        return path
    found = list_checkpoints(path)
    if not found:
        if not path.exists():
            raise GptError(f"checkpoint not found: {path}")
        if not (path / CHECKPOINTS).is_dir():
            read_config(path)  # not a run dir: name what the checkpoint is missing
        raise GptError(f"{path} holds no complete checkpoint (nothing under {path / CHECKPOINTS})")
    if not best:
        return found[-1]
    chosen = best_checkpoint(found)
    if chosen is None:
        raise GptError(f"{path}: no checkpoint has a validation loss to pick the best by")
    return chosen


def val_losses(checkpoints: list[Path]) -> dict[Path, float | None]:
    """Each checkpoint's recorded val loss (None where the val split was too small to measure)."""
    return {d: read_config(d).get("val_loss") for d in checkpoints}


def best_checkpoint(checkpoints: list[Path], losses: dict[Path, float | None] | None = None) -> Path | None:
    """The checkpoint with the lowest val loss (the oldest among equals); None if none has one."""
    losses = val_losses(checkpoints) if losses is None else losses
    scored = [d for d in checkpoints if losses[d] is not None]
    return min(scored, key=lambda d: losses[d]) if scored else None


def _fsync_tree(directory: Path) -> None:
    for f in directory.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
