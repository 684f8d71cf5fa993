"""Memory a training step needs, measured before the first step, and refused when it does not fit.

The graph autograd keeps for one step's solve is measured on one crop of the training size
(:func:`~.core.memory.saved_tensor_bytes`) for one and two elementary steps: their difference is the
bytes kept per step, the rest is fixed. A step keeps ``batch × (fixed + per step × n)`` with ``n = K·T``
for unrolled gradients and ``K`` otherwise (ReTune, JFB, DEQ record one Φ_K). That must fit in
:data:`SHARE` of the memory available now (``MemAvailable`` on Linux; free CUDA memory on a GPU).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import torch

from .config import Config
from .core.hypergrad import SolveOptions, solve
from .core.memory import saved_tensor_bytes
from .errors import InputError
from .models import solve_options

SHARE = 0.8  # of the available memory a step may take
GiB = 2**30


def available_memory(device: torch.device | str) -> int | None:
    """Bytes available to allocate now on ``device`` (None when unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def graph_bytes(scheme: torch.nn.Module, obs, options: SolveOptions) -> tuple[int, int]:
    """``(fixed, per step)``: bytes autograd keeps for an unrolled solve of ``scheme`` on ``obs``, from
    solves of one and two elementary steps (``options`` give the rest)."""
    kept = []
    for k in (1, 2):
        with saved_tensor_bytes() as total:
            solve(scheme, obs, dataclasses.replace(options, K=k, T=1, accelerate="none"), "unrolled")
        kept.append(total[0])
    return max(2 * kept[0] - kept[1], 0), max(kept[1] - kept[0], 0)


def check_fits(need: int, device: torch.device | str, what: str, advice: Callable[[float], str]) -> None:
    """Refuse ``need`` bytes (``what`` keeps them) above :data:`SHARE` of the memory available now;
    ``advice(room)`` says what fits in the ``room`` bytes a step may take."""
    available = available_memory(device)
    if available is not None and need > SHARE * available:
        raise InputError(f"{what} keeps about {need / GiB:.3g} GiB for backpropagation, but "
                         f"{available / GiB:.3g} GiB are available now; {advice(SHARE * available)}")


def step_bytes(config: Config, scheme: torch.nn.Module, device: torch.device | str) -> tuple[int, int]:
    """``(bytes one training image keeps, elementary steps recorded)`` for ``config``'s crop, K, T and
    gradient, measured on one crop (see the module docstring)."""
    t = config.train
    clean = torch.rand(1, 3, t.crop, t.crop, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        obs = scheme.physics.simulate(clean, 0)
    fixed, per_step = graph_bytes(scheme, obs, solve_options(t))
    steps = t.K * t.T if t.gradient == "unrolled" else t.K
    return fixed + per_step * steps, steps


def check_step_memory(config: Config, scheme: torch.nn.Module, device: torch.device | str) -> None:
    """Refuse a training step whose graph does not fit in the memory available, saying what fits."""
    per_image, steps = step_bytes(config, scheme, device)
    t = config.train

    def advice(room: float) -> str:
        fits = int(room // max(per_image, 1))
        return (f"--batch-size {fits} fits" if fits >= 1 else
                f"even one image does not fit: lower --K{', --T' if t.gradient == 'unrolled' else ''} or --crop")

    check_fits(per_image * t.batch_size, device, f"a training step ({steps} steps × --batch-size {t.batch_size} "
               f"× --crop {t.crop}²)", advice)
