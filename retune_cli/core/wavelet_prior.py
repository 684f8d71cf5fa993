"""The weighted ℓ2,1 wavelet prior ``g_θ(x) = ‖θ D x‖_{1,2}`` as a :class:`~.prior.Prior` (paper §4.1).

D is the orthonormal periodized DWT (:mod:`.wavelets`), θ the weights of :class:`~.priors.WaveletWeights`
(θ_B per scale × band, θ_BC per scale × band × channel), the approximation band unpenalized. Its prox is
exact since D is orthonormal: ``prox_{τg}(x) = Dᵀ prox_{τ‖θ ⊙ ·‖_{1,2}}(D x)`` (:func:`~.priors.weighted_group_prox`
on the details). With forward-backward it is solved on the weighted coefficients ``u = θDx`` instead
(:class:`~.schemes.WaveletFB`, the paper's eq. 51), registered for this prior.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .prior import Prior, register_prior
from .priors import WaveletWeights, weighted_group_prox, weighted_l21
from .wavelets import Coefficients, WaveletTransform


@register_prior
class WaveletPrior(WaveletWeights, Prior):
    """``‖θ D x‖_{1,2}``; ``channel_scale`` (set by :meth:`scale_noise`) multiplies θ per channel."""

    name = "wavelet"
    options = {"wavelet": "db4", "levels": 4, "weights": "bands", "init_lambda": 0.05}

    def __init__(self, wavelet: str = "db4", levels: int = 4, weights: str = "bands", init_lambda: float = 0.05,
                 channels: int = 3):
        super().__init__(levels, weights, channels=channels, init_lambda=init_lambda)
        self.transform = WaveletTransform(wavelet, levels)
        self.multiple = self.transform.multiple
        self.channel_scale: torch.Tensor | None = None

    @classmethod
    def build(cls, options: dict[str, object], channels: int) -> WaveletPrior:
        return cls(**options, channels=channels)

    def diagonal(self) -> list[torch.Tensor]:
        theta = super().diagonal()
        return theta if self.channel_scale is None else [t * self.channel_scale.to(t) for t in theta]

    def prox(self, x: torch.Tensor, tau) -> torch.Tensor:
        """``Dᵀ prox_{τ‖θ ⊙ ·‖_{1,2}}(D x)``, the approximation band untouched."""
        w = self.transform.analysis(x)
        details = tuple(weighted_group_prox(d, t, tau, self.group_dims) for d, t in zip(w.details, self.diagonal()))
        return self.transform.synthesis(Coefficients(w.approx, details))

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return weighted_l21(list(self.transform.analysis(x).details), self.diagonal(), self.group_dims)

    def init_from_noise(self, noise: Sequence[float], pixels: int) -> None:
        """Universal thresholds (:meth:`~.priors.WaveletWeights.universal`)."""
        start = WaveletWeights.universal(self.log_lambda.numel(), self.weights, noise, pixels)
        with torch.no_grad():
            self.log_lambda.copy_(start.log_lambda)
            self.log_Lambda.copy_(start.log_Lambda)

    def scale_noise(self, trained: Sequence[float], given: Sequence[float]) -> tuple[tuple[float, ...], str]:
        """``θ'_{j,b,c} = (s'_c / s_c) θ_{j,b,c}``: thresholds scale linearly with the noise."""
        factors = tuple(g / t for g, t in zip(given, trained))
        self.channel_scale = torch.tensor(factors, device=self.log_lambda.device).reshape(1, -1, 1, 1, 1)
        return factors, "θ"
