"""Restore workflow: run a checkpoint's restarted scheme on one degraded image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .core.hypergrad import GRADIENT_MODES, Solution, restore
from .core.physics import Observation, Params
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

    @property
    def device(self) -> torch.device:
        return next(self.scheme.parameters()).device


def load_model(path: Path | str, device: torch.device | str = "cpu") -> Model:
    checkpoint = ckpt.load(path)
    scheme = build_scheme(checkpoint.config, device)
    ckpt.load_parameters(scheme, checkpoint)
    scheme.eval()
    return Model(checkpoint, scheme)


def restart_budget(model: Model, T: int | None, tol: float | None) -> tuple[int, float]:
    """``(max restarts, tolerance)``: ``T`` restarts, or up to ``T`` (default 1000) restarts until the
    relative residual is ≤ ``tol``. With neither, what training did: the checkpoint's T, or for a
    checkpoint trained at the fixed point (jfb, deq) restarts to its ``train.tol`` (at most its
    ``train.max_restarts``)."""
    t = model.config.train
    if tol is None and T is None and GRADIENT_MODES[t.gradient].equilibrium:
        return t.max_restarts, t.tol
    if tol is None:
        return (T or t.T), 0.0
    return (T or MAX_RESTARTS_WITH_TOL), tol


def run(model: Model, obs: Observation, T: int | None = None, tol: float | None = None) -> Solution:
    """Restore an observed batch ``(N, 3, H, W)`` with the model's K and the restart budget."""
    max_restarts, tolerance = restart_budget(model, T, tol)
    return restore(model.scheme, obs, model.config.train.K, max_restarts, tolerance)


@dataclass(frozen=True)
class RestoreResult:
    restored: torch.Tensor  # (3, H, W)
    observation: torch.Tensor  # (3, H, W): the input, or the simulated degradation
    restarts: int
    residual: float
    psnr: float | None  # against the clean input, with --simulate
    psnr_observation: float | None


def check_fits(model: Model, shape: torch.Size, image: Path | str) -> None:
    """Refuse an image that the model's physics cannot observe (e.g. smaller than its blur kernel)."""
    try:
        model.scheme.physics.check_fits(shape)
    except ValueError as e:
        raise InputError(f"{image}: {e}") from None


def _read_operator(path: Path, reads: str) -> torch.Tensor:
    if reads == "image":
        return read_image(path)
    try:
        return torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))
    except (OSError, ValueError) as e:
        raise ValueError(str(e).splitlines()[0] or "not a .npy array") from None


def user_operator(model: Model, shape: torch.Size, operators: dict[str, Path | None]) -> Params | None:
    """The physics' parameters from a user's file (``{"mask": path, "kernel": path}``, as the flags),
    or None when none is given; the physics says which flag it takes and how it reads it."""
    physics = model.scheme.physics
    given = {flag: path for flag, path in operators.items() if path is not None}
    spec = physics.user_operator
    for flag in given:
        if spec is None or flag != spec.flag:
            raise InputError(
                f"--{flag} does not apply to {model.checkpoint.path}, whose physics is {physics.name}"
                + (f"; it takes --{spec.flag} ({spec.meaning})" if spec else "")
            )
    if not given:
        return None
    path = given[spec.flag]
    try:
        params = physics.operator_params(_read_operator(path, spec.reads), shape)
    except ValueError as e:
        raise InputError(f"--{spec.flag} {path}: {e}") from None
    return {k: v.to(model.device) for k, v in params.items()}


def restore_file(
    model: Model,
    image: Path,
    simulate_seed: int | None = None,
    T: int | None = None,
    tol: float | None = None,
    operators: dict[str, Path | None] | None = None,
) -> RestoreResult:
    """Restore ``image``; with ``simulate_seed`` the image is clean and is degraded first (with the
    given mask or kernel, else with the checkpoint's physics' own, drawn from the seed)."""
    from deepinv.loss.metric import PSNR

    physics = model.scheme.physics
    x = read_image(image).unsqueeze(0).to(model.device)
    params = user_operator(model, x.shape, operators or {})
    check_fits(model, x.shape, image)
    clean = None
    if simulate_seed is not None:
        clean = x
        with torch.no_grad():
            obs = physics.simulate(clean, simulate_seed, params)
    elif params is None and physics.needs_user_operator:
        spec = physics.user_operator
        raise InputError(f"this checkpoint's physics is {physics.name}: give --{spec.flag} FILE ({spec.meaning}), "
                         "or --simulate")
    else:
        obs = Observation(x, params or {})
    result = run(model, obs, T, tol)
    psnr = psnr_obs = None
    if clean is not None:
        metric = PSNR(max_pixel=1.0)
        psnr, psnr_obs = float(metric(result.x, clean)), float(metric(obs.y, clean))
    return RestoreResult(result.x[0], obs.y[0], result.restarts, result.residual, psnr, psnr_obs)
