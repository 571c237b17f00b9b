"""`gpt train`: flags -> TrainConfig (defaults < --config preset or file < flags) -> trainer.train.

Every option but the run controls (--config, --resume, --out, --overwrite, --best) sets the
TrainConfig or ModelConfig field of its name; its help and default come from that field. Options
left unset are None here, so a --config preset or file (gptcli.presets), or a resumed run's
config.json, keeps its values.

Prompt/completion pairs (any format gpt finetune reads): `--arch encdec --data PAIRS` trains an
encoder-decoder on them (padded, never packed; the steps are --max-iters, as for text);
`--pairs --data PAIRS` trains a GPT from scratch on them rendered by ChatML, the loss on the
replies (its checkpoints carry the template). Both hold out the same pairs (--val-fraction, --seed).
"""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gptcli.cli.common import (
    QuietOption,
    VerboseOption,
    command_started,
    config_option,
    console,
    detail,
    device_option,
    precision_option,
    validate_options,
    warn,
)
from gptcli.config import Arch, ModelConfig, Norm, OptimizerName, PosEmb, Precision, Schedule, TrainConfig
from gptcli.errors import GptError, OptionError
from gptcli.presets import config_base, merge_config, presets_help

RUN_CONTROLS = {"config", "resume", "out", "overwrite", "best", "quiet", "verbose"}  # how to run, not what
DATA, MODEL, OPT, EVAL, SYSTEM = "Data", "Model", "Optimization", "Evaluation", "System"
STOPPED_BY = {
    "max_time": " (stopped by --max-time)",
    "target_loss": " (stopped at --target-loss)",
    "early_stop": " (stopped by --early-stop)",
}
PAIRS_HELP = (
    "The data are prompt/completion pairs (or conversations): a GPT learns the replies, each rendered "
    "by the ChatML template (the encoder-decoder's baseline). An encoder-decoder (arch encdec) reads "
    "pairs as they are, without this."
)
PAIRS = {"epochs": None}  # TrainConfig.chat of --pairs: ChatML, packed, max_iters as gpt train's


def _train(name: str, *names: str, panel: str, **options):
    """The option that sets TrainConfig.<name>."""
    return config_option(TrainConfig, name, *names, rich_help_panel=panel, **options)


def _model(name: str, *names: str, **options):
    """The option that sets ModelConfig.<name>."""
    return config_option(ModelConfig, name, *names, rich_help_panel=MODEL, **options)


