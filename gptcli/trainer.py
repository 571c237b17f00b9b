"""The training loop: `train(TrainConfig)` is what `gpt train` runs.

    from gptcli.config import TrainConfig
    from gptcli.trainer import train
    summary = train(TrainConfig(data=["corpus.txt"], tokenizer="char", max_iters=500))

One run lives in one directory (`out/` by default):

    config.json          the resolved TrainConfig (pass it back with --config)
    tokenizer.json       the tokenizer of the run
    metrics.jsonl        one JSON object per logged step and per evaluation
    checkpoints/step_N/  checkpoints (see gptcli.checkpoint), newest few + the best by val loss

Each optimizer step: `grad_accum` micro-batches (forward under autocast, backward, loss scaled by
1/grad_accum), gradient clipping, AdamW with a learning rate from linear warmup + cosine decay.
Every `eval_interval` steps, at the end, at `max_time` and on Ctrl-C: mean train/val loss over
fixed batches, a short sample, a checkpoint. Everything random (batches, dropout) comes from
generators whose states go into the checkpoint, so `--resume` reproduces the uninterrupted run
exactly (on CPU, in fp32).
"""

import gc
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gptcli import checkpoint as ckpt
from gptcli import distributed
from gptcli.config import ModelConfig, SampleConfig, TokenizerTrainConfig, TrainConfig
from gptcli.data import BatchSampler, TokenData, prepare_data
from gptcli.errors import GptError
from gptcli.fileio import atomic_write_json, read_json
from gptcli.model import LanguageModel, build_model
from gptcli.sampling import Engine
from gptcli.tensorboard_log import TENSORBOARD_DIR, TensorBoardLog, summary_writer_class
from gptcli.tensorfile import read_safetensors
from gptcli.tokenizers import load_tokenizer
from gptcli.tokenizers.base import Tokenizer
from gptcli.tokenizers.train import train_tokenizer

Report = Callable[[str, dict[str, Any]], None]  # (event, data): "info", "step", "eval", "checkpoint", "done"

DEFAULT_TOKENIZER = Path("tokenizer.json")
REPO_TOY_DATA = Path(__file__).resolve().parents[1] / "toy_data"
PEAK_FLOPS = {  # dense bf16 tensor-core peaks, for MFU
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165e12,
}


class TrainingInterrupted(GptError):
    """Ctrl-C: the last complete step was saved."""

    exit_code = 130


class StopOnInterrupt:
    """Ctrl-C asks the loop to stop after the current step (which is then saved); a second one stops at once.

    Stopping at a step boundary keeps the saved state exact: no half-applied update, no batch drawn
    for a step that never happened.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class TrainSummary:
    run_dir: Path
    step: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    last_checkpoint: Path | None
    seconds: float
    stop_reason: str  # "max_iters" or "max_time"
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# setting up a run: defaults, tokenizer, data, model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GptError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GptError(f"--device {name}: no CUDA GPU is available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GptError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) here")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise GptError(f"--device {name}: Apple MPS is not available")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise GptError("fp16 training needs a CUDA GPU (use bf16 or fp32)")
    return name


def resolve_inputs(config: TrainConfig, notes: list[str]) -> TrainConfig:
    """Fill the everyday defaults: ./tokenizer.json (else char), the tokenizer's corpus (else toy data)."""
    updates: dict[str, Any] = {}
    tokenizer = config.tokenizer
    if config.init_from is not None and tokenizer is None:
        tokenizer = str(Path(config.init_from) / ckpt.TOKENIZER)
        updates["tokenizer"] = tokenizer
        notes.append(f"tokenizer: {tokenizer} (from --init-from)")
    if tokenizer is None:
        tokenizer = str(DEFAULT_TOKENIZER) if DEFAULT_TOKENIZER.is_file() else "char"
        updates["tokenizer"] = tokenizer
        notes.append(f"tokenizer: {tokenizer} (default)")
    if config.data is None:
        recorded = []
        if tokenizer != "char":
            tok = load_tokenizer(tokenizer)
            recorded = [f.path for f in tok.trained_on or [] if Path(f.path).is_file()]
        if recorded:
            updates["data"] = recorded
            notes.append(f"data: {', '.join(recorded)} (the corpus the tokenizer was trained on)")
        else:
            toy = REPO_TOY_DATA / "shakespeare.txt"
            toy = toy if toy.is_file() else REPO_TOY_DATA / "sonnets.txt"
            if not toy.is_file():
                raise GptError("no --data given and no default corpus found: pass --data FILE")
            updates["data"] = [str(toy)]
            notes.append(f"data: {toy} (the shipped toy data)")
    return absolute_paths(config.model_copy(update=updates))


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


