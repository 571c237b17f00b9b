"""`gpt plot`: a training run's loss and learning-rate curves as an image (see gptcli.plot)."""

from pathlib import Path
from typing import Annotated

import typer

from gptcli.cli.common import QuietOption, VerboseOption, console
from gptcli.plot import plot_runs


def plot_command(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN_DIR", help="Run directories (their metrics.jsonl); several are overlaid."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Image to write: .png, .svg or .pdf (default: RUN_DIR/loss.png)."),
    ] = None,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Plot the train/eval loss and learning-rate curves of training runs (needs matplotlib: the plot extra)."""
    path = plot_runs(run_dirs, out or run_dirs[0] / "loss.png")
    console.print(f"wrote {path}", markup=False)
