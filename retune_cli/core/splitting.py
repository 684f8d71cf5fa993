"""Schemes that split the data term through its exact proximal operator (paper §2: beyond FB).

* Douglas–Rachford for ``½‖A x − y‖² + ‖θ D x‖_{1,2}`` on the padded image domain:
  ``z⁺ = z + prox_{τg}(2 prox_{τf}(z) − z) − prox_{τf}(z)``, output ``x = prox_{τf}(z)``, ``z_0 = Aᵀy``;
  ``prox_{τf}`` is the physics' exact one, ``prox_{τg} = Dᵀ ∘ prox_{τ‖θ ⊙ ·‖_{1,2}} ∘ D`` (D orthonormal;
  the approximation band unpenalized). The iteration is ``½(I + R_{τg} R_{τf})``; with μ = σ_min(A)²,
  L = ‖A‖², ``R_{τf}`` is ``ρ = max(|1 − τμ|/(1 + τμ), |τL − 1|/(τL + 1))``-Lipschitz, so the step is
  ``ω = (1 + ρ)/2``-Lipschitz when μ > 0 (τ = 1/√(μL) minimizes it); when μ = 0 no factor below 1
  is known (NaN: compare-grads measures δ_K) and τ = 1/L.
* Plug-and-play half-quadratic splitting (DPIR's scheme): ``x⁺ = D_σ(prox_{τf}(x))``, ``x_0 = Aᵀy``,
  learning θ = (σ, τ) like PnP-FB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .physics import Observation, Params, Physics, as_observation
from .priors import WaveletWeights, weighted_group_prox
from .scheme import PaddedScheme
from .schemes import PnPContext, PnPFB
from .wavelets import Coefficients, WaveletTransform


@dataclass
class DRSContext:
    y: torch.Tensor
    params: Params
    size: tuple[int, int]  # (H, W) of the image before padding
    tau: float
    theta: list[torch.Tensor]  # θ per detail level
    mu: float
    lipschitz: float


class WaveletDRS(PaddedScheme):
    """Douglas–Rachford splitting for the weighted ℓ2,1 wavelet prior (see the module docstring)."""

    def __init__(self, physics: Physics, transform: WaveletTransform, weights: WaveletWeights):
        super().__init__(physics, transform.multiple)
        self.transform = transform
        self.theta = weights

    def _bounds(self, obs: Observation) -> tuple[float, float, float]:
        """``(τ, μ, L)``: τ = 1/√(μL) when μ > 0, else 1/L."""
        bounds = self.physics.norm_bounds(obs.y, obs.params)
        mu, lipschitz = bounds.sigma_min**2, bounds.norm**2
        return (1 / math.sqrt(mu * lipschitz) if mu > 0 else 1 / lipschitz), mu, lipschitz

    def step_size(self, obs: Observation) -> torch.Tensor:
        return torch.tensor(self._bounds(as_observation(obs))[0])

    def prepare(self, obs: Observation) -> DRSContext:
        obs = as_observation(obs)
        tau, mu, lipschitz = self._bounds(obs)
        return DRSContext(obs.y, obs.params, self.physics.image_size(obs.y), tau, self.theta.diagonal(), mu,
                          lipschitz)

    def init(self, ctx: DRSContext) -> torch.Tensor:
        return self.adjoint(ctx.y, ctx.params)

    def _prox_f(self, z: torch.Tensor, ctx: DRSContext) -> torch.Tensor:
        return self.prox_data(z, ctx.y, ctx.tau, ctx.size, ctx.params)

    def _prox_g(self, x: torch.Tensor, ctx: DRSContext) -> torch.Tensor:
        """``Dᵀ prox_{τ‖θ ⊙ ·‖_{1,2}}(D x)``, the approximation band untouched."""
        w = self.transform.analysis(x)
        dims = self.theta.group_dims
        details = tuple(weighted_group_prox(d, t, ctx.tau, dims) for d, t in zip(w.details, ctx.theta))
        return self.transform.synthesis(Coefficients(w.approx, details))

    def step(self, z: torch.Tensor, ctx: DRSContext) -> torch.Tensor:
        x = self._prox_f(z, ctx)
        return z + self._prox_g(2 * x - z, ctx) - x

    def output(self, z: torch.Tensor, ctx: DRSContext) -> torch.Tensor:
        h, w = ctx.size
        return self._prox_f(z, ctx)[..., :h, :w]

    def contraction(self, ctx: DRSContext) -> torch.Tensor:
        """``(1 + ρ)/2`` when μ > 0, NaN otherwise."""
        if not ctx.mu > 0:
            return torch.tensor(float("nan"))
        t = ctx.tau
        rho = max(abs(1 - t * ctx.mu) / (1 + t * ctx.mu), abs(t * ctx.lipschitz - 1) / (t * ctx.lipschitz + 1))
        return torch.tensor((1 + rho) / 2)


class PnPHQS(PnPFB):
    """Plug-and-play half-quadratic splitting ``x⁺ = D_σ(prox_{τf}(x))`` (θ = (σ, τ) or the denoiser)."""

    def step(self, x: torch.Tensor, ctx: PnPContext) -> torch.Tensor:
        z = self.prox_data(x, ctx.y, ctx.tau, ctx.size, ctx.params)
        return self.denoiser(z, ctx.sigma.expand(x.shape[0]))
