"""Loss and learning-rate curves of training runs, drawn from their metrics.jsonl (`gpt plot`).

    from gptcli.plot import plot_runs, read_metrics
    curves = read_metrics("out")           # Curves: steps/loss/lr per log step, eval_steps/train_loss/val_loss
    plot_runs(["out"], "out/loss.png")     # one figure: losses on top, learning rate below

Reading needs nothing beyond the standard library; drawing needs matplotlib, an optional extra
(`pip install 'gptcli[plot]'`). Several runs (say the LSTM baseline and a GPT on the same corpus)
are overlaid in one figure, one colour per run.
"""

import io
from dataclasses import dataclass, field
from pathlib import Path

from gptcli.errors import GptError
from gptcli.storage.files import atomic_write_bytes
from gptcli.training.metrics import METRICS, read_records, record_kind

FORMATS = (".png", ".svg", ".pdf")


@dataclass
class Curves:
    """One run's metrics as parallel lists, in step order."""

    name: str
    steps: list[int] = field(default_factory=list)  # log steps
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    train_loss: list[float | None] = field(default_factory=list)
    val_loss: list[float | None] = field(default_factory=list)  # None: val split too small for a block


def read_metrics(run_dir: str | Path) -> Curves:
    """The curves of the run in `run_dir`; a missing, empty or malformed metrics file is a GptError.

    A record for a step seen before replaces the earlier one (a resumed run redoes the steps after its
    checkpoint), and a last line cut short by a crash is skipped, as `--resume` does.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GptError(f"run directory not found: {run_dir}")
    path = run_dir / METRICS
    if not path.is_file():
        raise GptError(f"{run_dir} holds no {METRICS}: is it a `gpt train` run directory?")
    logs: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    for number, record in read_records(path):
        kind = record_kind(record, f"{path}, line {number}")
        if kind == "eval":
            evals[record["step"]] = record
        elif kind == "log":
            logs[record["step"]] = record
    if not logs and not evals:
        raise GptError(f"{path} holds no metrics yet: the run has not logged a step")
    curves = Curves(name=str(run_dir))
    for step in sorted(logs):
        curves.steps.append(step)
        curves.loss.append(logs[step]["loss"])
        curves.lr.append(logs[step]["lr"])
    for step in sorted(evals):
        curves.eval_steps.append(step)
        curves.train_loss.append(evals[step].get("train_loss"))
        curves.val_loss.append(evals[step].get("val_loss"))
    return curves


def plot_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Draw the runs' loss curves (top) and learning rates (bottom) into `out` (.png, .svg or .pdf)."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise GptError(f"cannot write a plot as {out.name!r}: use a name ending in {', '.join(FORMATS)}")
    if not run_dirs:
        raise GptError("no run directory to plot")
    figure = draw([read_metrics(d) for d in run_dirs])
    buffer = io.BytesIO()
    figure.savefig(buffer, format=out.suffix[1:].lower(), dpi=120)
    atomic_write_bytes(out, buffer.getvalue())  # never a half-written image
    return out


def draw(runs: list[Curves]):
    """A matplotlib Figure of the runs' curves."""
    try:
        # a bare Figure, not pyplot: no GUI backend and no global state; PNG is rendered by Agg
        from matplotlib.figure import Figure
    except ImportError:
        raise GptError("plotting needs matplotlib: pip install 'gptcli[plot]'") from None
    figure = Figure(figsize=(9, 6.5), layout="constrained")
    loss_ax, lr_ax = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    several = len(runs) > 1
    for i, run in enumerate(runs):
        # one run: a colour per curve; several: a colour per run, the curves told apart by their style
        colors = [f"C{i}"] * 3 if several else ["C0", "C1", "C3"]
        prefix = f"{run.name}: " if several else ""
        if run.steps:
            loss_ax.plot(run.steps, run.loss, color=colors[0], alpha=0.5, lw=1, label=f"{prefix}train loss")
            lr_ax.plot(run.steps, run.lr, color=colors[0], lw=1)
        evals = ((run.train_loss, colors[1], "--", "eval train"), (run.val_loss, colors[2], "-", "eval val"))
        for values, color, style, what in evals:
            points = [(s, v) for s, v in zip(run.eval_steps, values) if v is not None]
            if points:
                loss_ax.plot(*zip(*points), style, marker="o", ms=4, color=color, label=f"{prefix}{what}")
    loss_ax.set_title("training runs" if several else runs[0].name)
    loss_ax.set_ylabel("loss")
    loss_ax.grid(True, alpha=0.3)
    loss_ax.legend(fontsize="small")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("step")
    lr_ax.grid(True, alpha=0.3)
    return figure
