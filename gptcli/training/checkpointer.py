"""Saving a run's checkpoints: when, what, and what happens when the disk says no.

The trainer asks `due(step)` after every step and calls `save` when it says so (and at the end,
at --max-time, on Ctrl-C, SIGTERM or SIGUSR1). Rank 0 writes; under FSDP every rank first takes
part in gathering the whole weights and optimizer state. With the first checkpoint the run's
config.json and tokenizer.json are written too, and after each one the old checkpoints are pruned.
"""

from pathlib import Path

import torch

from gptcli.chat.template import ChatTemplate
from gptcli.config import TrainConfig
from gptcli.errors import GptError
from gptcli.loading import base_reference
from gptcli.models.lora import adapter_weights
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers.base import Tokenizer
from gptcli.training import distributed
from gptcli.training.data_source import Sampler
from gptcli.training.run_dir import checkpoint_path, prune_checkpoints, write_run_files
from gptcli.training.train_state import RunState, optimizer_state, rng_state


class Checkpointer:
    def __init__(self, run_dir: Path, config: TrainConfig, tokenizer: Tokenizer, world: distributed.Dist):
        self.run_dir, self.config, self.tokenizer, self.world = run_dir, config, tokenizer, world
        self.wrote_run_files = False
        # a fine-tune's checkpoints carry their chat template: generate, chat, serve and export read it
        self.chat_info = {}
        if config.chat is not None:
            self.chat_info = {"chat_template": ChatTemplate.from_json(config.chat.template).to_json()}
        if config.lora is not None:  # an adapter's checkpoint names its base, which must not change
            base = Path(config.init_from)
            self.chat_info |= {"lora": config.lora.model_dump(mode="json"), "base": base_reference(base)}

    def due(self, step: int) -> bool:
        """Every eval_interval steps, and at the last one."""
        return step % self.config.eval_interval == 0 or step == self.config.max_iters

    def last_saved(self, state: RunState) -> Path | None:
        return checkpoint_path(self.run_dir, state.saved_step) if state.saved_step >= 0 else None

    def save(
        self,
        state: RunState,
        losses: dict[str, float],
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        sampler: Sampler,
    ) -> Path:
        """Write the checkpoint of `state.step` (every rank calls this; all wait for rank 0)."""
        path = checkpoint_path(self.run_dir, state.step)
        sharded = model if self.config.fsdp else None
        weights = distributed.full_weights(model) if sharded else model
        if self.config.lora is not None:
            weights = adapter_weights(ckpt.unwrap(model))  # the adapters alone: the base stays where it is
        opt_tensors, opt_meta = optimizer_state(optimizer, sharded)
        if self.world.is_main:
            if isinstance(weights, dict) and self.config.model.tie_weights:
                weights.pop("lm_head.weight", None)  # the tied head is wte: stored once
            try:
                self._write(path, state, losses, weights, {**opt_tensors, **rng_state(sampler)}, opt_meta)
            except OSError as e:  # disk full, no permission: the half-written checkpoint is already gone
                raise self._save_failed(path, state, e) from None
        self.world.barrier()
        state.saved_step = state.step
        return path

    def _write(self, path: Path, state: RunState, losses, weights, state_tensors, opt_meta) -> None:
        if not self.wrote_run_files:  # with the first checkpoint: a run that dies before it leaves no config
            write_run_files(self.run_dir, self.config, self.tokenizer)
            self.wrote_run_files = True
        ckpt.save_checkpoint(
            path,
            weights,
            self.config.model,
            self.tokenizer,
            info={
                "step": state.step,
                "train_loss": losses.get("train"),
                "val_loss": losses.get("val"),
                **self.chat_info,
            },
            state_tensors=state_tensors,
            state_json={**state.to_json(), "optimizer": opt_meta, "seed": self.config.seed},
        )
        prune_checkpoints(self.run_dir, self.config.keep_checkpoints)

    def _save_failed(self, path: Path, state: RunState, e: OSError) -> GptError:
        where = f" ({e.filename})" if e.filename else ""
        previous = self.last_saved(state)
        after = (
            f"the previous checkpoint {previous} is intact: make room and continue with "
            f"gpt train --resume {self.run_dir}"
            if previous
            else "no checkpoint was saved before it"
        )
        return GptError(f"could not save {path.name}: {e.strerror or e}{where}; {after}")
