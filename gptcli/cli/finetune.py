"""`gpt finetune`: a base checkpoint + conversations -> an assistant, with the one Trainer of `gpt train`.

    gpt finetune --checkpoint BASE --data chats.jsonl --out RUN [--format F] [--chat-template FILE.jinja]
                 [--train-on-prompt] [--pack/--no-pack] [--skip-bad] [--epochs N]   (+ gpt train's options)

The options are gpt train's (the same TrainConfig fields, the same help), less those a base fixes
(its shape, its tokenizer) or plain text needs; the defaults suit fine-tuning (FINETUNE_DEFAULTS:
a small learning rate, a few epochs, frequent evals). The conversations, their template and
their loss mask become TrainConfig.chat (gptcli.training.chat_data does the rest).
"""

import inspect
import re
from pathlib import Path
from typing import Annotated, Literal, get_args

import typer

from gptcli.cli.common import command_started, config_option, validate_options, with_default
from gptcli.cli.train import DATA, best_init_from, print_summary, run_training, train_command
from gptcli.config import ChatDataConfig, ChatFormat, LoraConfig, LoraTarget, TrainConfig
from gptcli.errors import GptError, OptionError
from gptcli.presets import merge_config

FINETUNE_DEFAULTS = {  # where fine-tuning differs from pre-training (gptcli.config.TrainConfig)
    "lr": 1e-4,
    "warmup_iters": 10,
    "batch_size": 8,
    "eval_interval": 50,
    "eval_iters": 10,
    "sample_tokens": 64,
    "weight_decay": 0.0,
}
LoraPrecision = Literal["fp32", "bf16"]
LORA_TARGETS_HELP = (
    "Layers given adapters, comma-separated: attn (the attention's input projection), proj (its "
    "output projection), mlp (both MLP layers)."
)
FINETUNE_HELP = {"max_iters": "Optimizer steps (default: those of --epochs)."}
# gpt train's options that a fine-tune takes from its base or does not read
NOT_FOR_FINETUNE = {
    "data", "tokenizer", "text_field", "data_cache", "init_from", "config", "skip_bad_records", "val_data",
    "arch", "n_layer", "n_head", "n_kv_head", "n_embd", "block_size", "bias", "pos_emb", "window", "norm",
    "n_enc_layer", "chat",
}  # fmt: skip
CHAT, LORA = "Conversations", "LoRA"
LORA_OPTIONS = ("lora_r", "lora_alpha", "lora_dropout", "lora_targets", "base_precision")


def _chat(name: str, *names: str):
    return config_option(ChatDataConfig, name, *names, rich_help_panel=CHAT)


def _lora(name: str, *names: str, **options):
    return config_option(LoraConfig, name, *names, rich_help_panel=LORA, **options)


def finetune_options(
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            "-c",
            help="The base model: a checkpoint, or a run directory (its newest).",
            rich_help_panel=DATA,
        ),
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            "-d",
            help="Conversation files (JSONL, JSON, Parquet) or HF dataset folders.",
            rich_help_panel=DATA,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run directory (default: out-finetune).", rich_help_panel=DATA),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=0.99,
            rich_help_panel=DATA,
            help="Fraction of the conversations held out for validation and the samples (default: 0.1).",
        ),
    ] = None,
    best: Annotated[
        bool,
        typer.Option(
            "--best",
            rich_help_panel=DATA,
            help="With --checkpoint RUN_DIR: its checkpoint with the lowest val loss (not its newest).",
        ),
    ] = False,
    format: Annotated[ChatFormat | None, _chat("format", "--format")] = None,
    chat_template: Annotated[
        Path | None,
        typer.Option(
            "--chat-template",
            metavar="FILE.jinja",
            rich_help_panel=CHAT,
            help="A Hugging Face-style Jinja chat template (default: ChatML).",
        ),
    ] = None,
    train_on_prompt: Annotated[bool | None, _chat("train_on_prompt", "--train-on-prompt")] = None,
    pack: Annotated[bool | None, _chat("pack", "--pack/--no-pack")] = None,
    epochs: Annotated[
        float | None,
        typer.Option(
            min=0,
            rich_help_panel=CHAT,
            help="Passes over the training conversations (default: 3; --max-iters instead sets the steps).",
        ),
    ] = None,
    skip_bad: Annotated[
        bool,
        typer.Option(
            "--skip-bad",
            help="Skip and count bad records instead of stopping at the first.",
            rich_help_panel=DATA,
        ),
    ] = False,
    lora: Annotated[
        bool,
        typer.Option(
            "--lora",
            rich_help_panel=LORA,
            help="Train LoRA adapters on the frozen base (a small checkpoint).",
        ),
    ] = False,
    lora_r: Annotated[int | None, _lora("r", "--lora-r")] = None,
    lora_alpha: Annotated[float | None, _lora("alpha", "--lora-alpha")] = None,
    lora_dropout: Annotated[float | None, _lora("dropout", "--lora-dropout")] = None,
    lora_targets: Annotated[
        str | None, _lora("targets", "--lora-targets", metavar="attn,proj,mlp", help=LORA_TARGETS_HELP)
    ] = None,
    base_precision: Annotated[LoraPrecision | None, _lora("base_precision", "--base-precision")] = None,
) -> None:
    """(the signature only: its parameters join gpt train's in finetune_command's)"""  # fmt: skip


