"""What a run trains on and what it trains: the everyday defaults, the tokenizer, the model's shape.

    config, tokenizer, resume_from = plan_run(config, run_dir, resume, overwrite, notes)

A fresh run fills in what was left out (a token store's own tokenizer.json when the data is a
store, else ./tokenizer.json, else characters; the tokenizer's corpus else the toy data),
makes every path absolute (so the run's config.json works from any directory), and takes the
model's shape from the flags, or from --init-from's checkpoint (a run directory there: its newest
intact checkpoint, which is what the run records). A resumed run takes all of it from the run
directory and its newest checkpoint.
"""

import os
from pathlib import Path
from typing import Any

from gptcli.chat.template import ChatTemplate
from gptcli.config import ModelConfig, TokenizerTrainConfig, TrainConfig
from gptcli.data.store import TOKENIZER as STORE_TOKENIZER
from gptcli.data.store import is_store
from gptcli.data.tokenizer_corpus import train_tokenizer
from gptcli.errors import GptError
from gptcli.quantize import refuse_int8
from gptcli.storage import checkpoint as ckpt
from gptcli.storage.checksums import CHECKSUMS
from gptcli.tokenizers import load_tokenizer, with_special_tokens
from gptcli.tokenizers.base import Tokenizer
from gptcli.tokenizers.train import train_on_texts
from gptcli.training.chat_data import conversation_texts
from gptcli.training.pair_data import pair_texts
from gptcli.training.run_dir import check_run_dir_free
from gptcli.training.tensorboard import summary_writer_class

DEFAULT_TOKENIZER = Path("tokenizer.json")
REPO_TOY_DATA = Path(__file__).resolve().parents[2] / "toy_data"
RUNTIME_MODEL_FIELDS = {"dropout", "flash"}  # model settings a resumed run or a fine-tune may change


def plan_run(
    config: TrainConfig, run_dir: Path, resume: bool, overwrite: bool, notes: list[str]
) -> tuple[TrainConfig, Tokenizer, Path | None]:
    """The resolved config (its model shape final), the tokenizer, and the checkpoint to resume from."""
    if resume:
        resume_from = newest_checkpoint(run_dir, notes)
        tokenizer = load_tokenizer(resume_from / ckpt.TOKENIZER)
        model_config = resumed_model_config(config, ckpt.read_config(resume_from)["model"], run_dir)
        return config.model_copy(update={"model": model_config}), tokenizer, resume_from
    if config.init_from is not None:  # before the defaults: its tokenizer is the default one
        config = config.model_copy(update={"init_from": init_checkpoint(Path(config.init_from), notes)})
    config = resolve_inputs(config, notes)
    init_config = None
    if config.init_from:
        init_config = ckpt.read_config(config.init_from)["model"]
    check_data_kind(config, config.model)  # before a char tokenizer reads the data; again for a base's arch
    tokenizer = build_tokenizer(config)
    if config.chat is not None:
        config, tokenizer = prepare_chat(config, tokenizer, notes)
    model_config = build_model_config(config, tokenizer, init_config)
    check_data_kind(config, model_config)
    if not overwrite:
        check_run_dir_free(run_dir)  # refuse early; clearing waits until every other check has passed
    if overwrite and config.init_from and run_dir.resolve() in Path(config.init_from).resolve().parents:
        raise GptError(f"--init-from {config.init_from} lies inside {run_dir}, which --overwrite would clear")
    return config.model_copy(update={"model": model_config}), tokenizer, None


def newest_checkpoint(run_dir: Path, notes: list[str]) -> Path:
    """The newest checkpoint whose files are all intact; damaged newer ones are named in the notes.

    Resume is exact, so continuing from an older checkpoint still ends with the uninterrupted
    run's weights: it only redoes more steps."""
    start_over = f"start over with: gpt train --config {run_dir}/config.json --out {run_dir} --overwrite"
    if not ckpt.list_checkpoints(run_dir):
        raise GptError(
            f"nothing to resume in {run_dir}: no complete checkpoint under {run_dir}/checkpoints ({start_over})"
        )
    damaged: list[str] = []
    found = ckpt.newest_intact(run_dir, warn=damaged.append)
    notes.extend(f"warning: {message}" for message in damaged)
    if found is None:
        raise GptError(
            f"nothing to resume in {run_dir}: every checkpoint is damaged ({damaged[0]}; {start_over})"
        )
    if not (found / ckpt.CHECKSUMS).exists():
        notes.append(f"warning: {found} has no checksums (written before they existed): resumed unverified")
    return found