def build_tokenizer(config: TrainConfig) -> Tokenizer:
    if config.tokenizer == "char":
        return train_tokenizer(TokenizerTrainConfig(files=config.data, kind="char")).tokenizer
    return load_tokenizer(config.tokenizer)


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
    if init_config.vocab_size != tokenizer.vocab_size:
        raise GptError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but --init-from's model has {init_config.vocab_size}"
        )
    runtime = {"dropout", "flash", "vocab_size"}
    given = config.model.model_fields_set - runtime
    if config.model.n_kv_head == config.model.n_head:
        given.discard("n_kv_head")  # filled in from n_head, not asked for
    differ = sorted(k for k in given if getattr(config.model, k) != getattr(init_config, k))
    if differ:
        raise GptError(
            f"--init-from fixes the model shape; these settings differ from the checkpoint's: {', '.join(differ)}"
        )
    kept = config.model.model_fields_set & {"dropout", "flash"}  # runtime settings a fine-tune may change
    return init_config.model_copy(update={k: getattr(config.model, k) for k in kept})


# ---------------------------------------------------------------------------------------------
# the schedule, evaluation, checkpoint state


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup to lr, then cosine decay to min_lr at lr_decay_iters, then min_lr."""
    min_lr = config.lr / 10 if config.min_lr is None else config.min_lr
    decay_iters = config.lr_decay_iters or config.max_iters
    if step < config.warmup_iters:
        return config.lr * (step + 1) / (config.warmup_iters + 1)
    if step >= decay_iters:
        return min_lr
    progress = (step - config.warmup_iters) / max(1, decay_iters - config.warmup_iters)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (config.lr - min_lr)


@torch.no_grad()
def estimate_loss(model, data: TokenData, config: TrainConfig, device, autocast) -> dict[str, float]:
    """Mean loss over eval_iters fixed batches of each split (the same batches at every eval)."""
    model.eval()
    out = {}
    for offset, (split, tokens) in enumerate((("train", data.train), ("val", data.val))):
        if len(tokens) < config.model.block_size + 1:
            continue
        sampler = BatchSampler(
            tokens, config.model.block_size, config.batch_size, seed=config.seed + 1 + offset
        )
        losses = []
        for _ in range(config.eval_iters):
            x, y = sampler.next_batch()
            with autocast:
                _, loss = model(x.to(device), y.to(device))
            losses.append(loss.item())
        out[split] = sum(losses) / len(losses)
    model.train()
    return out


def optimizer_state(optimizer, sharded_model=None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """AdamW's state as flat tensors (for safetensors) + its param groups (for JSON).

    With a sharded (FSDP) model every rank must call this; the state is gathered whole on rank 0.
    """
    if sharded_model is not None:
        sd = distributed.full_optimizer_state(sharded_model, optimizer)
    else:
        sd = optimizer.state_dict()
    tensors = {
        f"optim.{pid}.{name}": value.detach().cpu()
        for pid, state in sd["state"].items()
        for name, value in state.items()
        if torch.is_tensor(value)
    }
    return tensors, {"param_groups": sd["param_groups"]}


def load_optimizer_state(
    optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any], sharded_model=None
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    full = {"state": state, "param_groups": meta["param_groups"]}
    if sharded_model is not None:
        distributed.load_full_optimizer_state(sharded_model, optimizer, full)
    else:
        optimizer.load_state_dict(full)


def rng_state(sampler: BatchSampler) -> dict[str, torch.Tensor]:
    states = {"rng.cpu": torch.get_rng_state(), "rng.sampler": sampler.state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"rng.cuda.{i}"] = s
    return states


def load_rng_state(tensors: dict[str, torch.Tensor], sampler: BatchSampler) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    sampler.load_state(tensors["rng.sampler"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


# ---------------------------------------------------------------------------------------------
# the run directory


def check_run_dir_free(run_dir: Path) -> None:
    """Refuse to mix two runs in one directory."""
    if (run_dir / "config.json").exists() or (run_dir / "checkpoints").exists():
        raise GptError(
            f"{run_dir} already holds a run: continue it with --resume {run_dir}, or start over with --overwrite"
        )


def clear_run_dir(run_dir: Path) -> None:
    """Remove what a run writes (and nothing else: --out may be a folder with other files)."""
    for name in ("config.json", "metrics.jsonl", "tokenizer.json", "checkpoints", TENSORBOARD_DIR):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def read_run_config(run_dir: Path) -> TrainConfig:
    from pydantic import ValidationError

    from gptcli.errors import one_line_validation_error

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise GptError(f"{run_dir} is not a run directory (no config.json)")
    try:
        return TrainConfig.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as e:
        raise GptError(f"{path}: invalid run config: {one_line_validation_error(e)}") from None


def read_train_state(checkpoint: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer/RNG tensors and the JSON state a checkpoint holds for --resume."""
    tensors = read_safetensors(checkpoint / ckpt.STATE_TENSORS)
    path = checkpoint / ckpt.STATE_JSON
    if not path.is_file():
        raise GptError(f"{checkpoint} has no {ckpt.STATE_JSON}: it can be used with --init-from, not resumed")
    state = read_json(path)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "optimizer" not in state:
        raise GptError(f"{path}: not a training state (needs 'step' and 'optimizer')")
    return tensors, state


