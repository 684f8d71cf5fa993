"""Where the engine runs: a device that queues kernels (CUDA, …) or the CPU, which runs each operation at once.

On a launch-bound device every operation is a kernel launch and every value read back waits for the queue, so
the engine takes the paths with the fewest operations (:mod:`.wavelets`) and reads residuals only where it
must (:mod:`.fixed_point`). On the CPU a read costs nothing and a dozen small operations can beat one gather,
so it takes the fastest paths and stops restarts at an exact fixed point. Tests force either policy by
setting :func:`launch_bound` on this module.
"""

from __future__ import annotations

import torch


def launch_bound(t: torch.Tensor) -> bool:
    """Whether ``t``'s device queues one kernel per operation (any device but the CPU)."""
    return t.device.type != "cpu"
