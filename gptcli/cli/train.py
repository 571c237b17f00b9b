"""`gpt train`: flags -> TrainConfig (defaults < --config file < flags) -> gptcli.trainer.train."""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from gptcli.cli.common import QuietOption, VerboseOption, console, detail
from gptcli.config import TrainConfig, validate
from gptcli.errors import GptError
from gptcli.storage.files import read_json
from gptcli.training.distributed import is_main_process
from gptcli.training.run_dir import read_run_config
from gptcli.training.trainer import train

MODEL_FIELDS = {
    "arch", "n_layer", "n_head", "n_kv_head", "n_embd", "block_size", "dropout", "bias", "pos_emb", "rope_base",
    "window", "norm", "gelu", "tie_weights", "flash",
}  # fmt: skip

PANEL_DATA, PANEL_MODEL, PANEL_OPT, PANEL_EVAL, PANEL_SYS = (
    "Data",
    "Model",
    "Optimization",
    "Evaluation",
    "System",
)


def load_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise GptError(f"config file not found: {path}")
    data = read_json(path)
    if not isinstance(data, dict):
        raise GptError(f"{path}: a config file holds one JSON object")
    return data


def merge_config(base: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Flags the user gave (not None) override the base; model flags go into base['model']."""
    model = base.get("model") or {}
    if not isinstance(model, dict):
        raise GptError("the config's 'model' must be a JSON object of model settings")
    merged = {**base, "model": dict(model)}
    for key, value in flags.items():
        if value is None:
            continue
        if key in MODEL_FIELDS:
            merged["model"][key] = value
        else:
            merged[key] = value
    return merged


def train_command(
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            "-d",
            help="Corpus files/dirs/globs (default: the tokenizer's corpus).",
            rich_help_panel=PANEL_DATA,
        ),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            "-t",
            help="Tokenizer file/dir, or 'char' (default: ./tokenizer.json, else char).",
            rich_help_panel=PANEL_DATA,
        ),
    ] = None,
    val_data: Annotated[
        list[str] | None,
        typer.Option(
            help="Separate validation files (default: the last --val-fraction of the data).",
            rich_help_panel=PANEL_DATA,
        ),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            help="Fraction of tokens held out for validation (default: 0.1).", rich_help_panel=PANEL_DATA
        ),
    ] = None,
    data_cache: Annotated[
        Path | None,
        typer.Option(help="Folder for token caches (default: ~/.cache/gptcli).", rich_help_panel=PANEL_DATA),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run directory (default: out).", rich_help_panel=PANEL_DATA),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            help="gpt (the transformer) or lstm (the baseline: reads n-layer, n-embd, block-size, dropout) "
            "(default: gpt).",
            rich_help_panel=PANEL_MODEL,
        ),
    ] = None,
    n_layer: Annotated[
        int | None,
        typer.Option(help="Transformer blocks, or LSTM layers (default: 6).", rich_help_panel=PANEL_MODEL),
    ] = None,
    n_head: Annotated[
        int | None, typer.Option(help="Attention heads (default: 6).", rich_help_panel=PANEL_MODEL)
    ] = None,
    n_kv_head: Annotated[
        int | None,
        typer.Option(help="Key/value heads for GQA/MQA (default: n_head).", rich_help_panel=PANEL_MODEL),
    ] = None,
    n_embd: Annotated[
        int | None,
        typer.Option(help="Width; an LSTM's hidden size (default: 384).", rich_help_panel=PANEL_MODEL),
    ] = None,
    block_size: Annotated[
        int | None, typer.Option(help="Context length in tokens (default: 256).", rich_help_panel=PANEL_MODEL)
    ] = None,
    dropout: Annotated[
        float | None, typer.Option(help="Dropout (default: 0.0).", rich_help_panel=PANEL_MODEL)
    ] = None,
    bias: Annotated[
        bool | None,
        typer.Option(
            "--bias/--no-bias",
            help="Biases in Linear and LayerNorm (default: bias).",
            rich_help_panel=PANEL_MODEL,
        ),
    ] = None,
    pos_emb: Annotated[
        str | None,
        typer.Option(
            help="Positions: learned, rope, sinusoidal or none (default: learned).",
            rich_help_panel=PANEL_MODEL,
        ),
    ] = None,
    window: Annotated[
        int | None,
        typer.Option(
            help="Sliding-window attention span in tokens (default: off).", rich_help_panel=PANEL_MODEL
        ),
    ] = None,
    norm: Annotated[
        str | None,
        typer.Option(help="layernorm or rmsnorm (default: layernorm).", rich_help_panel=PANEL_MODEL),
    ] = None,
    flash: Annotated[
        bool | None,
        typer.Option(
            "--flash/--no-flash",
            help="Fused attention (else the explicit path) (default: flash).",
            rich_help_panel=PANEL_MODEL,
        ),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(help="Start from this checkpoint's weights (fine-tuning).", rich_help_panel=PANEL_MODEL),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Sequences per micro-batch (default: 12).", rich_help_panel=PANEL_OPT)
    ] = None,
    grad_accum: Annotated[
        int | None,
        typer.Option(help="Micro-batches per optimizer step (default: 1).", rich_help_panel=PANEL_OPT),
    ] = None,
    max_iters: Annotated[
        int | None, typer.Option(help="Optimizer steps (default: 2000).", rich_help_panel=PANEL_OPT)
    ] = None,
    max_time: Annotated[
        str | None, typer.Option(help="Stop after this long: 90, 90s, 15m, 1.5h.", rich_help_panel=PANEL_OPT)
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Peak learning rate (default: 1e-3).", rich_help_panel=PANEL_OPT)
    ] = None,
    min_lr: Annotated[
        float | None,
        typer.Option(
            help="Learning rate at the end of the cosine decay (default: lr/10).", rich_help_panel=PANEL_OPT
        ),
    ] = None,
    warmup_iters: Annotated[
        int | None, typer.Option(help="Linear warmup steps (default: 100).", rich_help_panel=PANEL_OPT)
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(help="AdamW weight decay on matrices (default: 0.1).", rich_help_panel=PANEL_OPT),
    ] = None,
    grad_clip: Annotated[
        float | None,
        typer.Option(help="Max gradient norm, 0 = off (default: 1.0).", rich_help_panel=PANEL_OPT),
    ] = None,
    eval_interval: Annotated[
        int | None,
        typer.Option(help="Steps between evals + checkpoints (default: 250).", rich_help_panel=PANEL_EVAL),
    ] = None,
    eval_iters: Annotated[
        int | None, typer.Option(help="Batches per eval (default: 20).", rich_help_panel=PANEL_EVAL)
    ] = None,
    log_interval: Annotated[
        int | None, typer.Option(help="Steps between log lines (default: 10).", rich_help_panel=PANEL_EVAL)
    ] = None,
    sample_tokens: Annotated[
        int | None,
        typer.Option(
            help="Tokens sampled at each eval, 0 = none (default: 200).", rich_help_panel=PANEL_EVAL
        ),
    ] = None,
    keep_checkpoints: Annotated[
        int | None,
        typer.Option(help="Newest checkpoints kept, plus the best (default: 3).", rich_help_panel=PANEL_EVAL),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="auto, fp32, bf16 or fp16 (default: auto: bf16 on GPU, else fp32).",
            rich_help_panel=PANEL_SYS,
        ),
    ] = None,
    compile: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile", help="torch.compile the model (default: no).", rich_help_panel=PANEL_SYS
        ),
    ] = None,
    activation_checkpointing: Annotated[
        bool,
        typer.Option(
            "--activation-checkpointing",
            help="Recompute activations in backward: less memory for long contexts (default: off).",
            rich_help_panel=PANEL_SYS,
        ),
    ] = False,
    fsdp: Annotated[
        bool | None,
        typer.Option(
            "--fsdp/--no-fsdp",
            help="Under torchrun: shard weights, gradients and AdamW state across ranks (FSDP2) (default: off).",
            rich_help_panel=PANEL_SYS,
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="auto, cpu, cuda, cuda:N or mps (default: auto).", rich_help_panel=PANEL_SYS),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed (default: 1337).", rich_help_panel=PANEL_SYS)
    ] = None,
    tensorboard: Annotated[
        bool | None,
        typer.Option(
            "--tensorboard/--no-tensorboard",
            help="Also write TensorBoard event files to RUN_DIR/tensorboard (default: no).",
            rich_help_panel=PANEL_SYS,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="JSON config file (e.g. a run's config.json); flags override it.",
            rich_help_panel=PANEL_SYS,
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the run in this directory from its newest checkpoint.", rich_help_panel=PANEL_SYS
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Start over in a run directory that holds another run.",
            rich_help_panel=PANEL_SYS,
        ),
    ] = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Train a GPT. With no flags: ./tokenizer.json (else characters), its corpus, a 6-layer model, into out/."""
    flags = {
        "data": data, "tokenizer": tokenizer, "val_data": val_data, "val_fraction": val_fraction,
        "data_cache": data_cache, "init_from": init_from,
        "arch": arch, "n_layer": n_layer, "n_head": n_head, "n_kv_head": n_kv_head, "n_embd": n_embd, "block_size": block_size,
        "dropout": dropout, "bias": bias, "pos_emb": pos_emb, "window": window, "norm": norm, "flash": flash,
        "batch_size": batch_size, "grad_accum": grad_accum, "max_iters": max_iters, "max_time": max_time,
        "lr": lr, "min_lr": min_lr, "warmup_iters": warmup_iters, "weight_decay": weight_decay, "grad_clip": grad_clip,
        "eval_interval": eval_interval, "eval_iters": eval_iters, "log_interval": log_interval,
        "sample_tokens": sample_tokens, "keep_checkpoints": keep_checkpoints,
        "precision": precision, "compile": compile, "device": device, "seed": seed,
        "activation_checkpointing": activation_checkpointing or None,  # unset: the config decides
        "fsdp": fsdp, "tensorboard": tensorboard,
    }  # fmt: skip
    if resume is not None:
        if config is not None or overwrite or out is not None:
            raise GptError(
                "--resume continues a run as it was: it cannot be combined with --config, --out or --overwrite"
            )
        run_dir = resume
        base = read_run_config(resume).model_dump(mode="json")
    else:
        run_dir = out or Path("out")
        base = load_config_file(config) if config else {}
    train_config = validate(TrainConfig, **merge_config(base, flags))
    if not is_main_process():  # under torchrun only rank 0 speaks
        quiet = console.quiet = True
    reporter = TrainReporter(quiet)
    try:
        summary = train(
            train_config, run_dir, resume=resume is not None, overwrite=overwrite, report=reporter
        )
    finally:
        reporter.close()
    best = f", best val {summary.best_val_loss:.4f}" if summary.best_val_loss is not None else ""
    final = f"train {summary.train_loss:.4f}" if summary.train_loss is not None else "no eval"
    if summary.val_loss is not None:
        final += f", val {summary.val_loss:.4f}"
    stopped = " (stopped by --max-time)" if summary.stop_reason == "max_time" else ""
    console.print(
        f"done{stopped}: {summary.step} steps in {summary.seconds:.0f}s; {final}{best}; checkpoint {summary.last_checkpoint}"
    )


class TrainReporter:
    """Shows a run: a live progress line on a terminal, plain log lines elsewhere."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.progress: Progress | None = None
        self.task = None

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if self.quiet:
            return
        getattr(self, f"on_{event}", lambda d: None)(data)

    def on_info(self, d: dict[str, Any]) -> None:
        for note in d["notes"]:
            console.print(f"[dim]{note}[/]")
        detail(f"settings: {json.dumps(d['config'])}")
        console.print(
            f"training {d['params'] / 1e6:.2f}M parameters on {d['device']} ({d['precision']}); "
            f"{d['train_tokens']:,} train / {d['val_tokens']:,} val tokens; {d['tokens_per_step']:,} tokens per step "
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

    def on_checkpoint(self, d: dict[str, Any]) -> None:
        console.print(f"[dim]saved {d['path']}[/]")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
