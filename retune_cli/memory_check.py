"""Memory a training step or a restoration needs, measured before it runs, and refused when it does not fit.

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
        raise InputError(f"{what} needs about {need / GiB:.3g} GiB, but "
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

    check_fits(per_image * t.batch_size, device, f"backpropagating a training step ({steps} steps × --batch-size "
               f"{t.batch_size} × --crop {t.crop}²)", advice)


PROBE = 64  # side of the observation whose restoration is measured
LARGE = 2**22  # pixels from which a restoration is measured first (smaller ones fit anywhere this runs)


def check_restore_memory(scheme: torch.nn.Module, y: torch.Tensor, image: str) -> None:
    """Refuse restoring an observation ``y`` of :data:`LARGE` pixels or more whose solve does not fit: the peak
    bytes of one elementary step on a simulated ``PROBE``² observation (prepare, start, step), times the ratio
    of pixels (every scheme's work and iterates grow linearly with them)."""
    from .op_counts import peak_bytes

    pixels = y.shape[-2] * y.shape[-1]
    if pixels < LARGE:
        return
    physics = scheme.physics
    probe = torch.rand(1, y.shape[-3], PROBE, PROBE, generator=torch.Generator().manual_seed(0)).to(y)

    observed = []

    def one_step() -> None:
        obs = physics.simulate(probe, 0)
        ctx = scheme.prepare(obs)
        scheme.step(scheme.init(ctx), ctx)
        observed.append(obs.y[0, 0].numel())  # the probe's observed pixels (fewer than PROBE² for SR)

    with torch.no_grad():
        per_pixel = peak_bytes(one_step) / observed[0]

    def advice(room: float) -> str:
        side = int((room / per_pixel) ** 0.5)
        return f"restore a crop of about {side}×{side} pixels, or a downscaled copy"

    check_fits(int(per_pixel * pixels), y.device, f"restoring {image} ({y.shape[-1]}×{y.shape[-2]})", advice)
