"""Restore workflow: run a checkpoint's restarted scheme on one degraded image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .core.hypergrad import FixedPoint, restore
from .core.physics import ChannelBlur, RandomInpainting, simulate
from .errors import InputError
from .images import read_image
from .models import build_scheme

MAX_RESTARTS_WITH_TOL = 1000


@dataclass(frozen=True)
class Model:
    """A checkpoint and the scheme it describes, with θ loaded."""

    checkpoint: ckpt.Checkpoint
    scheme: torch.nn.Module

    @property
    def config(self):
        return self.checkpoint.config


def load_model(path: Path | str, device: torch.device | str = "cpu") -> Model:
    checkpoint = ckpt.load(path)
    scheme = build_scheme(checkpoint.config, device)
    ckpt.load_parameters(scheme, checkpoint)
    scheme.eval()
    return Model(checkpoint, scheme)


def restart_budget(model: Model, T: int | None, tol: float | None) -> tuple[int, float]:
    """``(max restarts, tolerance)``: ``T`` restarts (default: the checkpoint's), or up to
    ``T`` (default 1000) restarts until the relative residual is ≤ ``tol``."""
    if tol is None:
        return (T or model.config.train.T), 0.0
    return (T or MAX_RESTARTS_WITH_TOL), tol


def run(model: Model, y: torch.Tensor, T: int | None = None, tol: float | None = None) -> FixedPoint:
    """Restore a batch ``y (N, 3, H, W)`` with the model's K and the restart budget."""
    max_restarts, tolerance = restart_budget(model, T, tol)
    return restore(model.scheme, y, model.config.train.K, max_restarts, tolerance)


@dataclass(frozen=True)
class RestoreResult:
    restored: torch.Tensor  # (3, H, W)
    observation: torch.Tensor  # (3, H, W): the input, or the simulated degradation
    restarts: int
    residual: float
    psnr: float | None  # against the clean input, with --simulate
    psnr_observation: float | None


def check_fits(model: Model, shape: torch.Size, image: Path | str) -> None:
    """Refuse an image smaller than the blur kernel of the model's physics."""
    physics = model.scheme.physics
    if isinstance(physics, ChannelBlur):
        kh, kw = physics.kernel.shape[-2:]
        if shape[-2] < kh or shape[-1] < kw:
            raise InputError(f"{image} is {shape[-1]}×{shape[-2]}, smaller than the {kw}×{kh} blur kernel")


def set_operator(model: Model, shape: torch.Size, mask: Path | None, kernel: Path | None) -> bool:
    """Give the physics a known mask (image, white = kept) or blur kernel (``.npy``); True if one was set."""
    physics = model.scheme.physics
    if mask is not None:
        if not isinstance(physics, RandomInpainting):
            raise InputError(
                f"--mask is for inpainting checkpoints; {model.checkpoint.path} is {model.config.physics.name}"
            )
        m = read_image(mask)[:1].unsqueeze(0)
        if m.shape[-2:] != shape[-2:]:
            raise InputError(f"--mask {mask} is {m.shape[-1]}×{m.shape[-2]}, the image {shape[-1]}×{shape[-2]}")
        physics.set_mask((m > 0.5).to(next(model.scheme.parameters()).device, torch.float32))
        return True
    if kernel is not None:
        if not isinstance(physics, ChannelBlur):
            raise InputError(
                f"--kernel is for deblurring checkpoints; {model.checkpoint.path} is {model.config.physics.name}"
            )
        try:
            array = np.load(kernel, allow_pickle=False)
            physics.set_kernel(torch.from_numpy(array.astype(np.float32)))
        except (OSError, ValueError) as e:
            raise InputError(f"--kernel {kernel}: {str(e).splitlines()[0]}") from None
        return True
    if isinstance(physics, RandomInpainting):
        raise InputError("this checkpoint inpaints: give --mask FILE (white = known pixels), or --simulate")
    return False


def restore_file(
    model: Model,
    image: Path,
    simulate_seed: int | None = None,
    T: int | None = None,
    tol: float | None = None,
    mask: Path | None = None,
    kernel: Path | None = None,
) -> RestoreResult:
    """Restore ``image``; with ``simulate_seed`` the image is clean and is degraded first (with the
    given mask or kernel, else with the checkpoint's, drawn from the seed)."""
    from deepinv.loss.metric import PSNR

    device = next(model.scheme.parameters()).device
    x = read_image(image).unsqueeze(0).to(device)
    known = set_operator(model, x.shape, mask, kernel) if simulate_seed is None or mask or kernel else False
    check_fits(model, x.shape, image)
    clean = None
    if simulate_seed is not None:
        clean = x
        with torch.no_grad():
            x = simulate(model.scheme.physics, clean, simulate_seed, redraw=not known)
    result = run(model, x, T, tol)
    psnr = psnr_obs = None
    if clean is not None:
        metric = PSNR(max_pixel=1.0)
        psnr, psnr_obs = float(metric(result.x, clean)), float(metric(x, clean))
    return RestoreResult(result.x[0], x[0], result.restarts, result.residual, psnr, psnr_obs)
