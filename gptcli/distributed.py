"""Data-parallel training across processes (torchrun) on PyTorch's distributed engine.

    torchrun --nproc_per_node=2 -m gptcli train ...      # NCCL on GPUs, gloo on CPU

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; with WORLD_SIZE > 1 the trainer joins the process
group, wraps the model in DistributedDataParallel, and splits each optimizer step's micro-batches
between the ranks. Rank 0 alone logs, samples and writes files. Without torchrun all of this is a
no-op (`Dist()` is a world of one).
"""

import os
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
        if not self.enabled:
            return list(flags)
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor([float(f) for f in flags], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]


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
