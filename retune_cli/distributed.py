"""Data-parallel training on PyTorch's own engine (``torch.distributed``), started by ``torchrun``.

Every rank builds the same global batch (a pure function of seed and step), keeps its share
``batch[rank::world]``, and backpropagates its shard's mean loss; the gradients of θ are averaged
with ``all_reduce`` so that every rank takes the same Adam step as one process on the whole batch
would. Only rank 0 writes files, draws progress and prints errors. gloo on CPU, NCCL on CUDA.

torch is imported where it is used: the CLI's error path asks :func:`env_rank` before any heavy import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Group:
    """This process's place: ``rank`` among ``world`` processes (1 when not distributed)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"  # where collective tensors live (CUDA for NCCL)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's images of a global batch."""
        return batch[self.rank :: self.world] if self.active else batch

    def average(self, tensors) -> None:
        """In place: the mean over ranks of each tensor."""
        if not self.active:
            return
        import torch.distributed as dist

        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(self.world)

    def close(self) -> None:
        """Leave the process group (a no-op for one process)."""
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (so that all ranks stop together)."""
        if not self.active:
            return flag
        import torch
        import torch.distributed as dist

        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())


SINGLE = Group()


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def launched_by_torchrun() -> bool:
    return _env_int("WORLD_SIZE", 1) > 1


def env_rank() -> int:
    """This process's rank as torchrun set it (``RANK``), before the process group is joined; 0 for a
    single process (or an unreadable ``RANK``)."""
    return _env_int("RANK", 0) if launched_by_torchrun() else 0


def start(device: torch.device) -> tuple[Group, torch.device]:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA); a no-op for one process.

    On CUDA each rank uses the GPU of its ``LOCAL_RANK``.
    """
    if not launched_by_torchrun():
        return Group(), device
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Group(dist.get_rank(), dist.get_world_size(), str(device)), device
