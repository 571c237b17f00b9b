"""The training loop: `train(TrainConfig)` is what `gpt train` runs.

    from gptcli.config import TrainConfig
    from gptcli.training.trainer import train
    summary = train(TrainConfig(data=["corpus.txt"], tokenizer="char", max_iters=500))

`train` builds a `Trainer` (set-up: inputs, data, model, run directory) and calls `Trainer.train()`,
which hands each step to `train_step` (grad_accum micro-batches under autocast, the loss scaled by
1/grad_accum, gradient clipping, AdamW at the scheduled learning rate), logs every log_interval
steps, and asks the checkpointer whether the step is due for an eval + checkpoint (every
eval_interval steps and at the end). It stops at max_iters, early enough for max_time to bound the
whole command, final eval and checkpoint included (gptcli.training.time_budget), or on Ctrl-C,
SIGTERM or SIGUSR1 (after saving the step; gptcli.training.interrupt). Where a run stands is one
`RunState`, saved with every checkpoint; with the optimizer's and the generators' states beside it,
`--resume` reproduces the uninterrupted run exactly (on CPU, in fp32). The run directory's files are
described in gptcli.training.run_dir.

Under torchrun (WORLD_SIZE > 1) every rank runs the same code: all of them check the inputs and
train; rank 0 alone reports, logs and writes files, and holds the run directory's lock (one run
per directory: gptcli.training.run_dir.RunDirLock).
"""

import gc
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptcli.config import TrainConfig
from gptcli.errors import GptError
from gptcli.models import LanguageModel
from gptcli.runtime import autocast, mfu, peak_flops, resolve_device, resolve_precision
from gptcli.tokenizers.base import Tokenizer
from gptcli.training import data_source, distributed
from gptcli.training.chat_data import epoch_steps
from gptcli.training.checkpointer import Checkpointer
from gptcli.training.data_source import Sampler, TrainingData, model_inputs, split_sizes, train_sampler
from gptcli.training.inputs import check_settings, plan_run
from gptcli.training.interrupt import (
    STOP_SIGNALS,
    StopOnInterrupt,
    TrainingInterrupted,
    stopped_message,
)
from gptcli.training.metrics import MetricsLog, eval_record, log_record
from gptcli.training.optimizer import Optimizer, build_optimizer
from gptcli.training.run_dir import RunDirLock, tidy_checkpoints
from gptcli.training.run_setup import (
    eval_shape,
    initial_model,
    load_data,
    prepare_run_dir,
    restore_training_state,
)
from gptcli.training.schedule import learning_rate
from gptcli.training.tensorboard import TensorBoardLog
from gptcli.training.time_budget import TimeBudget
from gptcli.training.train_state import RunState, TrainSummary
from gptcli.training.validator import Validator, all_finite

STOP_SIGNAL_NAMES = {sig.name for sig in STOP_SIGNALS}
# (event, data): "info", "step", "eval", "note", "checkpoint", "done"
Report = Callable[[str, dict[str, Any]], None]


def train(
    config: TrainConfig,
    run_dir: Path | str = "out",
    resume: bool = False,
    overwrite: bool = False,
    report: Report | None = None,
    start_time: float | None = None,
) -> TrainSummary:
    """Train a model as `config` says, in `run_dir`; with resume=True, continue the run found there.

    start_time: when the command started (time.time()), what --max-time and `elapsed` count from;
    by default, now."""
    start_time = start_time or time.time()
    world, device_name = distributed.setup(config.device)
    try:
        trainer = Trainer(config, Path(run_dir), resume, overwrite, report, world, device_name, start_time)
        summary = trainer.train()
        world.barrier()  # leave together: gloo aborts a process whose peer tears down mid-flight
        return summary
    finally:
        if world.enabled:
            gc.collect()  # free DDP's reducer (held in reference cycles) while its process group still exists
        distributed.teardown(world)


