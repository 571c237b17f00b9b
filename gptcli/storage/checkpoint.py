"""Checkpoint directories: written atomically, validated on load, never pickled.

A checkpoint is a directory that `gpt generate` can use on its own:

    model.safetensors        weights of the plain (uncompiled, unwrapped) model
    config.json              {"format": "gptcli.checkpoint", "version": 2, "model": ModelConfig,
                              "tokenizer_kind": ..., "step": ..., "val_loss": ..., ...}
    tokenizer.json           the tokenizer, self-contained
    checksums.json           the sha256 of each file above and below (gptcli.storage.checksums)

and, for checkpoints written during training, what `--resume` needs to continue exactly:

    train_state.safetensors  optimizer tensors, RNG states, the batch sampler's generator
    train_state.json         step, optimizer hyper-parameters, best val loss, ...

The files are written into a hidden temp directory that is renamed into place last, so a crash
leaves either no checkpoint or a complete one. Reading checks that every file is there, is what
was saved (its checksum), parses, and matches the config, and reports problems as one-line
GptErrors. Version 1 checkpoints (before checksums) still load, with a warning. Given a run
directory, `resolve_checkpoints` lists its checkpoints newest (or best) first.

This module handles files and tensors only: building the model and reading the tokenizer to load a
checkpoint whole (`load_checkpoint`, `load_newest`: the newest or best intact checkpoint of a run,
saying which damaged ones it passed over) are gptcli.loading's.
"""

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from pydantic import ValidationError

from gptcli.config import ModelConfig
from gptcli.errors import GptError, one_line_validation_error
from gptcli.storage.checksums import (
    CHECKSUMS,
    DamagedCheckpoint,
    StreamHash,
    check_digest,
    read_checksums,
    verify_file,
    write_checksums,
)
from gptcli.storage.files import atomic_write_json, current_umask, read_json, sha256_file
from gptcli.storage.tensorfile import SafetensorsReader, bytes_of, write_safetensors

FORMAT = "gptcli.checkpoint"
FORMAT_VERSION = 2  # 2: with checksums.json; 1: before it (still read)
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"
STATE_TENSORS, STATE_JSON = "train_state.safetensors", "train_state.json"
REQUIRED = (WEIGHTS, CONFIG, TOKENIZER)
CHECKPOINTS = "checkpoints"  # the folder of a run directory that holds its checkpoints


class SavedTokenizer(Protocol):
    """What save_checkpoint needs of a tokenizer (gptcli.tokenizers.Tokenizer is one)."""

    kind: str

    def save(self, path: Path) -> None: ...


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module | dict[str, torch.Tensor],
    model_config: ModelConfig,
    tokenizer: SavedTokenizer,
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
        for name, tensor in weights.items():  # checked once here, so a verified load need not
            if tensor.is_floating_point() and not all_finite(tensor):
                raise GptError(f"cannot save {directory.name}: {name} holds non-finite values")
        digests = {WEIGHTS: write_safetensors(tmp / WEIGHTS, weights)}
        config = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": model_config.model_dump(mode="json"),
            "tokenizer_kind": tokenizer.kind,
            **(info or {}),
        }
        digests[CONFIG] = atomic_write_json(tmp / CONFIG, config)
        tokenizer.save(tmp / TOKENIZER)
        digests[TOKENIZER] = sha256_file(tmp / TOKENIZER).hexdigest()  # a small file: read back
        if state_tensors is not None:
            digests[STATE_TENSORS] = write_safetensors(tmp / STATE_TENSORS, state_tensors)
            digests[STATE_JSON] = atomic_write_json(tmp / STATE_JSON, state_json or {})
        write_checksums(tmp, digests)
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
    """config.json of a checkpoint, its "model" validated into a ModelConfig.

    Not checked against its checksum here (listing a run's checkpoints reads every config):
    whatever loads a checkpoint checks every file it uses (gptcli.loading.load_checkpoint,
    verify_checkpoint)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        inside = f" (the checkpoint it is in: {directory.parent})" if is_checkpoint(directory.parent) else ""
        raise GptError(
            f"{directory} is a file, not a checkpoint: give a checkpoint directory ({', '.join(REQUIRED)}) "
            f"or a run directory holding checkpoints{inside}"
        )
    if not directory.is_dir():
        raise GptError(f"checkpoint not found: {directory}")
    missing = [name for name in REQUIRED if not (directory / name).is_file()]
    if missing:
        raise GptError(f"{directory} is not a complete checkpoint: missing {', '.join(missing)}")
    config = read_json(directory / CONFIG)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise GptError(f"{directory / CONFIG}: not a gptcli checkpoint config")
    if config.get("version") not in (1, FORMAT_VERSION):
        raise GptError(f"{directory / CONFIG}: unsupported checkpoint version {config.get('version')!r}")
    try:
        config["model"] = ModelConfig.model_validate(config.get("model"))
    except ValidationError as e:
        raise GptError(
            f"{directory / CONFIG}: invalid model config: {one_line_validation_error(e)}"
        ) from None
    if config["model"].vocab_size is None:
        raise GptError(f"{directory / CONFIG}: the model config has no vocab_size")
    if config["version"] >= 2 and not (directory / CHECKSUMS).exists():
        raise DamagedCheckpoint(f"{directory}: missing {CHECKSUMS} (its files cannot be verified)")
    return config


def checkpoint_digests(directory: Path) -> dict[str, str] | None:
    """The checksums recorded for a checkpoint's files; None for one written before checksums."""
    return read_checksums(directory) if (directory / CHECKSUMS).exists() else None