def truncate_metrics(path: Path, after_step: int) -> None:
    """Drop metric lines past the step a resumed run restarts from (they will be redone)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= after_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    path.write_text("".join(line + "\n" for line in kept))


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints and the best by val loss."""
    found = ckpt.list_checkpoints(run_dir)
    if len(found) <= keep:
        return
    losses = {d: ckpt.read_config(d).get("val_loss") for d in found}
    scored = [d for d in found if losses[d] is not None]
    best = min(scored, key=lambda d: losses[d]) if scored else None
    for d in found[:-keep]:
        if d != best:
            shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the loop


def train(
    config: TrainConfig,
    run_dir: Path | str = "out",
    resume: bool = False,
    overwrite: bool = False,
    report: Report | None = None,
) -> TrainSummary:
    """Train a GPT as `config` says, in `run_dir`; with resume=True, continue the run found there.

    Under torchrun (WORLD_SIZE > 1) every rank runs this same function: all of them check the
    inputs and train; rank 0 alone reports, logs and writes files.
    """
    world, device_name = distributed.setup(config.device)
    try:
        summary = _train(config, Path(run_dir), resume, overwrite, report, world, device_name)
        world.barrier()  # leave together: gloo aborts a process whose peer tears down mid-flight
        return summary
    finally:
        if world.enabled:
            gc.collect()  # free DDP's reducer (held in reference cycles) while its process group still exists
        distributed.teardown(world)


