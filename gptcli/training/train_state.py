"""What a checkpoint holds beyond the weights so that `--resume` continues exactly.

    train_state.json          RunState (step, best val loss, ...), AdamW's param groups under
                              "optimizer" (and Muon's under "optimizer"."muon"), the seed
    train_state.safetensors   AdamW's tensors ("optim.<param index>.<name>"), Muon's momentum
                              buffers ("muon.<param index>.momentum_buffer", --optimizer muon),
                              the RNG states ("rng.cpu", "rng.sampler", "rng.cuda.<i>")

Everything random in training (batches, dropout) comes from generators whose states are saved,
so a resumed run draws exactly what the uninterrupted run would have drawn.
"""

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from gptcli.data.sampler import BatchSampler
from gptcli.errors import GptError
from gptcli.storage import checkpoint as ckpt
from gptcli.storage.files import read_json
from gptcli.storage.tensorfile import read_safetensors
from gptcli.training import distributed
from gptcli.training.optimizer import ADAMW, MUON, optimizer_parts


@dataclass
class RunState:
    """Where a run stands; saved in every checkpoint's train_state.json."""

    step: int = 0  # optimizer steps done
    best_val_loss: float | None = None  # lowest val loss of any eval so far
    evals_since_best: int = 0  # evals in a row whose val loss was not below best_val_loss (--early-stop)
    saved_step: int = -1  # step of the newest checkpoint (-1: none yet)
    train_loss: float | None = None  # the latest eval's losses
    val_loss: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunState":
        """The known fields of a train_state.json (older ones hold only step and best_val_loss)."""
        known = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in known})
        state.saved_step = state.step  # the state was saved with the checkpoint it is read from
        return state


@dataclass
class TrainSummary:
    run_dir: Path
    step: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    last_checkpoint: Path | None
    seconds: float
    stop_reason: (
        str  # max_iters, max_time, target_loss, early_stop (a stop by signal raises TrainingInterrupted)
    )
    notes: list[str] = field(default_factory=list)


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


def optimizer_state(optimizer, sharded_model=None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer's state as flat tensors (for safetensors) + its param groups (for JSON):
    AdamW's as "optim.*" and {"param_groups"}, Muon's (if any) as "muon.*" and {"muon": {"param_groups"}}.

    With a sharded (FSDP) model every rank must call this; the state is gathered whole on rank 0.
    """
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for prefix, part in optimizer_parts(optimizer).items():
        if sharded_model is not None:
            sd = distributed.full_optimizer_state(sharded_model, part)
        else:
            sd = part.state_dict()
        for pid, state in sd["state"].items():
            for name, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"{prefix}.{pid}.{name}"] = value.detach().cpu()
        if prefix == ADAMW:
            meta["param_groups"] = sd["param_groups"]  # where AdamW-only runs always kept them
        else:
            meta[prefix] = {"param_groups": sd["param_groups"]}
    return tensors, meta


def load_optimizer_state(
    optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any], sharded_model=None
) -> None:
    """The inverse of optimizer_state; a checkpoint of the other --optimizer is a GptError."""
    parts = optimizer_parts(optimizer)
    if (MUON in meta) != (MUON in parts):
        saved, wanted = ("muon", "adamw") if MUON in meta else ("adamw", "muon")
        raise GptError(
            f"the checkpoint was trained with --optimizer {saved}, this run asks for {wanted}: "
            "a resumed run keeps its optimizer"
        )
    for prefix, part in parts.items():
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(f"{prefix}."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = value
        groups = meta if prefix == ADAMW else meta[prefix]
        full = {"state": state, "param_groups": groups["param_groups"]}
        if sharded_model is not None:
            distributed.load_full_optimizer_state(sharded_model, part, full)
        else:
            part.load_state_dict(full)


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
