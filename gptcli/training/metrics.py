"""metrics.jsonl: one JSON object per line, written by the trainer and read by `gpt plot` and resume.

Two kinds of record (the one place their shape is defined):

    {"step": 10, "loss": 4.12, "lr": 0.001, "tokens_per_sec": 5120.0, "mfu": 0.41, "elapsed": 3.2}
    {"step": 250, "kind": "eval", "train_loss": 3.9, "val_loss": 4.0, "sample": "...", "elapsed": 61.0}

(a log step, an evaluation; "elapsed": seconds since the command started, for loss-per-second plots)

"mfu" only where the device's peak is known; "val_loss" is null when the val split is too small for
a block; "sample" is null with --sample-tokens 0. A resumed run redoes the steps after its
checkpoint, so readers let a later record for a step replace an earlier one, and skip a last line
that a crash cut short. The same records go to TensorBoard when asked for (gptcli.training.tensorboard).
This module needs only the standard library, so `gpt plot` reads runs without loading torch.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gptcli.errors import GptError

METRICS = "metrics.jsonl"


def log_record(
    step: int, loss: float, lr: float, tokens_per_sec: float, mfu: float | None, elapsed: float
) -> dict[str, Any]:
    record = {"step": step, "loss": loss, "lr": lr, "tokens_per_sec": round(tokens_per_sec, 1)}
    if mfu is not None:
        record["mfu"] = round(mfu, 4)
    return {**record, "elapsed": round(elapsed, 3)}


def eval_record(step: int, losses: dict[str, float], sample: str | None, elapsed: float) -> dict[str, Any]:
    return {
        "step": step,
        "kind": "eval",
        "train_loss": losses.get("train"),
        "val_loss": losses.get("val"),
        "sample": sample,
        "elapsed": round(elapsed, 3),
    }


def record_kind(record, where: str) -> str | None:
    """'log' or 'eval' for the records above (checked); None for a kind this version does not know."""
    if not isinstance(record, dict) or not is_int(record.get("step")):
        raise GptError(f"{where}: not a metrics record (a JSON object with an integer 'step')")
    kind = record.get("kind")
    if kind == "eval":
        keys, optional = ("train_loss", "val_loss"), True
    elif kind is None:
        kind, keys, optional = "log", ("loss", "lr"), False
    else:
        return None
    for key in keys:
        value = record.get(key)
        if not (is_number(value) or (optional and value is None)):
            raise GptError(f"{where}: '{key}' is {json.dumps(value)}, not a number")
    return kind


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    # NaN and inf are numbers too: the trainer stops on them, but a plot of the run should still work
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for every non-blank line; a last line cut short by a crash is skipped.

    Any other line that is not JSON is a one-line error naming the file and the line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GptError(f"{path} is not UTF-8 text") from None
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not text.endswith("\n"):
                continue  # the run was killed while writing this line
            raise GptError(f"{path}, line {number}: not JSON") from None


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop the records past the step a resumed run restarts from (they will be redone)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= after_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    path.write_text("".join(line + "\n" for line in kept))


class MetricsLog:
    """Appends records to RUN_DIR/metrics.jsonl (flushed at once, so a crash loses at most a line),
    and hands each to the TensorBoard writer when there is one."""

    def __init__(self, run_dir: Path, tensorboard=None):
        self.file = open(Path(run_dir) / METRICS, "a", encoding="utf-8")
        self.tensorboard = tensorboard

    def write(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
