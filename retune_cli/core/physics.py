"""Forward models ``y = A x̄ + ε``, built on :mod:`deepinv.physics`.

Noise is drawn from a CPU generator seeded explicitly, then moved to the data's device, so a
given seed gives the same observation on every device and in every run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from deepinv.physics import Denoising, LinearPhysics, NoiseModel

PHYSICS = ("denoise",)


class ChannelGaussianNoise(NoiseModel):
    """White Gaussian noise with one standard deviation per channel: ``ε_c ~ N(0, σ_c² I)``.

    (deepinv's ``GaussianNoise`` reads a 1-D σ as one value per *sample*, not per channel.)
    """

    def __init__(self, sigma: Sequence[float]):
        super().__init__()
        sigma = torch.as_tensor(sigma, dtype=torch.float32).flatten()
        if sigma.numel() == 0 or not torch.all(torch.isfinite(sigma)) or torch.any(sigma < 0):
            raise ValueError("noise sigma must be finite and non-negative")
        self.register_buffer("sigma", sigma)

    def forward(self, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        channels = x.shape[1]
        if self.sigma.numel() not in (1, channels):
            raise ValueError(f"{self.sigma.numel()} noise levels for {channels} channels")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x)
        sigma = self.sigma.to(x).view(1, -1, 1, 1)
        return x + sigma * noise


def build_physics(name: str, sigma: Sequence[float]) -> LinearPhysics:
    """The degradation named ``name`` (one of :data:`PHYSICS`) with per-channel noise ``sigma``."""
    if name == "denoise":
        return Denoising(noise_model=ChannelGaussianNoise(sigma))
    raise ValueError(f"unknown physics {name!r}; choose one of {', '.join(PHYSICS)}")


def is_identity(physics: LinearPhysics) -> bool:
    """Whether ``A = I`` (so ``D Aᵀ A Dᵀ = I`` and the wavelet step needs no transform)."""
    return isinstance(physics, Denoising)


def simulate(physics: LinearPhysics, x: torch.Tensor, seed: int) -> torch.Tensor:
    """``y = A x + ε`` with noise drawn from ``seed``."""
    return physics.noise_model(physics.A(x), seed=seed)


def operator_norm_bounds(physics: LinearPhysics) -> tuple[float, float]:
    """``(‖A‖, σ_min(A))``: the extreme singular values that set the step size."""
    if is_identity(physics):
        return 1.0, 1.0
    raise NotImplementedError(f"no operator bounds for {type(physics).__name__}")
