"""Data-parallel training across processes (torchrun) on PyTorch's distributed engine.

    torchrun --nproc_per_node=2 -m gptcli train ...      # NCCL on GPUs, gloo on CPU

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; with WORLD_SIZE > 1 the trainer joins the process
group, wraps the model in DistributedDataParallel, and splits each optimizer step's micro-batches
between the ranks. Rank 0 alone logs, samples and writes files. Without torchrun all of this is a
no-op (`Dist()` is a world of one).
"""

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gptcli.errors import GptError


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all ranks (in place; returned for convenience)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, *flags: bool) -> list[bool]:
        """Per flag: is it set on any rank? Keeps every rank's decisions (stop, save) in step."""
        return [bool(v) for v in self._reduce(flags, dist.ReduceOp.MAX)]

    def min(self, *values: float) -> list[float]:
        """Per value: the smallest on any rank (numbers each rank derived from its own clock)."""
        return self._reduce(values, dist.ReduceOp.MIN)

    def _reduce(self, values, op) -> list[float]:
        """All-reduce a few numbers with `op`; one process: the numbers as they are."""
        if not self.enabled:
            return [float(v) for v in values]
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([float(v) for v in values], device=device)
        dist.all_reduce(t, op=op)
        return t.tolist()


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def setup(device_name: str) -> tuple[Dist, str]:
    """Join torchrun's process group when there is one; returns (Dist, the device name to use)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(), device_name
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if torch.cuda.device_count() <= local_rank:
            raise GptError(
                f"rank {rank} needs GPU {local_rank}, but this machine has {torch.cuda.device_count()}"
            )
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    elif device_name == "auto":
        device_name = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, local_rank, world_size), device_name


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, world: Dist, device: torch.device, fsdp: bool) -> torch.nn.Module:
    """The module the training step calls: sharded in place (FSDP2), wrapped in DDP, or as it is."""
    if fsdp:
        shard(model)  # in place: each rank keeps 1/N of every parameter
        return model
    if world.enabled:
        # DDP makes every rank start from rank 0's weights and averages the gradients
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model


def gradient_sync(model: torch.nn.Module, world: Dist, fsdp: bool, sync: bool) -> AbstractContextManager:
    """Average gradients over ranks in this backward only if `sync` (the step's last micro-batch).

    The other micro-batches accumulate locally: one all-reduce per optimizer step, not per micro-batch.
    """
    if fsdp:
        model.set_requires_gradient_sync(sync)
        return nullcontext()
    if world.enabled and not sync:
        return model.no_sync()
    return nullcontext()


# ---------------------------------------------------------------------------------------------
# sharded training (FSDP2): parameters, gradients and optimizer state split across ranks
# (torch.distributed.fsdp and .checkpoint are imported where used: they take ~1.3 s to import,
# which every run that does not shard would pay)


def shard(model: torch.nn.Module) -> None:
    """fully_shard each transformer block, then the rest (embeddings, final norm, head)."""
    from torch.distributed.fsdp import fully_shard

    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """All ranks call this; rank 0 gets every weight whole, on the CPU (the others get {})."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def _param_names(model, optimizer) -> list[str]:
    """Names of the optimizer's parameters in its own order: the ids of optimizer.state_dict()."""
    name_of = {p: n for n, p in model.named_parameters()}
    return [name_of[p] for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(model, optimizer) -> dict:
    """All ranks call this; rank 0 gets the optimizer state whole, in optimizer.state_dict()'s
    format (parameters by position), so a sharded run writes the same checkpoint as any other."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    position = {n: i for i, n in enumerate(_param_names(model, optimizer))}
    groups = [{**g, "params": [position[n] for n in g["params"]]} for g in by_name.get("param_groups", [])]
    return {"state": {position[n]: s for n, s in by_name.get("state", {}).items()}, "param_groups": groups}


def load_full_optimizer_state(model, optimizer, state: dict) -> None:
    """The inverse: a whole optimizer state (by position) into a sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = _param_names(model, optimizer)
    by_name = {
        "state": {names[int(i)]: s for i, s in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=_options())