def init_checkpoint(path: Path, notes: list[str]) -> Path:
    """--init-from's checkpoint, every file checked before any is used: a checkpoint directory itself
    (never swapped for another), or a run directory's newest intact checkpoint (damaged newer ones
    are named in the notes, as generate passes them over)."""
    if ckpt.is_checkpoint(path) or not (path / ckpt.CHECKPOINTS).is_dir():
        found = path  # not a run directory: read_config says what it is missing, or that it is a file
        verified = ckpt.verify_checkpoint(found)
    else:
        damaged: list[str] = []
        found = ckpt.newest_intact(path, warn=damaged.append)
        notes.extend(f"warning: {message}" for message in damaged)
        if found is None and damaged:
            raise GptError(f"--init-from {path}: every checkpoint is damaged ({damaged[0]})")
        if found is None:
            raise GptError(
                f"--init-from {path} holds no complete checkpoint (nothing under {path / ckpt.CHECKPOINTS})"
            )
        notes.append(f"init-from: {found} (the newest checkpoint of {path})")
        verified = (found / CHECKSUMS).exists()
    if not verified:
        notes.append(f"warning: {found} has no checksums (written before they existed)")
    refuse_int8(found, ckpt.read_config(found), "--init-from")
    return found


def resumed_model_config(config: TrainConfig, saved: ModelConfig, run_dir: Path) -> ModelConfig:
    """The checkpoint's shape; only runtime settings (dropout, flash) may differ from it."""
    shape = {"vocab_size", *RUNTIME_MODEL_FIELDS}  # vocab is filled in from the tokenizer
    if config.model.model_dump(exclude=shape) != saved.model_dump(exclude=shape):
        raise GptError(f"the model shape of a resumed run cannot change (see {run_dir}/config.json)")
    return saved.model_copy(update={k: getattr(config.model, k) for k in RUNTIME_MODEL_FIELDS})


def resolve_inputs(config: TrainConfig, notes: list[str]) -> TrainConfig:
    """Fill the everyday defaults: the store's tokenizer or ./tokenizer.json (else char), the
    tokenizer's corpus (else toy data)."""
    updates: dict[str, Any] = {}
    tokenizer = config.tokenizer
    store = next((Path(p) for p in config.data or [] if is_store(p)), None)
    if store is not None and tokenizer == "char":
        raise GptError(
            f"--tokenizer char learns its characters from text, but {store} is a token store: "
            f"leave out --tokenizer to use the store's ({store / STORE_TOKENIZER})"
        )
    if config.init_from is not None and tokenizer is None:
        tokenizer = str(Path(config.init_from) / ckpt.TOKENIZER)
        updates["tokenizer"] = tokenizer
        notes.append(f"tokenizer: {tokenizer} (from --init-from)")
    if store is not None and tokenizer is None:
        tokenizer = str(store / STORE_TOKENIZER)
        updates["tokenizer"] = tokenizer
        notes.append(f"tokenizer: {tokenizer} (the token store's)")
    if tokenizer is None:
        tokenizer = str(DEFAULT_TOKENIZER) if DEFAULT_TOKENIZER.is_file() else "char"
        updates["tokenizer"] = tokenizer
        notes.append(f"tokenizer: {tokenizer} (default)")
    if config.data is None:
        updates["data"] = default_data(tokenizer, notes)
    return absolute_paths(config.model_copy(update=updates))


def default_data(tokenizer: str, notes: list[str]) -> list[str]:
    """The corpus the tokenizer was trained on, where its files still exist; else the toy data
    (toy_data/shakespeare.txt, which `make data` writes, else the shipped sonnets.txt)."""
    recorded = []
    if tokenizer != "char":
        recorded = [f.path for f in load_tokenizer(tokenizer).trained_on or [] if Path(f.path).is_file()]
    if recorded:
        notes.append(f"data: {', '.join(recorded)} (the corpus the tokenizer was trained on)")
        return recorded
    toy = REPO_TOY_DATA / "shakespeare.txt"
    toy = toy if toy.is_file() else REPO_TOY_DATA / "sonnets.txt"
    if not toy.is_file():
        raise GptError("no --data given and no default corpus found: pass --data FILE")
    notes.append(f"data: {toy} (the toy data: no --data given)")
    return [str(toy)]


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """Make every path absolute, so the run's config.json works from any directory (e.g. --resume)."""

    def absolute(path):
        return None if path is None else type(path)(os.path.abspath(path))

    updates = {
        "data": [absolute(p) for p in config.data] if config.data else config.data,
        "val_data": [absolute(p) for p in config.val_data] if config.val_data else config.val_data,
        "tokenizer": config.tokenizer if config.tokenizer in (None, "char") else absolute(config.tokenizer),
        "data_cache": absolute(config.data_cache),
        "init_from": absolute(config.init_from),
    }
    return config.model_copy(update=updates)


