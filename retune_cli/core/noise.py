"""Per-channel Gaussian noise as a deepinv noise model (usable in deepinv's own physics).

Its own module because deepinv is slow to import: a physics builds its noise model on first use
(:attr:`.physics.Physics.noise`), so reading a config or a checkpoint does not import deepinv.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from deepinv.physics import NoiseModel

from .physics import noise_levels


class ChannelGaussianNoise(NoiseModel):
    """White Gaussian noise with one standard deviation per channel: ``ε_c ~ N(0, σ_c² I)``.

    (deepinv's ``GaussianNoise`` reads a 1-D σ as one value per *sample*, not per channel.)
    """

    def __init__(self, sigma: Sequence[float]):
        super().__init__()
        self.register_buffer("sigma", noise_levels(sigma))

    def forward(self, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        channels = x.shape[1]
        if self.sigma.numel() not in (1, channels):
            raise ValueError(f"{self.sigma.numel()} noise levels for {channels} channels")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x)
        sigma = self.sigma.to(x).view(1, -1, 1, 1)
        return x + sigma * noise