def _train(
    config, run_dir: Path, resume, overwrite, report, world: distributed.Dist, device_name: str
) -> TrainSummary:
    main = world.is_main
    report = report if (report and main) else (lambda event, data: None)
    notes: list[str] = []
    start_time = time.time()

    resume_from = None
    if resume:
        if main:
            ckpt.tidy_checkpoints(run_dir)
        world.barrier()
        found = ckpt.list_checkpoints(run_dir)
        if not found:
            raise GptError(
                f"nothing to resume in {run_dir}: no complete checkpoint under {run_dir}/checkpoints "
                f"(start over with: gpt train --config {run_dir}/config.json --out {run_dir} --overwrite)"
            )
        resume_from = found[-1]
        tokenizer = load_tokenizer(resume_from / ckpt.TOKENIZER)
        saved = ckpt.read_config(resume_from)["model"]
        shape = {"vocab_size", "dropout", "flash"}  # what may differ: vocab is filled in, the rest is runtime
        if config.model.model_dump(exclude=shape) != saved.model_dump(exclude=shape):
            raise GptError(f"the model shape of a resumed run cannot change (see {run_dir}/config.json)")
        model_config = saved.model_copy(update={"dropout": config.model.dropout, "flash": config.model.flash})
    else:
        config = resolve_inputs(config, notes)
        init_config = ckpt.read_config(config.init_from)["model"] if config.init_from else None
        tokenizer = build_tokenizer(config)
        model_config = build_model_config(config, tokenizer, init_config)
        if not overwrite:
            check_run_dir_free(run_dir)  # refuse early; clearing waits until every other check has passed
        if (
            overwrite
            and config.init_from
            and Path(run_dir).resolve() in Path(config.init_from).resolve().parents
        ):
            raise GptError(
                f"--init-from {config.init_from} lies inside {run_dir}, which --overwrite would clear"
            )
    config = config.model_copy(update={"model": model_config})
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

    device = resolve_device(device_name)
    precision = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)

    if not main:
        world.barrier()  # rank 0 tokenizes into the cache first; the others then read it
    data = prepare_data(config.data, tokenizer, config.val_fraction, config.val_data, config.data_cache)
    if main:
        world.barrier()
    if len(data.train) < model_config.block_size + 1:
        raise GptError(
            f"the training data has {len(data.train)} tokens, fewer than block_size + 1 = {model_config.block_size + 1}: "
            "use more text or a smaller --block-size"
        )
    if len(data.val) < model_config.block_size + 1:
        notes.append(
            f"validation split too small ({len(data.val)} tokens) for a block: val loss is not measured"
        )
    sampler = BatchSampler(data.train, model_config.block_size, config.batch_size, seed=config.seed)

    model = build_model(model_config)  # a GPT, or the LSTM baseline (arch)
    if config.init_from is not None and not resume:
        ckpt.load_weights(Path(config.init_from), model)
    step, best_val = 0, None
    if resume_from is not None:
        ckpt.load_weights(resume_from, model)
        tensors, state = read_train_state(resume_from)
        step, best_val = state["step"], state.get("best_val_loss")
        if step >= config.max_iters:
            raise GptError(
                f"{run_dir} is already at step {step}: raise --max-iters above {step} to train further"
            )
    model.to(device)
    model.activation_checkpointing = config.activation_checkpointing
    raw_model = model  # what is saved and sampled from (under FSDP: the sharded module itself)
    if config.fsdp:
        distributed.shard(model)  # in place: each rank keeps 1/N of every parameter
    elif world.enabled:
        # DDP makes every rank start from rank 0's weights and averages the gradients
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = raw_model.configure_optimizers(
        config.weight_decay, config.lr, (config.beta1, config.beta2), device.type
    )

    if resume_from is not None:
        try:
            load_optimizer_state(optimizer, tensors, state["optimizer"], raw_model if config.fsdp else None)
            load_rng_state(tensors, sampler)
        except (KeyError, ValueError, RuntimeError) as e:
            raise GptError(f"{resume_from}: training state does not fit this run ({e})") from None
        if main:  # one writer: other ranks rewriting the file at the same time would lose lines
            truncate_metrics(run_dir / "metrics.jsonl", step)
        notes.append(f"resumed from {resume_from} at step {step}")
    elif main:
        clear_run_dir(run_dir)  # --overwrite, or the leftovers of a run that died before its first checkpoint
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if world.rank > 0:  # other dropout masks on other ranks (the weights were set above, alike everywhere)
        torch.manual_seed(config.seed + 1000 * world.rank + step)
    world.barrier()

    if config.compile:
        model = torch.compile(model)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    tokens_per_step = config.batch_size * config.grad_accum * model_config.block_size
    peak = peak_flops(device)
    flops_per_token = raw_model.flops_per_token()
    metrics_file = open(run_dir / "metrics.jsonl", "a") if main else None
    tensorboard = TensorBoardLog(run_dir, step) if main and config.tensorboard else None
    local_accum = config.grad_accum // world.world_size  # micro-batches per rank per step

    report(
        "info",
        {
            "notes": notes,
            "config": config.model_dump(mode="json"),  # as resolved for this run
            "run_dir": str(run_dir),
            "device": str(device),
            "precision": precision,
            "params": raw_model.num_params(),
            "train_tokens": len(data.train),
            "val_tokens": len(data.val),
            "tokens_per_step": tokens_per_step,
            "start_step": step,
            "max_iters": config.max_iters,
        },
    )

    def log(record: dict[str, Any]) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()
        if tensorboard is not None:
            tensorboard.write(record)

    last_losses: dict[str, float] = {}
    last_saved: Path | None = ckpt.list_checkpoints(run_dir)[-1] if resume else None
    last_saved_step = step if resume else -1

    def evaluate_and_save() -> None:
        nonlocal best_val, last_saved, last_saved_step
        losses = estimate_loss(
            raw_model, data, config, device, autocast
        )  # every rank: same batches, same result
        if any(not math.isfinite(v) for v in losses.values()):
            raise GptError(
                f"the loss became non-finite at step {step}; stopped without saving. "
                f"Last good checkpoint: {last_saved or 'none'}"
            )
        last_losses.update(losses)
        val = losses.get("val")
        if val is not None and (best_val is None or val < best_val):
            best_val = val
        sample = draw_sample(raw_model, tokenizer, config, device)  # all ranks: FSDP forwards are collective
        log(
            {
                "step": step,
                "kind": "eval",
                "train_loss": losses.get("train"),
                "val_loss": val,
                "sample": sample,
            }
        )
        report("eval", {"step": step, "train_loss": losses.get("train"), "val_loss": val, "sample": sample})
        path = save(step, losses)
        last_saved, last_saved_step = path, step
        report("checkpoint", {"step": step, "path": str(path)})

    wrote_run_files = False

    def save(at_step: int, losses: dict[str, float]) -> Path:
        """Rank 0 writes the checkpoint; every rank waits for it and knows its path."""
        path = run_dir / "checkpoints" / f"step_{at_step:07d}"
        sharded = raw_model if config.fsdp else None
        # under FSDP gathering the whole weights and optimizer state takes every rank
        weights = distributed.full_weights(raw_model) if sharded else raw_model
        opt_tensors, opt_meta = optimizer_state(optimizer, sharded)
        if main:
            if isinstance(weights, dict) and model_config.tie_weights:
                weights.pop("lm_head.weight", None)  # the tied head is wte: stored once
            try:
                write_checkpoint(path, at_step, losses, weights, opt_tensors, opt_meta)
            except OSError as e:  # disk full, no permission: the half-written checkpoint is already gone
                where = f" ({e.filename})" if e.filename else ""
                after = (
                    f"the previous checkpoint {last_saved} is intact: make room and continue with "
                    f"gpt train --resume {run_dir}"
                    if last_saved
                    else "no checkpoint was saved before it"
                )
                raise GptError(f"could not save {path.name}: {e.strerror or e}{where}; {after}") from None
        world.barrier()
        return path

    def write_checkpoint(path: Path, at_step: int, losses, weights, opt_tensors, opt_meta) -> None:
        nonlocal wrote_run_files
        if (
            not wrote_run_files
        ):  # with the first checkpoint: a run that dies before it leaves no config behind
            atomic_write_json(run_dir / "config.json", json.loads(config.model_dump_json()))
            tokenizer.save(run_dir / "tokenizer.json")
            wrote_run_files = True
        ckpt.save_checkpoint(
            path,
            weights,
            model_config,
            tokenizer,
            info={"step": at_step, "train_loss": losses.get("train"), "val_loss": losses.get("val")},
            state_tensors={**opt_tensors, **rng_state(sampler)},
            state_json={
                "step": at_step,
                "best_val_loss": best_val,
                "optimizer": opt_meta,
                "seed": config.seed,
            },
        )
        prune_checkpoints(run_dir, config.keep_checkpoints)

    model.train()
    t_last, steps_since_log = time.time(), 0
    train_start = time.time()
    stop_reason = "max_iters"
    interrupt = StopOnInterrupt()
    try:
        with interrupt:
            while step < config.max_iters:
                lr = learning_rate(step, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = torch.zeros((), device=device)
                micro_batches = sampler.next_step(config.grad_accum, world.rank, world.world_size)
                for i, (x, y) in enumerate(micro_batches):
                    if device.type == "cuda":  # pinned host memory makes the copy truly asynchronous
                        x, y = x.pin_memory(), y.pin_memory()
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    # DDP averages gradients over ranks on the last micro-batch only
                    last = i == local_accum - 1
                    if config.fsdp:
                        model.set_requires_gradient_sync(last)
                    sync = (
                        model.no_sync() if world.enabled and not config.fsdp and not last else nullcontext()
                    )
                    with sync:
                        with autocast:
                            _, loss = model(x, y)
                        scaler.scale(loss / local_accum).backward()
                    loss_sum += loss.detach()
                if config.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                steps_since_log += 1

                if step % config.log_interval == 0 or step == config.max_iters:
                    # the step's mean loss over all micro-batches of all ranks: the one host sync per log
                    loss_value = world.sum(loss_sum).item() / config.grad_accum
                    if not math.isfinite(loss_value):
                        raise GptError(
                            f"the loss became non-finite ({loss_value}) at step {step}; stopped. "
                            f"Last good checkpoint: {last_saved or 'none (no checkpoint was saved yet)'}"
                        )
                    now = time.time()
                    tok_per_s = steps_since_log * tokens_per_step / max(now - t_last, 1e-9)
                    record = {
                        "step": step,
                        "loss": loss_value,
                        "lr": lr,
                        "tokens_per_sec": round(tok_per_s, 1),
                    }
                    if peak:
                        record["mfu"] = round(flops_per_token * tok_per_s / peak, 4)
                    log(record)
                    report("step", {**record, "elapsed": now - train_start})
                    t_last, steps_since_log = now, 0

                if step % config.eval_interval == 0 or step == config.max_iters:
                    evaluate_and_save()
                timed_out = config.max_time is not None and time.time() - train_start > config.max_time
                interrupted = interrupt.requested
                if world.enabled:  # all ranks stop together: agree at log steps (an all-reduce is a sync)
                    agree = step % config.log_interval == 0 or step == config.max_iters
                    interrupted, timed_out = world.any(interrupted, timed_out) if agree else (False, False)
                if interrupted:
                    stop_reason = "interrupted"
                    break
                if timed_out:
                    stop_reason = "max_time"
                    break
            if stop_reason == "interrupted":
                saved = f"saved {save(step, {})}. " if step > last_saved_step else ""
                raise TrainingInterrupted(
                    f"interrupted at step {step}; {saved}continue with: gpt train --resume {run_dir}"
                )
            if step > last_saved_step:
                evaluate_and_save()
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, mid-step, without saving
        raise TrainingInterrupted(
            f"interrupted during step {step + 1}; the last checkpoint is {last_saved or 'none'}"
        ) from None
    finally:
        if metrics_file is not None:
            metrics_file.close()
        if tensorboard is not None:
            tensorboard.close()
    summary = TrainSummary(
        run_dir=run_dir,
        step=step,
        train_loss=last_losses.get("train"),
        val_loss=last_losses.get("val"),
        best_val_loss=best_val,
        last_checkpoint=last_saved,
        seconds=time.time() - start_time,
        stop_reason=stop_reason,
        notes=notes,
    )
    report("done", vars(summary))
    return summary


def draw_sample(model: LanguageModel, tokenizer: Tokenizer, config: TrainConfig, device) -> str | None:
    """A short sample from a fixed seed, so runs are comparable and the global RNG is untouched."""
    if config.sample_tokens == 0:
        return None
    start = [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode_ordinary("\n")[:1] or [0]
    was_training = model.training
    engine = Engine(model, tokenizer)  # puts the model in eval mode
    settings = SampleConfig(max_new_tokens=config.sample_tokens, temperature=1.0, top_k=200, seed=config.seed)
    text = engine.generate(start, settings).samples[0].text
    model.train(was_training)
    return text
