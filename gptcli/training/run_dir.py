"""The run directory: one training run's files, and the rules for starting, restarting and pruning.

    RUN_DIR/config.json          the resolved TrainConfig (pass it back with --config)
    RUN_DIR/tokenizer.json       the tokenizer of the run
    RUN_DIR/metrics.jsonl        one JSON record per log step and per evaluation (gptcli.training.metrics)
    RUN_DIR/checkpoints/step_N/  checkpoints (gptcli.storage.checkpoint): the newest few + the best
    RUN_DIR/tensorboard/         with --tensorboard

config.json and tokenizer.json are written with the first checkpoint, so a run that dies before
it leaves nothing that looks like a run.
"""

import json
import shutil
from pathlib import Path

from pydantic import ValidationError

from gptcli.config import TrainConfig
from gptcli.errors import GptError, one_line_validation_error
from gptcli.storage import checkpoint as ckpt
from gptcli.storage.files import atomic_write_json
from gptcli.tokenizers.base import Tokenizer
from gptcli.training.metrics import METRICS
from gptcli.training.tensorboard import TENSORBOARD_DIR

RUN_CONFIG, RUN_TOKENIZER = "config.json", "tokenizer.json"
CHECKPOINTS = ckpt.CHECKPOINTS


def check_run_dir_free(run_dir: Path) -> None:
    """Refuse to mix two runs in one directory."""
    if (run_dir / RUN_CONFIG).exists() or (run_dir / CHECKPOINTS).exists():
        raise GptError(
            f"{run_dir} already holds a run: continue it with --resume {run_dir}, or start over with --overwrite"
        )


def clear_run_dir(run_dir: Path) -> None:
    """Remove what a run writes (and nothing else: --out may be a folder with other files)."""
    for name in (RUN_CONFIG, METRICS, RUN_TOKENIZER, CHECKPOINTS, TENSORBOARD_DIR):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def write_run_files(run_dir: Path, config: TrainConfig, tokenizer: Tokenizer) -> None:
    atomic_write_json(run_dir / RUN_CONFIG, json.loads(config.model_dump_json()))
    tokenizer.save(run_dir / RUN_TOKENIZER)


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """RUN_DIR/config.json as a TrainConfig; a missing or invalid one is a one-line error."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise GptError(f"{run_dir} is not a run directory (no config.json)")
    try:
        return TrainConfig.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as e:
        raise GptError(f"{path}: invalid run config: {one_line_validation_error(e)}") from None


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step_{step:07d}"


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints and the best by val loss."""
    found = ckpt.list_checkpoints(run_dir)
    if len(found) <= keep:
        return
    best = ckpt.best_checkpoint(found)
    for d in found[:-keep]:
        if d != best:
            shutil.rmtree(d, ignore_errors=True)