def train_command(
    data: Annotated[list[str] | None, _train("data", "--data", "-d", panel=DATA)] = None,
    tokenizer: Annotated[str | None, _train("tokenizer", "--tokenizer", "-t", panel=DATA)] = None,
    val_data: Annotated[list[str] | None, _train("val_data", panel=DATA)] = None,
    val_fraction: Annotated[float | None, _train("val_fraction", panel=DATA)] = None,
    text_field: Annotated[str | None, _train("text_field", panel=DATA)] = None,
    split: Annotated[str | None, _train("split", panel=DATA)] = None,
    skip_bad_records: Annotated[
        bool | None, _train("skip_bad_records", "--skip-bad-records", panel=DATA)
    ] = None,
    data_cache: Annotated[Path | None, _train("data_cache", panel=DATA)] = None,
    chat: Annotated[bool | None, typer.Option("--pairs", help=PAIRS_HELP, rich_help_panel=DATA)] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default: out).", rich_help_panel=DATA)
    ] = None,
    arch: Annotated[Arch | None, _model("arch")] = None,
    n_layer: Annotated[int | None, _model("n_layer")] = None,
    n_enc_layer: Annotated[int | None, _model("n_enc_layer")] = None,
    n_head: Annotated[int | None, _model("n_head")] = None,
    n_kv_head: Annotated[int | None, _model("n_kv_head")] = None,
    n_embd: Annotated[int | None, _model("n_embd")] = None,
    block_size: Annotated[int | None, _model("block_size")] = None,
    dropout: Annotated[float | None, _model("dropout")] = None,
    bias: Annotated[bool | None, _model("bias", "--bias/--no-bias")] = None,
    pos_emb: Annotated[PosEmb | None, _model("pos_emb")] = None,
    window: Annotated[int | None, _model("window")] = None,
    norm: Annotated[Norm | None, _model("norm")] = None,
    flash: Annotated[bool | None, _model("flash", "--flash/--no-flash")] = None,
    init_from: Annotated[Path | None, _train("init_from", panel=MODEL)] = None,
    best: Annotated[
        bool,
        typer.Option(
            "--best",
            help="With --init-from RUN_DIR: its checkpoint with the lowest val loss (not its newest).",
            rich_help_panel=MODEL,
        ),
    ] = False,
    batch_size: Annotated[int | None, _train("batch_size", panel=OPT)] = None,
    grad_accum: Annotated[int | None, _train("grad_accum", panel=OPT)] = None,
    max_iters: Annotated[int | None, _train("max_iters", panel=OPT)] = None,
    max_time: Annotated[str | None, _train("max_time", panel=OPT)] = None,
    target_loss: Annotated[float | None, _train("target_loss", panel=EVAL)] = None,
    early_stop: Annotated[int | None, _train("early_stop", panel=EVAL)] = None,
    lr: Annotated[float | None, _train("lr", panel=OPT)] = None,
    min_lr: Annotated[float | None, _train("min_lr", panel=OPT)] = None,
    warmup_iters: Annotated[int | None, _train("warmup_iters", panel=OPT)] = None,
    schedule: Annotated[Schedule | None, _train("schedule", panel=OPT)] = None,
    decay_fraction: Annotated[float | None, _train("decay_fraction", panel=OPT)] = None,
    optimizer: Annotated[OptimizerName | None, _train("optimizer", panel=OPT)] = None,
    muon_lr: Annotated[float | None, _train("muon_lr", panel=OPT)] = None,
    muon_momentum: Annotated[float | None, _train("muon_momentum", panel=OPT)] = None,
    weight_decay: Annotated[float | None, _train("weight_decay", panel=OPT)] = None,
    grad_clip: Annotated[float | None, _train("grad_clip", panel=OPT)] = None,
    eval_interval: Annotated[int | None, _train("eval_interval", panel=EVAL)] = None,
    eval_iters: Annotated[int | None, _train("eval_iters", panel=EVAL)] = None,
    log_interval: Annotated[int | None, _train("log_interval", panel=EVAL)] = None,
    sample_tokens: Annotated[int | None, _train("sample_tokens", panel=EVAL)] = None,
    keep_checkpoints: Annotated[int | None, _train("keep_checkpoints", panel=EVAL)] = None,
    precision: Annotated[Precision | None, precision_option(rich_help_panel=SYSTEM)] = None,
    compile: Annotated[bool | None, _train("compile", "--compile/--no-compile", panel=SYSTEM)] = None,
    activation_checkpointing: Annotated[
        bool | None, _train("activation_checkpointing", "--activation-checkpointing", panel=SYSTEM)
    ] = None,
    fsdp: Annotated[bool | None, _train("fsdp", "--fsdp/--no-fsdp", panel=SYSTEM)] = None,
    device: Annotated[str | None, device_option(rich_help_panel=SYSTEM)] = None,
    seed: Annotated[int | None, _train("seed", panel=SYSTEM)] = None,
    tensorboard: Annotated[
        bool | None, _train("tensorboard", "--tensorboard/--no-tensorboard", panel=SYSTEM)
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            metavar="NAME|FILE",
            help="A preset, or a JSON config file (e.g. a run's config.json); flags override it. "
            f"Presets: {presets_help()}.",
            rich_help_panel=SYSTEM,
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the run in this directory from its newest checkpoint.", rich_help_panel=SYSTEM
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Start over in a run directory that holds another run.",
            rich_help_panel=SYSTEM,
        ),
    ] = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Train a GPT. With no flags: ./tokenizer.json (else characters), its corpus, a 6-layer model, into out/."""
    flags = {name: value for name, value in locals().items() if name not in RUN_CONTROLS}
    started = command_started()  # --max-time counts from the process's start: loading torch is part
    flags["chat"] = PAIRS if chat else None  # --pairs: conversations, trained from scratch
    if resume is not None:
        if config is not None or overwrite or out is not None or best or chat:
            raise GptError(
                "--resume continues a run as it was: it cannot be combined with --config, --out, "
                "--overwrite, --best or --pairs"
            )
        from gptcli.training.run_dir import read_run_config  # torch loads only once a command runs

        run_dir, base = resume, read_run_config(resume).model_dump(mode="json")
    else:
        run_dir, base = out or Path("out"), config_base(config) if config else {}
    train_config = validate_options(TrainConfig, flags, merge_config(base, flags))
    if best:
        train_config = best_init_from(train_config)
    print_summary(run_training(train_config, run_dir, resume is not None, overwrite, quiet, started))


def print_summary(summary) -> None:
    """The run's closing line: steps, time, final losses, best val loss, last checkpoint."""
    best = f", best val {summary.best_val_loss:.4f}" if summary.best_val_loss is not None else ""
    final = f"train {summary.train_loss:.4f}" if summary.train_loss is not None else "no eval"
    if summary.val_loss is not None:
        final += f", val {summary.val_loss:.4f}"
    stopped = STOPPED_BY.get(summary.stop_reason, "")
    steps = f"{summary.step} step" + ("" if summary.step == 1 else "s")
    console.print(
        f"done{stopped}: {steps} in {summary.seconds:.0f}s; {final}{best}; checkpoint {summary.last_checkpoint}"
    )


