"""Memory that autograd keeps for the backward pass."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def saved_tensor_bytes():
    """Count the bytes of distinct storages saved for backward inside the block.

    Yields a one-item list whose value is updated as tensors are saved. On CUDA the peak allocated
    memory (``torch.cuda.max_memory_allocated``) is the better measure; this one works on any device.
    """
    seen: set[tuple[int, int]] = set()
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen:
            seen.add(key)
            total[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total