def check_data_kind(config: TrainConfig, model: ModelConfig) -> None:
    """An encoder-decoder reads pairs as they are (no chat template); packing needs the GPT."""
    if config.chat is not None and model.arch == "encdec":
        raise GptError(
            "an encoder-decoder trains on prompt/completion pairs as they are, not rendered by a chat "
            "template: gpt train --arch encdec --data PAIRS, without --pairs (which is for a GPT)"
        )
    if config.chat is not None and config.chat.pack and model.arch != "gpt":
        raise GptError(
            f"packing several conversations in a row needs the gpt architecture: fine-tune this "
            f"{model.arch} with --no-pack"
        )


def build_tokenizer(config: TrainConfig) -> Tokenizer:
    """The tokenizer file's; or characters: of the pairs' text for an encoder-decoder, of the
    conversations as the chat template writes them for a chat model, else of the corpus."""
    if config.tokenizer != "char":
        return load_tokenizer(config.tokenizer)
    chars = TokenizerTrainConfig(files=config.data, kind="char")  # and <|endoftext|>
    if config.model.arch == "encdec":
        return train_on_texts(pair_texts(config), chars, None)[0]
    if config.chat is not None:
        return train_on_texts(conversation_texts(config), chars, None)[0]
    return train_tokenizer(chars).tokenizer


def prepare_chat(
    config: TrainConfig, tokenizer: Tokenizer, notes: list[str]
) -> tuple[TrainConfig, Tokenizer]:
    """Training on conversations (a fine-tune, or a chat model from scratch: gpt train --pairs): the
    chat template is resolved into the config (the run records the template itself, not a path),
    and its special tokens are added to the tokenizer (a base's new rows: gptcli.training.run_setup)."""
    template = ChatTemplate.from_json(config.chat.template)
    tokenizer, added = with_special_tokens(tokenizer, template.special_tokens)
    if added:
        rows = " (their embedding rows start at the mean of the others)" if config.init_from else ""
        notes.append(f"tokenizer: added {', '.join(added)}{rows}")
    chat = config.chat.model_copy(update={"template": template.to_json()})
    return config.model_copy(update={"chat": chat}), tokenizer


def build_model_config(
    config: TrainConfig, tokenizer: Tokenizer, init_config: ModelConfig | None
) -> ModelConfig:
    """The model's shape: from --init-from's checkpoint if given (only dropout/flash may change), else the flags."""
    if init_config is None:
        if config.model.vocab_size not in (None, tokenizer.vocab_size):
            raise GptError(
                f"the config's vocab_size ({config.model.vocab_size}) does not match the tokenizer ({tokenizer.vocab_size})"
            )
        return config.model.model_copy(update={"vocab_size": tokenizer.vocab_size})
    if config.chat is not None and init_config.vocab_size < tokenizer.vocab_size:
        init_config = init_config.model_copy(update={"vocab_size": tokenizer.vocab_size})  # grown
    if init_config.vocab_size != tokenizer.vocab_size:
        raise GptError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but --init-from's model has {init_config.vocab_size}"
        )
    given = config.model.model_fields_set - RUNTIME_MODEL_FIELDS - {"vocab_size"}
    if config.model.n_kv_head == config.model.n_head:
        given.discard("n_kv_head")  # filled in from n_head, not asked for
    differ = sorted(k for k in given if getattr(config.model, k) != getattr(init_config, k))
    if differ:
        raise GptError(
            f"--init-from fixes the model shape; these settings differ from the checkpoint's: {', '.join(differ)}"
        )
    kept = config.model.model_fields_set & RUNTIME_MODEL_FIELDS
    return init_config.model_copy(update={k: getattr(config.model, k) for k in kept})


def check_settings(config: TrainConfig, world) -> None:
    """What this run's processes and extras allow, checked before any data is prepared."""
    if config.fsdp and not world.enabled:
        raise GptError(
            "--fsdp shards the model across processes: launch with torchrun --nproc_per_node=N (N >= 2)"
        )
    if config.tensorboard:
        summary_writer_class()  # a missing optional package fails now, not after the data is prepared
    if config.grad_accum % world.world_size:
        raise GptError(
            f"--grad-accum {config.grad_accum} must be a multiple of the {world.world_size} processes: "
            "each optimizer step's micro-batches are split evenly between them"
        )
