"""TensorBoard event files for `gpt train --tensorboard`: the numbers of metrics.jsonl, for watching a run live.

    tensorboard --logdir out/tensorboard

Scalars: train/loss, train/lr, train/tokens_per_sec (and train/mfu) at log steps; eval/train_loss and
eval/val_loss at evals, with the sample as text. TensorBoard is an optional extra
(`pip install 'gptcli[tensorboard]'`), checked before training starts.
"""

from pathlib import Path
from typing import Any

from gptcli.errors import GptError

TENSORBOARD_DIR = "tensorboard"  # inside the run directory


def summary_writer_class():
    """torch's SummaryWriter, or a one-line error when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise GptError(
            "--tensorboard needs the tensorboard package: pip install 'gptcli[tensorboard]'"
        ) from None
    return SummaryWriter


class TensorBoardLog:
    """Writes each metrics record (see gptcli.training.metrics) as TensorBoard summaries."""

    def __init__(self, run_dir: Path, start_step: int):
        writer_class = summary_writer_class()
        # a resumed run redoes the steps after its checkpoint: purge_step makes TensorBoard drop the
        # old events from there on, as the trainer drops their lines from metrics.jsonl
        purge_step = start_step + 1 if start_step > 0 else None
        self.writer = writer_class(str(run_dir / TENSORBOARD_DIR), purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        step = record["step"]
        if record.get("kind") == "eval":
            for key in ("train_loss", "val_loss"):
                if record.get(key) is not None:
                    self.writer.add_scalar(f"eval/{key}", record[key], step)
            if record.get("sample"):
                # TensorBoard renders text as Markdown: indented, the sample keeps its line breaks
                text = "\n".join("    " + line for line in record["sample"].splitlines())
                self.writer.add_text("eval/sample", text, step)
        else:
            for key in ("loss", "lr", "tokens_per_sec", "mfu"):
                if key in record:
                    self.writer.add_scalar(f"train/{key}", record[key], step)

    def close(self) -> None:
        self.writer.close()
