"""A plugin for retune: a learned quadratic smoothness prior with an exact proximal operator.

    g_θ(x) = Σ_c θ_c/2 ‖∇x_c‖²     (∇: forward differences with circular boundaries, θ_c > 0 per channel)

∇ᵀ∇ is diagonal in Fourier, with eigenvalues ``λ_kl = 4 sin²(πk/H) + 4 sin²(πl/W)``, so the prox is a filter:
``prox_{τg}(x)_c = F⁻¹(F x_c / (1 + τ θ_c λ))``. The prior offers both capabilities: ``prox`` (schemes fb, drs,
hqs) and ``analysis`` for the primal–dual scheme pd (``g = h(L x)`` with ``L = √θ_c ∇``, ``h = ½‖·‖²``, whose
conjugate's prox is ``z/(1 + σ)``). A config names it (examples/denoise-smooth.yaml):

    plugins: [smooth_prior.py]      # relative to the YAML file's folder
    model:
      prior: smooth
      smoothness: 1.0               # this prior's option: every θ_c at the start with model.init: paper

    retune train --preset examples/denoise-smooth.yaml --trust-code --out runs/smooth
    retune show runs/smooth/theta.safetensors --trust-code
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from retune_cli.extend import Prior, register_prior

DIFFERENCE_VARIANCE = 0.01  # variance of neighbouring-pixel differences of natural images (values in [0, 1])


def gradient(x: torch.Tensor) -> torch.Tensor:
    """``∇x``: ``(N, C, H, W)`` → ``(N, C, 2, H, W)``, circular forward differences (vertical, horizontal)."""
    return torch.stack((x.roll(-1, -2) - x, x.roll(-1, -1) - x), dim=-3)


def gradient_adjoint(p: torch.Tensor) -> torch.Tensor:
    """``∇ᵀp = −div p``."""
    return p[..., 0, :, :].roll(1, -2) - p[..., 0, :, :] + p[..., 1, :, :].roll(1, -1) - p[..., 1, :, :]


def laplacian_symbol(like: torch.Tensor) -> torch.Tensor:
    """The eigenvalues of ``∇ᵀ∇`` on the ``rfft2`` grid of images shaped like ``like``."""
    h, w = like.shape[-2:]
    k = torch.arange(h, dtype=like.dtype, device=like.device)
    l = torch.arange(w // 2 + 1, dtype=like.dtype, device=like.device)
    return 4 * torch.sin(math.pi * k / h)[:, None] ** 2 + 4 * torch.sin(math.pi * l / w)[None, :] ** 2


@register_prior
class SmoothPrior(Prior):
    """``Σ_c θ_c/2 ‖∇x_c‖²``, θ stored as ``log_theta`` (one per channel)."""

    name = "smooth"  # model.prior: smooth
    options = {"smoothness": 1.0}  # model.smoothness, a float

    def __init__(self, smoothness: float = 1.0, channels: int = 3):
        super().__init__()
        if not smoothness > 0:
            raise ValueError(f"model.smoothness must be positive, not {smoothness}")
        self.log_theta = nn.Parameter(torch.full((channels,), math.log(smoothness)))

    @classmethod
    def build(cls, options: dict[str, object], channels: int) -> SmoothPrior:
        return cls(**options, channels=channels)

    def theta(self, like: torch.Tensor) -> torch.Tensor:
        """θ_c shaped ``(1, C, 1, 1)``, in ``like``'s dtype."""
        return torch.exp(self.log_theta).to(like).view(1, -1, 1, 1)

    def prox(self, x: torch.Tensor, tau) -> torch.Tensor:
        damping = 1 + tau * self.theta(x) * laplacian_symbol(x)
        return torch.fft.irfft2(torch.fft.rfft2(x) / damping, s=x.shape[-2:])

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.sum(self.theta(x).unsqueeze(2) * gradient(x) ** 2)

    def analysis(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.theta(x).sqrt().unsqueeze(2) * gradient(x)]

    def analysis_adjoint(self, z: list[torch.Tensor]) -> torch.Tensor:
        return gradient_adjoint(self.theta(z[0]).sqrt().unsqueeze(2) * z[0])

    def analysis_norm(self) -> torch.Tensor:
        """``‖√θ ∇‖ ≤ √(8 max θ)``: the eigenvalues of ``∇ᵀ∇`` are at most 8."""
        return torch.sqrt(8 * torch.exp(self.log_theta).max())

    def conjugate_prox(self, z: list[torch.Tensor], sigma) -> list[torch.Tensor]:
        return [b / (1 + sigma) for b in z]

    def init_from_noise(self, noise: Sequence[float], pixels: int) -> None:
        """``θ_c = s_c² / v``: the Gaussian-prior (Wiener) weight for noise s_c and differences of variance v."""
        with torch.no_grad():
            self.log_theta.copy_(torch.log(torch.tensor([s**2 / DIFFERENCE_VARIANCE for s in noise])))

    def scale_noise(self, trained: Sequence[float], given: Sequence[float]) -> tuple[tuple[float, ...], str]:
        """θ grows with the noise variance: ``θ_c × (given_c / trained_c)²``."""
        factors = tuple((g / t) ** 2 for g, t in zip(given, trained))
        with torch.no_grad():
            self.log_theta += torch.log(torch.tensor(factors, device=self.log_theta.device))
        return factors, "θ"

    def describe(self) -> dict[str, torch.Tensor]:
        return {"θ_c (smoothness per channel)": torch.exp(self.log_theta).detach().double().cpu()}
