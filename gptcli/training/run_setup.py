"""Setting a training run up: its data, its model (fresh, --init-from, resumed), its run directory.

    data = load_data(config, tokenizer, world, notes)          # tokenized once, rank 0 first
    model, state, saved = initial_model(config, device, run_dir, resume_from)
    ...                                                        # wrapped, and its optimizer made
    restore_training_state(resume_from, saved, optimizer, sampler, sharded)
    prepare_run_dir(run_dir, world, resumed=True, step=state.step)
    budget = TimeBudget(config.max_time, start_time, eval_shape(config, world, data, model))

Each piece is built from what it needs and handed back; `Trainer._setup` calls them in an order
that matters: the weights are initialized from the seeded generator after the data is read, and a
resumed run's generators are restored only once everything that draws from them at set-up exists.
"""

from pathlib import Path
from typing import Any

import torch

from gptcli.chat.template import ChatTemplate
from gptcli.config import ModelConfig, TrainConfig
from gptcli.data.sources import SourceOptions
from gptcli.data.token_cache import prepare_data
from gptcli.errors import GptError
from gptcli.models import LanguageModel, build_model, resize_vocab
from gptcli.models.lora import adapter_parameters, add_lora
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers.base import Tokenizer
from gptcli.training import distributed
from gptcli.training.chat_data import load_chat_data
from gptcli.training.data_source import Sampler, TrainingData, has_val
from gptcli.training.metrics import METRICS, truncate_metrics
from gptcli.training.optimizer import Optimizer
from gptcli.training.pair_data import load_pair_data
from gptcli.training.run_dir import clear_run_dir
from gptcli.training.time_budget import EvalShape
from gptcli.training.train_state import RunState, load_optimizer_state, load_rng_state, read_train_state

SavedState = tuple[dict[str, torch.Tensor], dict[str, Any]]  # a checkpoint's training state: tensors, JSON


def load_data(
    config: TrainConfig, tokenizer: Tokenizer, world: distributed.Dist, notes: list[str]
) -> TrainingData:
    """The run's train and val ids (rank 0 tokenizes into the cache first; the others then read it).
    A train split too small for one block is an error; a val split that small, a note.
    Conversations (config.chat) and an encoder-decoder's pairs are read and encoded by every rank
    alike (gptcli.training.chat_data, gptcli.training.pair_data)."""
    if config.model.arch == "encdec":
        return load_pair_data(config, tokenizer, notes)
    if config.chat is not None:
        template = ChatTemplate.from_json(config.chat.template)
        return load_chat_data(config, tokenizer, template, notes)
    block_size = config.model.block_size
    if not world.is_main:
        world.barrier()  # rank 0 tokenizes into the cache first; the others then read it
    data = prepare_data(
        config.data,
        tokenizer,
        config.val_fraction,
        config.val_data,
        config.data_cache,
        options=SourceOptions.of(config),
    )
    if world.is_main:
        world.barrier()
    notes.extend(f"warning: {note}" for note in data.notes)  # a damaged token cache, rebuilt
    if len(data.train) < block_size + 1:
        raise GptError(
            f"the training data has {len(data.train)} tokens, fewer than block_size + 1 = {block_size + 1}: "
            "use more text or a smaller --block-size"
        )
    if len(data.val) < block_size + 1:
        notes.append(
            f"validation split too small ({len(data.val)} tokens) for a block: val loss is not measured"
        )
    return data


def initial_model(
    config: TrainConfig, device: torch.device, run_dir: Path, resume_from: Path | None
) -> tuple[LanguageModel, RunState, SavedState | None]:
    """The model to train, on `device`: fresh, with --init-from's weights, or with the weights of the
    checkpoint resumed (then also its RunState and its saved training state)."""
    if config.lora is not None:  # the frozen base + adapters; a resumed run's adapters loaded below
        model = lora_model(config)
    elif config.init_from is not None and resume_from is None:
        model = base_model(Path(config.init_from), config.model)
    else:
        model = build_model(config.model)  # a GPT, or the LSTM baseline (arch)
    state, saved = RunState(), None
    if resume_from is not None:
        if config.lora is not None:
            ckpt.load_weights(resume_from, model, adapter_parameters(model))
        else:
            ckpt.load_weights(resume_from, model)
        saved = read_train_state(resume_from)
        state = RunState.from_json(saved[1])
        if state.step >= config.max_iters:
            raise GptError(
                f"{run_dir} is already at step {state.step}: raise --max-iters above {state.step} to train further"
            )
    model.to(device)
    model.activation_checkpointing = config.activation_checkpointing
    return model, state, saved


def base_model(base: Path, model_config: ModelConfig) -> LanguageModel:
    """A base checkpoint's weights in a model of the run's `model_config` (its dropout may differ from
    the base's), grown to its vocab_size when fine-tuning added special tokens (new rows: the old
    rows' mean)."""
    saved = ckpt.read_config(base)
    if "lora" in saved:
        raise GptError(f"{base} is a LoRA adapter, not a full model: merge it first (gpt merge-lora {base})")
    model = build_model(model_config.model_copy(update={"vocab_size": saved["model"].vocab_size}))
    ckpt.load_weights(base, model)
    return resize_vocab(model, model_config.vocab_size)


def lora_model(config: TrainConfig) -> LanguageModel:
    """The frozen base of a LoRA run with its adapters (fresh: B at zero, a no-op) and the rows of
    the tokens it gained trainable (gptcli.models.lora)."""
    base = Path(config.init_from)
    base_vocab = ckpt.read_config(base)["model"].vocab_size
    model = base_model(base, config.model)
    return add_lora(model, config.lora, new_rows=(base_vocab, config.model.vocab_size))


def restore_training_state(
    resume_from: Path,
    saved: SavedState,
    optimizer: Optimizer,
    sampler: Sampler,
    sharded: LanguageModel | None,
) -> None:
    """Load a resumed run's optimizer state (`sharded`: the FSDP model it belongs to) and the RNG
    states (torch's, the sampler's), so the run goes on as if it had never stopped."""
    tensors, state = saved
    try:
        load_optimizer_state(optimizer, tensors, state["optimizer"], sharded)
        load_rng_state(tensors, sampler)
    except (KeyError, ValueError, RuntimeError) as e:
        raise GptError(f"{resume_from}: training state does not fit this run ({e})") from None


def prepare_run_dir(run_dir: Path, world: distributed.Dist, resumed: bool, step: int) -> None:
    """On rank 0 (one writer: other ranks rewriting the file at the same time would lose lines): a
    resumed run's metrics cut back to its checkpoint's step; a fresh run's directory cleared
    (--overwrite, or the leftovers of a run that died before its first checkpoint); then made."""
    if not world.is_main:
        return
    if resumed:
        truncate_metrics(run_dir / METRICS, step)
    else:
        clear_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def eval_shape(
    config: TrainConfig, world: distributed.Dist, data: TrainingData, model: LanguageModel
) -> EvalShape:
    """What an eval and a checkpoint of this run cost, in the units --max-time estimates them in
    (gptcli.training.time_budget)."""
    block_size = config.model.block_size
    params = sum(p.numel() for p in model.parameters())
    return EvalShape(
        splits=1 + has_val(data, block_size),
        micro_batches=max(1, config.grad_accum // world.world_size),
        batch_size=config.batch_size,
        block_size=block_size,
        checkpoint_bytes=12 * params,  # fp32 weights + AdamW's two moments
    )
