"""What a step costs before any arithmetic: the aten operations it dispatches, the values it reads back, its memory.

On a GPU each dispatched compute operation is at least one kernel launch, and each value read back to the host
(``item``, ``bool``, ``float``, ``tolist``, ``cpu``) waits for all queued kernels. Counted here on any device
(the CPU too), so that a test or a benchmark can bound them; retune's wavelet step dispatches under 100
operations and a training step reads back 3 values or fewer (see ``bench/bench_step_ops.py``).
"""

from __future__ import annotations

import contextlib
import traceback
import weakref
from collections import Counter
from collections.abc import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
HOST_SIDE = ("torch/optim/",)  # Adam's step counters live on the host (not capturable): reading them never waits


class _Dispatched(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.views: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        (self.views if func.is_view else self.ops)[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> tuple[Counter[str], Counter[str]]:
    """``(compute, views)``: the aten operations ``fn()`` dispatches by name, views (no kernel) apart."""
    with _Dispatched() as mode:
        fn()
    return mode.ops, mode.views


@contextlib.contextmanager
def host_reads() -> Iterator[list[str]]:
    """Within the block, every read of a tensor's value by the host, as ``"method at file:line"`` of the
    innermost caller outside torch (reads by ``torch.optim`` excluded, see :data:`HOST_SIDE`)."""
    found: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name: str, method):
        def read(self, *args, **kwargs):
            stack = traceback.extract_stack()[:-1]
            if not any(part in frame.filename for frame in stack[-4:] for part in HOST_SIDE):
                caller = next((f for f in reversed(stack) if "/torch/" not in f.filename), stack[-1])
                found.append(f"{name} at {caller.filename.rsplit('/', 1)[-1]}:{caller.lineno}")
            return method(self, *args, **kwargs)

        return read

    try:
        for name, method in originals.items():
            setattr(torch.Tensor, name, wrap(name, method))
        yield found
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


class _Live(TorchDispatchMode):
    """Bytes of the tensors that operations create and that are still alive, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t._base is None:
                    nbytes = t.untyped_storage().nbytes()
                    self.live += nbytes
                    weakref.finalize(t, self._release, nbytes)
            self.peak = max(self.peak, self.live)
        return out


def peak_bytes(fn: Callable[[], object]) -> int:
    """The most bytes held at once by tensors that ``fn()`` creates (views and in-place results share their
    storage and are not counted again; what ``fn`` returns counts until it is released)."""
    with _Live() as mode:
        fn()
    return mode.peak