class Trainer:
    """One training run. The constructor locks the run directory and sets the run up (checking
    everything); `train()` runs it and releases the directory when it ends (`close()` otherwise)."""

    config: TrainConfig  # resolved: paths absolute, the model's shape final
    run_dir: Path
    world: distributed.Dist
    device: torch.device
    precision: str  # resolved: fp32, bf16 or fp16
    tokenizer: Tokenizer
    data: TrainingData  # plain text, conversations (gpt finetune) or pairs (an encoder-decoder)
    sampler: Sampler  # the training batches; its state is saved for resume
    raw_model: LanguageModel  # what is saved and sampled from (under FSDP: the sharded module itself)
    model: torch.nn.Module  # what the training step calls: raw_model wrapped by DDP and/or torch.compile
    optimizer: Optimizer  # AdamW, or Muon + AdamW (gptcli.training.optimizer)
    peak_lrs: list[float]  # each param group's peak learning rate, in optimizer.param_groups' order
    scaler: torch.amp.GradScaler  # fp16 only; a pass-through otherwise
    state: RunState
    checkpointer: Checkpointer
    validator: Validator
    budget: TimeBudget  # --max-time: when to stop, how large an eval fits in the time left
    metrics: MetricsLog | None  # rank 0 only

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        resume: bool = False,
        overwrite: bool = False,
        report: Report | None = None,
        world: distributed.Dist | None = None,
        device_name: str | None = None,
        start_time: float | None = None,
    ):
        self.world = world or distributed.Dist()
        self.report = report if (report and self.world.is_main) else (lambda event, data: None)
        self.notes: list[str] = []
        self.start_time = start_time or time.time()  # what --max-time and `elapsed` count from
        self.run_dir = run_dir
        self.metrics = None
        # one run per directory, checked before anything is read, built or written; rank 0 alone
        # (the other ranks share the directory on purpose). Released by train(), or here on an error.
        self.lock = RunDirLock(run_dir, create=not resume) if self.world.is_main else None
        if self.lock is not None and self.lock.acquire().note:
            self.notes.append(self.lock.note)
        try:
            self._setup(config, resume, overwrite, device_name)
        except BaseException:
            self.close()
            raise

    # -----------------------------------------------------------------------------------------
    # set-up

    def _setup(self, config: TrainConfig, resume: bool, overwrite: bool, device_name: str | None) -> None:
        """The run's parts, in an order that matters (gptcli.training.run_setup)."""
        run_dir, world = self.run_dir, self.world
        if resume:
            if world.is_main:
                tidy_checkpoints(run_dir)
            world.barrier()
        self.config, self.tokenizer, resume_from = plan_run(config, run_dir, resume, overwrite, self.notes)
        config = self.config
        check_settings(config, world)
        self.device = resolve_device(device_name or config.device)
        self.precision = resolve_precision(config.precision, self.device)
        torch.manual_seed(config.seed)
        # the data, its training batches and the validator's fixed ones
        self.data = load_data(config, self.tokenizer, world, self.notes)
        if config.chat is not None and config.chat.epochs is not None and not resume:
            # fine-tuning counts in epochs: the steps that pass over the packed rows that often
            steps = epoch_steps(self.data.train, config.chat.epochs, config.batch_size, config.grad_accum)
            self.config = config = config.model_copy(update={"max_iters": steps})
        self.sampler = train_sampler(self.data, config)
        self.validator = Validator(self.data, config, self.device, self.precision)
        # the model (fresh, --init-from's weights, or the checkpoint resumed), wrapped, and its optimizer
        model, self.state, saved = initial_model(config, self.device, run_dir, resume_from)
        self.raw_model = model
        self.model = distributed.wrap_model(model, world, self.device, config.fsdp)
        self.optimizer = build_optimizer(model, config, self.device.type)
        # each group starts at its peak: read it now, before a resume loads the lrs of its last step
        self.peak_lrs = [group["lr"] for group in self.optimizer.param_groups]
        # resumed: the optimizer and generators restored, the metrics past the checkpoint dropped
        step = self.state.step
        if saved is not None:
            restore_training_state(
                resume_from, saved, self.optimizer, self.sampler, model if config.fsdp else None
            )
        prepare_run_dir(run_dir, world, resumed=saved is not None, step=step)
        if saved is not None:
            self.notes.append(f"resumed from {resume_from} at step {step}")
        if world.rank > 0:  # other dropout masks on other ranks (the weights, set above, are alike)
            torch.manual_seed(config.seed + 1000 * world.rank + step)
        world.barrier()
        self.checkpointer = Checkpointer(run_dir, config, self.tokenizer, world)
        self._setup_step()
        self.budget = TimeBudget(
            config.max_time, self.start_time, eval_shape(config, world, self.data, model)
        )
        self._report_start()

    def close(self) -> None:
        """Close the metrics files and release the run directory (train() does this when it ends)."""
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.lock is not None:
            self.lock.release()

    def _setup_step(self) -> None:
        config = self.config
        if config.compile:
            self.model = torch.compile(self.model)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.tokens_per_step = config.batch_size * config.grad_accum * config.model.block_size
        self.peak_flops = peak_flops(self.device)
        self.flops_per_token = self.raw_model.flops_per_token()
        self.metrics = None
        if self.world.is_main:
            tensorboard = TensorBoardLog(self.run_dir, self.state.step) if config.tensorboard else None
            self.metrics = MetricsLog(self.run_dir, tensorboard)

    def _report_start(self) -> None:
        train_tokens, val_tokens = split_sizes(self.data)
        self.report(
            "info",
            {
                "notes": self.notes,
                "config": self.config.model_dump(mode="json"),  # as resolved for this run
                "run_dir": str(self.run_dir),
                "device": str(self.device),
                "precision": self.precision,
                "params": self.raw_model.num_params(),
                "train_tokens": train_tokens,
                "val_tokens": val_tokens,
                "tokens_per_step": self.tokens_per_step,
                "rows_cut": data_source.rows_cut(self.data),  # then tokens_per_step is an upper bound
                "start_step": self.state.step,
                "max_iters": self.config.max_iters,
            },
        )

    # -----------------------------------------------------------------------------------------
    # the loop

    def train(self) -> TrainSummary:
        """Step until max_iters, max_time or a stop signal; the final eval and checkpoint; a summary."""
        self.model.train()
        self.t_last = time.time()
        self.positions_since_log = 0  # positions trained on this rank since the last log: tokens/s
        stop_reason = "max_iters"
        interrupt = StopOnInterrupt()
        try:
            with interrupt:
                while self.state.step < self.config.max_iters:
                    started = time.time()
                    loss_sum, lr = self.train_step()
                    self.budget.record_step(time.time() - started)
                    if self.is_log_step():
                        self.log_step(loss_sum, lr)
                    reason = None
                    if self.checkpointer.due(self.state.step):
                        self.evaluate_and_save()
                        reason = self.eval_stop_reason()
                    reason = reason or self.stop_reason(interrupt)
                    if reason is not None:
                        stop_reason = reason
                        break
                self.finish(stop_reason)
        except KeyboardInterrupt:  # a second Ctrl-C: stop now, mid-step, without saving
            raise TrainingInterrupted.cut_short(
                self.state.step + 1, self.checkpointer.last_saved(self.state), self.run_dir
            ) from None
        finally:
            self.close()
        summary = self.summary(stop_reason)
        self.report("done", vars(summary))
        return summary

    def train_step(self) -> tuple[torch.Tensor, float]:
        """One optimizer step on this rank's share of grad_accum micro-batches -> (summed loss, lr)."""
        config, world = self.config, self.world
        for group, peak in zip(self.optimizer.param_groups, self.peak_lrs):
            group["lr"] = learning_rate(self.state.step, config, peak)
        lr = self.optimizer.param_groups[0]["lr"]  # AdamW's: the lr logged
        loss_sum = torch.zeros((), device=self.device)
        micro_batches = self.sampler.next_step(config.grad_accum, world.rank, world.world_size)
        for i, batch in enumerate(micro_batches):
            x, y, inputs = model_inputs(batch, self._to_device)  # doc_ids (packed rows), src (pairs)
            self.positions_since_log += x.numel()  # padded batches are cut to their longest row
            last = i == len(micro_batches) - 1  # DDP/FSDP average gradients over ranks on the last one only
            with distributed.gradient_sync(self.model, world, config.fsdp, sync=last):
                with autocast(self.device, self.precision):
                    _, loss = self.model(x, y, **inputs)
                self.scaler.scale(loss / len(micro_batches)).backward()
            loss_sum += loss.detach()
        if config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return loss_sum, lr

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":  # pinned host memory makes the copy truly asynchronous
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def is_log_step(self) -> bool:
        return self.state.step % self.config.log_interval == 0 or self.state.step == self.config.max_iters

    def log_step(self, loss_sum: torch.Tensor, lr: float) -> None:
        """The step's mean loss over all micro-batches of all ranks (the one host sync per log), speed, MFU."""
        step = self.state.step
        positions = torch.tensor(float(self.positions_since_log), device=self.device)
        loss, positions = self.world.sum(torch.stack([loss_sum.float(), positions])).tolist()
        loss /= self.config.grad_accum
        if not math.isfinite(loss):
            raise GptError(
                f"the loss became non-finite ({loss}) at step {step}; stopped. Last good checkpoint: "
                f"{self.checkpointer.last_saved(self.state) or 'none (no checkpoint was saved yet)'}"
            )
        now = time.time()
        tokens_per_sec = positions / max(now - self.t_last, 1e-9)  # every rank's
        utilization = mfu(self.flops_per_token, tokens_per_sec, self.peak_flops) if self.peak_flops else None
        record = log_record(step, loss, lr, tokens_per_sec, utilization, now - self.start_time)
        self.write(record)
        self.report("step", record)
        self.t_last, self.positions_since_log = now, 0

    def evaluate_and_save(self) -> None:
        """An eval (as large as fits in --max-time's time left) and a checkpoint, timed for the budget."""
        config = self.config
        iters, tokens = self.budget.plan_eval(config.eval_iters, config.sample_tokens)
        iters, tokens = (int(v) for v in self.world.min(iters, tokens))  # ranks' clocks differ: agree
        if (iters, tokens) != (config.eval_iters, config.sample_tokens):
            sample = " and no sample" if tokens < config.sample_tokens else ""
            self.note(
                f"--max-time: the eval at step {self.state.step} used {iters} of {config.eval_iters} "
                f"batches per split{sample}, to end in time"
            )
        losses = self.evaluate(iters, tokens)
        started = time.time()
        path = self.checkpointer.save(self.state, losses, self.raw_model, self.optimizer, self.sampler)
        self.budget.record_save(time.time() - started)
        self.report("checkpoint", {"step": self.state.step, "path": str(path)})

    def note(self, message: str) -> None:
        """A note in the summary, shown as it happens."""
        self.notes.append(message)
        self.report("note", {"message": message})

    def evaluate(self, iters: int, tokens: int) -> dict[str, float]:
        """Losses on `iters` fixed batches per split and a sample of `tokens`; every rank (same batches,
        same result)."""
        state = self.state
        started = time.time()
        losses = self.validator.losses(self.raw_model, iters)
        eval_seconds = time.time() - started
        if not all_finite(losses):
            raise GptError(
                f"the loss became non-finite at step {state.step}; stopped without saving. "
                f"Last good checkpoint: {self.checkpointer.last_saved(state) or 'none'}"
            )
        state.train_loss, state.val_loss = losses.get("train"), losses.get("val")
        if state.val_loss is not None:
            improved = state.best_val_loss is None or state.val_loss < state.best_val_loss
            state.best_val_loss = state.val_loss if improved else state.best_val_loss
            state.evals_since_best = 0 if improved else state.evals_since_best + 1
        started = time.time()
        # all ranks: FSDP forwards are collective
        sample = self.validator.sample(self.raw_model, self.tokenizer, tokens)
        self.budget.record_eval(iters * len(losses), eval_seconds, tokens, time.time() - started)
        self.write(eval_record(state.step, losses, sample, time.time() - self.start_time))
        self.report(
            "eval",
            {
                "step": state.step,
                "train_loss": state.train_loss,
                "val_loss": state.val_loss,
                "sample": sample,
            },
        )
        return losses

    def stop_reason(self, interrupt: StopOnInterrupt) -> str | None:
        """A stop signal's name ('SIGINT' for Ctrl-C, 'SIGTERM', 'SIGUSR1'), 'max_time', or None to go on.

        Under torchrun the ranks agree at log steps and at eval steps (just synchronized by the save)."""
        config = self.config
        ahead = self.steps_to_next_check()
        timed_out = self.budget.should_stop(config.eval_iters, config.sample_tokens, ahead)
        exchange = self.is_log_step() or self.state.saved_step == self.state.step
        return interrupt.agreed_stop(self.world, timed_out, exchange=exchange)

    def steps_to_next_check(self) -> int:
        """Steps until the loop can next stop: 1 alone; under torchrun, to the next log or eval step."""
        if not self.world.enabled:
            return 1
        step, config = self.state.step, self.config
        log, save = config.log_interval, config.eval_interval
        return min(log - step % log, save - step % save)

    def eval_stop_reason(self) -> str | None:
        """'target_loss' or 'early_stop' after an eval that meets one (every rank: the same losses)."""
        config, state = self.config, self.state
        if (
            config.target_loss is not None
            and state.val_loss is not None
            and state.val_loss <= config.target_loss
        ):
            return "target_loss"
        if config.early_stop is not None and state.evals_since_best >= config.early_stop:
            return "early_stop"
        return None

    def finish(self, stop_reason: str) -> None:
        """The final eval and checkpoint, unless this step was just saved; on a stop signal the checkpoint
        alone, then TrainingInterrupted (exit code 128 + the signal's number) saying how to continue."""
        state = self.state
        unsaved = state.step > state.saved_step
        if stop_reason in STOP_SIGNAL_NAMES:
            if unsaved:
                self.checkpointer.save(state, {}, self.raw_model, self.optimizer, self.sampler)
            sig = signal.Signals[stop_reason]
            saved = self.checkpointer.last_saved(state)  # this step's checkpoint, just written or not
            raise TrainingInterrupted(stopped_message(sig, state.step, saved, self.run_dir), sig)
        if unsaved:
            self.evaluate_and_save()

    def write(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(record)

    def summary(self, stop_reason: str) -> TrainSummary:
        state = self.state
        return TrainSummary(
            run_dir=self.run_dir,
            step=state.step,
            train_loss=state.train_loss,
            val_loss=state.val_loss,
            best_val_loss=state.best_val_loss,
            last_checkpoint=self.checkpointer.last_saved(state),
            seconds=time.time() - self.start_time,
            stop_reason=stop_reason,
            notes=self.notes,
        )