def verify_checkpoint(directory: str | Path) -> bool:
    """Check every file of a checkpoint against its checksum: True if intact, False if it has no
    checksums (format version 1); a damaged one raises a one-line error naming the file."""
    directory = Path(directory)
    read_config(directory)  # complete, and config.json intact
    digests = checkpoint_digests(directory)
    if digests is None:
        return False
    present = [n for n in (*REQUIRED, STATE_TENSORS, STATE_JSON) if (directory / n).exists()]
    for name in dict.fromkeys([*present, *digests]):
        verify_file(directory / name, digests)
    return True


def warn_unverified(directory: Path, warn: "Warn | None") -> None:
    (warn or default_warn)(f"{directory} has no checksums (written before they existed): loaded unverified")


def default_warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


Warn = Callable[[str], None]


def load_weights(
    directory: Path, model: torch.nn.Module, tensors: dict[str, torch.Tensor] | None = None
) -> None:
    """Load model.safetensors into `model` tensor by tensor, checking every key and shape, then the
    file's checksum (hashed in a worker thread from the bytes just read). `tensors`: the model's
    tensors the file holds, by name, when it holds only some (a LoRA adapter's: lora.adapter_weights)."""
    path = Path(directory) / WEIGHTS
    digests = checkpoint_digests(Path(directory))
    if digests is None:
        return _read_weights(path, model, tensors=tensors)
    hasher = StreamHash()
    hashed = _read_weights(path, model, hasher.feed, tensors)
    actual = hasher.result()
    if not hashed:  # the bytes read were not the whole file in order: hash the file itself
        actual = sha256_file(path).hexdigest()
    check_digest(path, digests, actual)


def _read_weights(
    path: Path,
    model: torch.nn.Module,
    feed: Callable[[memoryview], None] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> bool:
    """Read every tensor into the model, in file order; with `feed`, hand it the file's bytes as
    they are read. -> whether the bytes fed make up the whole file."""
    model = unwrap(model)
    expected = model_weights(model) if tensors is None else tensors  # name -> the tensor to fill
    with SafetensorsReader(path) as reader:
        names = reader.keys()
        missing = [k for k in expected if k not in names]
        unexpected = [k for k in names if k not in expected]
        if missing or unexpected:
            what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
            raise GptError(f"{path}: weights do not match the model config ({what})")
        order = reader.in_file_order()
        same_bytes = reader.is_packed() and all(reader.dtype(n) == expected[n].dtype for n in order)
        if feed is not None and same_bytes:
            feed(reader.header_bytes)
        for name in order:
            target = expected[name]
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
            if feed is not None and same_bytes:
                feed(bytes_of(target))  # hashed from memory while the next tensor is read
            elif target.is_floating_point() and not all_finite(target):
                # (a file that matches its checksum is the file saved, and saving checked this)
                raise GptError(f"{path}: {name} holds non-finite values")
    return feed is not None and same_bytes


def damage_behind(directory: Path, error: GptError) -> DamagedCheckpoint | None:
    """`error` as a DamagedCheckpoint when a file of the checkpoint is not what was saved. Only the
    checksums are checked: parsing the files again would raise `error` itself, and name it twice."""
    try:
        digests = checkpoint_digests(directory)
        for name in digests or ():
            verify_file(directory / name, digests)
    except GptError as damage:
        path = str(damage).partition(": ")[0]  # both usually name the same file first: name it once
        return DamagedCheckpoint(f"{damage}; {str(error).removeprefix(path + ': ')}")
    return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints under a run directory's checkpoints/, oldest step first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(
        (d for d in folder.iterdir() if not d.name.startswith(".") and is_checkpoint(d)), key=_step_of
    )


def _step_of(directory: Path) -> int:
    try:
        return int(directory.name.rsplit("_", 1)[-1])
    except ValueError:
        return -1


def resolve_checkpoint(path: str | Path, best: bool = False) -> Path:
    """A checkpoint dir, or a run dir -> its newest (or best by val loss) complete checkpoint."""
    return resolve_checkpoints(path, best)[0]


def resolve_checkpoints(path: str | Path, best: bool = False) -> list[Path]:
    """What `path` names, most wanted first: a checkpoint dir itself, or a run dir's complete
    checkpoints newest first (with best: those with a val loss, lowest first)."""
    path = Path(path)
    if is_checkpoint(path):
        return [path]
    found = list_checkpoints(path)
    if not found:
        if not path.exists():
            raise GptError(f"checkpoint not found: {path}")
        if not (path / CHECKPOINTS).is_dir():
            read_config(path)  # not a run dir: name what the checkpoint is missing
        raise GptError(f"{path} holds no complete checkpoint (nothing under {path / CHECKPOINTS})")
    if not best:
        return found[::-1]
    losses = val_losses(found)
    scored = sorted((d for d in found if losses[d] is not None), key=lambda d: losses[d])
    if not scored:
        raise GptError(f"{path}: no checkpoint has a validation loss to pick the best by")
    return scored


def newest_intact(run_dir: Path, warn: Warn) -> Path | None:
    """The newest checkpoint of a run whose every file is intact (for --resume); None if none is.
    Each damaged one passed over is named through `warn`."""
    for directory in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(directory)
            return directory
        except GptError as e:
            warn(f"{directory.name} is damaged, passed over ({e})")
    return None


def val_losses(checkpoints: list[Path]) -> dict[Path, float | None]:
    """Each checkpoint's recorded val loss (None where the val split was too small to measure, or
    where its config.json is damaged: a damaged checkpoint is never the best)."""
    losses = {}
    for d in checkpoints:
        try:
            losses[d] = read_config(d).get("val_loss")
        except DamagedCheckpoint:
            losses[d] = None
    return losses


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
