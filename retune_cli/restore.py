"""Restore workflow: run a checkpoint's restarted scheme on one degraded image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .core.hypergrad import FixedPoint, restore
from .core.physics import simulate
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


def restore_file(
    model: Model,
    image: Path,
    simulate_seed: int | None = None,
    T: int | None = None,
    tol: float | None = None,
) -> RestoreResult:
    """Restore ``image``; with ``simulate_seed`` the image is clean and is degraded first."""
    from deepinv.loss.metric import PSNR

    device = next(model.scheme.parameters()).device
    x = read_image(image).unsqueeze(0).to(device)
    clean = None
    if simulate_seed is not None:
        clean = x
        with torch.no_grad():
            x = simulate(model.scheme.physics, clean, simulate_seed)
    result = run(model, x, T, tol)
    psnr = psnr_obs = None
    if clean is not None:
        metric = PSNR(max_pixel=1.0)
        psnr, psnr_obs = float(metric(result.x, clean)), float(metric(x, clean))
    return RestoreResult(result.x[0], x[0], result.restarts, result.residual, psnr, psnr_obs)
