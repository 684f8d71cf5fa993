"""Schemes that compose any physics with any prior offering what they need, and the scheme registry.

With ``f(x) = ½‖A x − y‖²`` (``L_f = ‖A‖²``, ``μ = σ_min(A)²``) and a prior ``g_θ`` (:mod:`.prior`):

* ``fb``: ``x⁺ = prox_{τg}(x − τ Aᵀ(A x − y))``, ``x_0 = Aᵀy``; τ from ``step_rule`` (τ* = 2/(μ + L_f) or
  1.95/L_f), ω(τ) = max(|1 − τμ|, |1 − τL_f|)-Lipschitz; needs ``prox``;
* ``drs``: ``z⁺ = z + prox_{τg}(2 prox_{τf}(z) − z) − prox_{τf}(z)``, output ``prox_{τf}(z)``, ``z_0 = Aᵀy``;
  τ = 1/√(μL_f) (1/L_f when μ = 0); ``(1 + ρ)/2``-Lipschitz when μ > 0 (ρ the Lipschitz constant of
  the reflected ``R_{τf}``); needs ``prox`` and the physics' exact ``prox_data``;
* ``hqs``: ``x⁺ = prox_{τg}(prox_{τf}(x))``, ``x_0 = Aᵀy`` (DPIR's scheme for plug-and-play); needs ``prox``
  and ``prox_data``;
* ``pd`` (Condat–Vũ): ``x⁺ = x − τ(Aᵀ(A x − y) + L_θᵀ z)``, ``z⁺ = prox_{σh*}(z + σ L_θ(2x⁺ − x))``, output x,
  ``(x_0, z_0) = (Aᵀy, 0)``; τ = 2/(μ + L_f) (1/L_f when μ = 0), ``σ = 0.99 (1/τ − L_f/2)/‖L_θ‖²`` (Condat's
  condition ``1/τ − σ‖L_θ‖² > L_f/2``); no contraction factor is known (δ_K ≈ 1): needs ``analysis``.

Every scheme here is registered for all priors offering what it ``requires`` (:func:`~.scheme.register_scheme`).

A prior with a learned step (plug-and-play) gives τ itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .physics import Observation, Params, Physics, as_observation
from .prior import Prior
from .pytree import register_pytree
from .scheme import PaddedScheme, register_scheme
from .schemes import STEP_RULES, contraction_factor


@dataclass
class ImageContext:
    """What every step of one solve on images shares: ``Aᵀy`` (padded), τ, the bounds, the sizes, the start."""

    y: torch.Tensor
    aty: torch.Tensor
    params: Params
    size: tuple[int, int]
    tau: torch.Tensor
    lipschitz: float
    strong_convexity: float
    sigma: torch.Tensor | None = None  # pd: the dual step
    x0: torch.Tensor | None = None  # the start (PaddedScheme.start); None: aty


class ComposedScheme(PaddedScheme):
    """A scheme over ``physics`` and ``prior`` (θ = the prior's parameters); subclasses define ``step``."""

    def __init__(self, physics: Physics, prior: Prior):
        super().__init__(physics, prior.multiple)
        self.theta = prior

    def default_step(self, lipschitz: float, strong_convexity: float) -> torch.Tensor | float:
        """τ when the prior does not learn it."""
        return 1 / lipschitz

    def _bounds(self, obs: Observation) -> tuple[float, float]:
        bounds = self.physics.norm_bounds(obs.y, obs.params)
        return float(bounds.norm) ** 2, float(bounds.sigma_min) ** 2

    def step_size(self, obs: Observation) -> torch.Tensor:
        obs = as_observation(obs)
        if self.theta.learns_step:
            return self.theta.step()
        return torch.as_tensor(self.default_step(*self._bounds(obs)), dtype=torch.float64)

    def prepare(self, obs: Observation) -> ImageContext:
        obs = as_observation(obs)
        lipschitz, mu = self._bounds(obs)
        tau = self.step_size(obs).to(obs.y)
        aty = self.adjoint(obs.y, obs.params)
        return ImageContext(obs.y, aty, obs.params, self.physics.image_size(obs.y, obs.params), tau, lipschitz, mu,
                            x0=self.start(obs.y, obs.params, aty))

    def init(self, ctx: ImageContext):
        return ctx.x0

    def output(self, x, ctx: ImageContext) -> torch.Tensor:
        h, w = ctx.size
        return x[..., :h, :w]

    def prox_f(self, x: torch.Tensor, ctx: ImageContext) -> torch.Tensor:
        return self.prox_data(x, ctx.y, ctx.tau, ctx.size, ctx.params)

    def contraction(self, ctx: ImageContext) -> torch.Tensor:
        """NaN: unknown (a network prior, or no factor below 1 known); compare-grads measures δ_K."""
        return torch.tensor(float("nan"))

    def _known(self) -> bool:
        """Whether ω may be stated: the prior's prox is a true (firmly nonexpansive) one."""
        return not self.theta.learns_step


@register_scheme("fb")
class ForwardBackward(ComposedScheme):
    """``x⁺ = prox_{τg}(x − τ Aᵀ(A x − y))``."""

    options = {"step_rule": "optimal"}

    def __init__(self, physics: Physics, prior: Prior, step_rule: str = "optimal"):
        super().__init__(physics, prior)
        if step_rule not in STEP_RULES:
            raise ValueError(f"step_rule must be one of {', '.join(STEP_RULES)}, not {step_rule!r}")
        self.step_rule = step_rule

    def default_step(self, lipschitz: float, strong_convexity: float):
        return STEP_RULES[self.step_rule](torch.tensor(lipschitz), torch.tensor(strong_convexity))

    def step(self, x: torch.Tensor, ctx: ImageContext) -> torch.Tensor:
        z = x - ctx.tau * (self.normal(x, ctx.size, ctx.params) - ctx.aty)
        return self.theta.prox(z, ctx.tau)

    def contraction(self, ctx: ImageContext) -> torch.Tensor:
        if not self._known():
            return super().contraction(ctx)
        return contraction_factor(ctx.tau, ctx.lipschitz, ctx.strong_convexity).detach()


@register_scheme("drs")
class DouglasRachford(ComposedScheme):
    """``z⁺ = z + prox_{τg}(2 prox_{τf}(z) − z) − prox_{τf}(z)``, output ``prox_{τf}(z)``."""

    needs_data_prox = True

    def default_step(self, lipschitz: float, strong_convexity: float) -> float:
        return 1 / math.sqrt(strong_convexity * lipschitz) if strong_convexity > 0 else 1 / lipschitz

    def step(self, z: torch.Tensor, ctx: ImageContext) -> torch.Tensor:
        x = self.prox_f(z, ctx)
        return z + self.theta.prox(2 * x - z, ctx.tau) - x

    def output(self, z: torch.Tensor, ctx: ImageContext) -> torch.Tensor:
        return super().output(self.prox_f(z, ctx), ctx)

    def contraction(self, ctx: ImageContext) -> torch.Tensor:
        """``(1 + ρ)/2``, ``ρ = max(|1 − τμ|/(1 + τμ), |τL − 1|/(τL + 1))``, when μ > 0; NaN otherwise."""
        if not (ctx.strong_convexity > 0 and self._known()):
            return super().contraction(ctx)
        t, mu, lip = float(ctx.tau), ctx.strong_convexity, ctx.lipschitz
        rho = max(abs(1 - t * mu) / (1 + t * mu), abs(t * lip - 1) / (t * lip + 1))
        return torch.tensor((1 + rho) / 2)


@register_scheme("hqs")
class HalfQuadraticSplitting(ComposedScheme):
    """``x⁺ = prox_{τg}(prox_{τf}(x))``."""

    needs_data_prox = True

    def step(self, x: torch.Tensor, ctx: ImageContext) -> torch.Tensor:
        return self.theta.prox(self.prox_f(x, ctx), ctx.tau)

    def contraction(self, ctx: ImageContext) -> torch.Tensor:
        """``1/(1 + τμ)`` (``prox_{τf}``'s factor; ``prox_{τg}`` is nonexpansive), NaN when μ = 0."""
        if not (ctx.strong_convexity > 0 and self._known()):
            return super().contraction(ctx)
        return torch.tensor(1 / (1 + float(ctx.tau) * ctx.strong_convexity))


class PrimalDual(NamedTuple):
    """The iterate of a primal–dual scheme: the image x and the dual variables z (one per analysis band)."""

    x: torch.Tensor
    z: tuple[torch.Tensor, ...]


register_pytree(PrimalDual, lambda u: [u.x, *u.z], lambda ts: PrimalDual(ts[0], tuple(ts[1:])))


@register_scheme("pd")
class CondatVu(ComposedScheme):
    """Condat–Vũ primal–dual for ``½‖A x − y‖² + h(L_θ x)`` (see the module docstring)."""

    requires = ("analysis",)

    def default_step(self, lipschitz: float, strong_convexity: float) -> float:
        return 2 / (strong_convexity + lipschitz) if strong_convexity > 0 else 1 / lipschitz

    def prepare(self, obs: Observation) -> ImageContext:
        ctx = super().prepare(obs)
        ctx.sigma = 0.99 * (1 / ctx.tau - ctx.lipschitz / 2) / self.theta.analysis_norm().to(ctx.y) ** 2
        return ctx

    def init(self, ctx: ImageContext) -> PrimalDual:
        return PrimalDual(ctx.x0, tuple(torch.zeros_like(b) for b in self.theta.analysis(ctx.x0)))

    def step(self, u: PrimalDual, ctx: ImageContext) -> PrimalDual:
        prior = self.theta
        x = u.x - ctx.tau * (self.normal(u.x, ctx.size, ctx.params) - ctx.aty + prior.analysis_adjoint(list(u.z)))
        ascent = [z + ctx.sigma * b for z, b in zip(u.z, prior.analysis(2 * x - u.x))]
        return PrimalDual(x, tuple(prior.conjugate_prox(ascent, ctx.sigma)))

    def output(self, u: PrimalDual, ctx: ImageContext) -> torch.Tensor:
        return super().output(u.x, ctx)
