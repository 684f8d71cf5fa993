"""Config → engine objects: the physics and the scheme whose parameters are θ."""

from __future__ import annotations

import torch

from .config import Config
from .core.physics import build_physics
from .core.priors import WaveletWeights
from .core.schemes import PnPFB, PnPParameters, WaveletFB
from .core.wavelets import WaveletTransform
from .errors import InputError

CHANNELS = 3  # images are read as RGB


def build_scheme(config: Config, device: torch.device | str = "cpu") -> WaveletFB | PnPFB:
    """The inner solver described by ``config``, with θ at its initial value, on ``device``.

    For PnP, what is not learned is frozen: the denoiser when learning (σ, τ), (σ, τ) when learning
    the denoiser.
    """
    m = config.model
    p = config.physics
    physics = build_physics(p.name, p.sigma, keep=p.keep, blur_width=p.blur_width)
    if m.name == "pnp":
        from .denoisers import load_denoiser

        scheme = PnPFB(physics, load_denoiser(m.denoiser), PnPParameters(m.init_sigma, m.init_tau))
        (scheme.denoiser if m.learn == "parameters" else scheme.theta).requires_grad_(False)
        return scheme.to(device)
    weights = WaveletWeights(m.levels, m.weights, channels=CHANNELS, init_lambda=m.init_lambda)
    scheme = WaveletFB(physics, WaveletTransform(m.wavelet, m.levels), weights, m.step_rule)
    return scheme.to(device)


def trainable(scheme: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters training updates, named as in a checkpoint (``theta.…``, ``denoiser.…``)."""
    return {name: p for name, p in scheme.named_parameters() if p.requires_grad}


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda, not {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return torch.device(name)