def finetune(**options) -> None:
    """Fine-tune a checkpoint on conversations (messages, ShareGPT, Alpaca, prompt/completion), with a
    chat template and the loss on the assistant's replies."""
    started = command_started()
    chat_options = {k: options.pop(k) for k in ("format", "train_on_prompt", "pack")}
    template_file, epochs = options.pop("chat_template"), options.pop("epochs")
    checkpoint, skip_bad = options.pop("checkpoint"), options.pop("skip_bad")
    resume, overwrite, best = options.pop("resume"), options.pop("overwrite"), options.pop("best")
    quiet, out = options.pop("quiet"), options.pop("out")
    lora, lora_options = options.pop("lora"), {k: options.pop(k) for k in LORA_OPTIONS}
    options.pop("verbose")
    if resume is not None:  # a fine-tune's run directory records everything: gpt train resumes it
        fixed = {
            "--checkpoint": checkpoint, "--data": options.get("data") or None, "--format": chat_options["format"],
            "--chat-template": template_file, "--train-on-prompt": chat_options["train_on_prompt"],
            "--pack/--no-pack": chat_options["pack"], "--epochs": epochs, "--skip-bad": skip_bad or None,
            "--lora": lora or None, **{f"--{k.replace('_', '-')}": v for k, v in lora_options.items()},
        }  # fmt: skip
        if refused := [name for name, value in fixed.items() if value is not None]:
            raise GptError(
                f"--resume continues a fine-tune as it was (its base, data and conversation options): "
                f"leave out {', '.join(refused)}"
            )
        given = {k: v for k, v in options.items() if v is not None and k != "data"}
        return train_command(resume=resume, quiet=quiet, out=out, overwrite=overwrite, best=best, **given)
    if checkpoint is None or not options.get("data"):
        raise OptionError("a fine-tune needs --checkpoint BASE and --data FILES (or --resume RUN)")
    chat = {k: v for k, v in chat_options.items() if v is not None}
    if template_file is not None:
        from gptcli.chat.template import ChatTemplate  # jinja loads only when a template is given

        chat["template"] = ChatTemplate.from_file(template_file).to_json()
    if epochs is not None and epochs <= 0:
        raise GptError(f"--epochs {epochs:g}: give a number of passes above 0 (or --max-iters for the steps)")
    chat["epochs"] = None if options.get("max_iters") is not None else (3.0 if epochs is None else epochs)
    flags = {**options, "data": options.get("data"), "init_from": checkpoint}
    base = {
        **FINETUNE_DEFAULTS,
        "chat": chat,
        "skip_bad_records": skip_bad,
        "lora": lora_config(lora, lora_options),
    }
    config = validate_options(TrainConfig, flags, merge_config(base, flags))
    if best:
        config = best_init_from(config)
    print_summary(run_training(config, out or Path("out-finetune"), False, overwrite, quiet, started))


def lora_config(lora: bool, options: dict) -> dict | None:
    """--lora and its options -> TrainConfig.lora (None without --lora)."""
    given = {k: v for k, v in options.items() if v is not None}
    if not lora:
        if given:
            raise OptionError(f"--{next(iter(given)).replace('_', '-')} sets up LoRA: add --lora")
        return None
    fields = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "lora_targets": "targets"}
    config = {fields.get(k, k): v for k, v in given.items()}
    if "targets" in config:
        config["targets"] = [t.strip() for t in config["targets"].split(",") if t.strip()]
        if (
            unknown := [t for t in config["targets"] if t not in get_args(LoraTarget)]
            or not config["targets"]
        ):
            raise OptionError(
                f"--lora-targets: {unknown[0] if unknown else 'none given'}: name attn, proj or mlp"
            )
    flags = {f: given.get(k) for k, f in fields.items()} | {"base_precision": given.get("base_precision")}
    return validate_options(LoraConfig, flags, config).model_dump(mode="json")


def _signature() -> inspect.Signature:
    """finetune_options' parameters, then gpt train's that a fine-tune takes, with the defaults of
    FINETUNE_DEFAULTS in their help."""
    params = list(inspect.signature(finetune_options).parameters.values())
    for name, param in inspect.signature(train_command).parameters.items():
        if name in NOT_FOR_FINETUNE or name in {p.name for p in params}:
            continue
        if name in FINETUNE_HELP or name in FINETUNE_DEFAULTS:
            kind, info = get_args(param.annotation)
            field = TrainConfig.model_fields[name]
            pretraining_default = re.compile(r" \(default: [^)]*\)")  # e.g. min_lr's "(default: lr/10)"
            help_text = FINETUNE_HELP.get(name) or with_default(
                pretraining_default.sub("", field.description or ""), str(FINETUNE_DEFAULTS[name])
            )
            option = typer.Option(
                *(info.param_decls or ()), help=help_text, rich_help_panel=info.rich_help_panel
            )
            param = param.replace(annotation=Annotated[kind, option])
        params.append(param)
    keyword_only = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
    return inspect.Signature(keyword_only)


def finetune_command(**options) -> None:
    finetune(**options)


finetune_command.__signature__ = _signature()  # what Typer reads: the options above
finetune_command.__doc__ = finetune.__doc__
