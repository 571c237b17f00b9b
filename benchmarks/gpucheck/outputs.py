"""Reading what the commands print and write: the last JSON line, a run's metrics.jsonl, the
summary line's stop reason; and the units the figures are shown in."""

import json
import math
from pathlib import Path
from typing import Any

from gpucheck.base import CheckFailed


def last_json(output: str) -> dict[str, Any]:
    """The last line of the output that is a JSON object (what `--json` prints last)."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise CheckFailed("no JSON object in the output")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records (a last line cut short is skipped), or a CheckFailed."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise CheckFailed(f"{path} was not written")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def run_figures(run_dir: Path, expect_step: int | None = None) -> dict[str, Any]:
    """A training run's figures from its metrics.jsonl: steps, losses, speed, MFU."""
    records = read_metrics(run_dir)
    logs = [r for r in records if "loss" in r]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not logs or not evals:
        raise CheckFailed(f"{run_dir}/metrics.jsonl has no log or no eval record")
    step = max(r["step"] for r in logs)
    if expect_step is not None and step != expect_step:
        raise CheckFailed(f"the run stopped at step {step}, not {expect_step}")
    vals = [r["val_loss"] for r in evals if r.get("val_loss") is not None]
    if not vals or not all(math.isfinite(v) for v in vals):
        raise CheckFailed(f"val losses missing or not finite: {vals}")
    rates = sorted(r["tokens_per_sec"] for r in logs[1:] if "tokens_per_sec" in r)  # the first: compile
    mfus = [r["mfu"] for r in logs if r.get("mfu") is not None]
    return {
        "steps": step,
        "val_loss": vals[-1],
        "best_val_loss": min(vals),
        "tokens_per_s_median": rates[len(rates) // 2] if rates else None,
        "mfu_last": mfus[-1] if mfus else None,
    }


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:07d}"


def stop_reason(output: str) -> str | None:
    """The summary line's reason: 'target_loss', 'max_time', ...; None for max_iters."""
    for line in reversed(output.splitlines()):
        if line.startswith("done"):
            for reason, words in (
                ("target_loss", "--target-loss"),
                ("max_time", "--max-time"),
                ("early_stop", "--early-stop"),
            ):
                if words in line.split(":")[0]:
                    return reason
            return "max_iters"
    return None


# ---------------------------------------------------------------------------------------------
# units


def gib(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / 2**30


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"
