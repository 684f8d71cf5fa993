"""Upper bounds on the work a command accepts — what fits in memory and finishes in reasonable time —
refused up front with the reason, rather than an out-of-memory kill or an endless step."""

from __future__ import annotations

from .errors import InputError

FLOAT32_MAX = 3.4028234663852886e38  # every float of a config becomes a float32 tensor somewhere
MAX_ITERATIONS = 10**6  # iterations of the scheme in one solve: time
MAX_KEPT_BYTES = 64 * 2**30  # iterates kept for backpropagation: memory


def check_cost(what: str, iterations: int, kept_values: int = 0, itemsize: int = 4) -> None:
    """Refuse a solve of more than :data:`MAX_ITERATIONS` iterations (time), or whose iterates kept
    for backpropagation (``kept_values`` numbers) need more than :data:`MAX_KEPT_BYTES` (memory)."""
    if iterations > MAX_ITERATIONS:
        raise InputError(f"{what} = {iterations:.3g} iterations per solve is too many "
                         f"(at most {MAX_ITERATIONS:.0e}: time)")
    need = kept_values * itemsize
    if need > MAX_KEPT_BYTES:
        raise InputError(f"{what}: the iterates kept for backpropagation need about {need / 2**30:.3g} GiB "
                         f"(at most {MAX_KEPT_BYTES // 2**30} GiB: memory)")
