"""Config → engine objects: the physics and the scheme whose parameters are θ."""

from __future__ import annotations

import torch

from .config import Config
from .core.physics import build_physics
from .core.priors import WaveletWeights
from .core.schemes import WaveletFB
from .core.wavelets import WaveletTransform
from .errors import InputError

CHANNELS = 3  # images are read as RGB


def build_scheme(config: Config, device: torch.device | str = "cpu") -> WaveletFB:
    """The inner solver described by ``config``, with θ at its initial value, on ``device``."""
    m = config.model
    p = config.physics
    physics = build_physics(p.name, p.sigma, keep=p.keep, blur_width=p.blur_width)
    weights = WaveletWeights(m.levels, m.weights, channels=CHANNELS, init_lambda=m.init_lambda)
    scheme = WaveletFB(physics, WaveletTransform(m.wavelet, m.levels), weights, m.step_rule)
    return scheme.to(device)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda, not {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return torch.device(name)