def best_init_from(config: TrainConfig) -> TrainConfig:
    """--best: the checkpoint of --init-from's run directory with the lowest val loss, in its place
    (so that is what the run records; plan_run checks its files)."""
    if config.init_from is None:
        raise OptionError(
            "--best picks the checkpoint of --init-from's run directory: give --init-from RUN_DIR"
        )
    from gptcli.storage.checkpoint import resolve_checkpoint  # torch loads only once a command runs

    return config.model_copy(update={"init_from": resolve_checkpoint(config.init_from, best=True)})


def run_training(
    config: TrainConfig,
    run_dir: Path,
    resume: bool,
    overwrite: bool,
    quiet: bool,
    start_time: float | None = None,
):
    """The library call, shown by a TrainReporter (silent on every rank but 0 under torchrun)."""
    from gptcli.training.distributed import is_main_process  # torch loads only once a command runs
    from gptcli.training.trainer import train

    if not is_main_process():
        quiet = console.quiet = True
    reporter = TrainReporter(quiet)
    try:
        return train(
            config, run_dir, resume=resume, overwrite=overwrite, report=reporter, start_time=start_time
        )
    finally:
        reporter.close()


class TrainReporter:
    """Shows a run: a live progress line on a terminal, plain log lines elsewhere."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.progress: Progress | None = None
        self.task = None

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "info":  # a damaged checkpoint passed over, one without checksums
            for note in data["notes"]:
                if note.startswith("warning: "):
                    warn(note.removeprefix("warning: "))
        if self.quiet:
            return
        getattr(self, f"on_{event}", lambda d: None)(data)

    def on_info(self, d: dict[str, Any]) -> None:
        for note in d["notes"]:
            if not note.startswith("warning: "):  # warnings went out already, even under --quiet
                console.print(note, style="dim", markup=False)
        detail(f"settings: {json.dumps(d['config'])}")
        console.print(
            f"training {d['params'] / 1e6:.2f}M parameters on {d['device']} ({d['precision']}); "
            f"{d['train_tokens']:,} train / {d['val_tokens']:,} val tokens; {'up to ' * d['rows_cut']}"
            f"{d['tokens_per_step']:,} tokens per step "
            f"-> {d['run_dir']}"
        )
        if self.live:
            self.progress = Progress(
                TextColumn("step {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self.task = self.progress.add_task(
                "train", total=d["max_iters"], completed=d["start_step"], status=""
            )
            self.progress.start()

    def on_step(self, d: dict[str, Any]) -> None:
        mfu = f" | mfu {d['mfu'] * 100:.1f}%" if "mfu" in d else ""
        status = f"loss {d['loss']:.4f} | lr {d['lr']:.2e} | {d['tokens_per_sec']:,.0f} tok/s{mfu}"
        if self.progress is not None:
            self.progress.update(self.task, completed=d["step"], status=status)
        else:
            console.print(f"step {d['step']}: {status}")

    def on_eval(self, d: dict[str, Any]) -> None:
        val = f", val {d['val_loss']:.4f}" if d["val_loss"] is not None else ""
        console.print(f"[bold]step {d['step']}[/]: train {d['train_loss']:.4f}{val}")
        if d["sample"]:
            console.print(d["sample"].strip()[:400], style="dim", markup=False)

    def on_note(self, d: dict[str, Any]) -> None:
        console.print(d["message"], style="dim", markup=False)

    def on_checkpoint(self, d: dict[str, Any]) -> None:
        console.print(f"[dim]saved {d['path']}[/]")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
