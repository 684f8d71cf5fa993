"""The paper's wavelet forward-backward (§4.1), specialized to the wavelet prior, and the step rules.

Wavelet forward-backward on the coefficients ``u = θ D x`` (paper eq. 51):
``u⁺ = prox_{τ‖·‖_{1,2}}(u − τ θ⁻¹ D Aᵀ(A Dᵀ θ⁻¹ u − y))``, ``x = Dᵀ θ⁻¹ u``, ``u_0 = θ D Aᵀ y``.

The approximation band is not penalized, so its scale in ``u`` is free: it is set to ``max θ`` so
that the approximation band's curvature lies within ``[μ, L]`` and never limits the step. That scale
is a constant of the parametrization, not a function of θ for autograd (``max θ`` detached): x̂ does
not depend on it, and a θ-dependent scale would add to the Jacobian-free gradients (JFB, ReTune) a
spurious term ``−u_a/c²`` through the output ``x = Dᵀθ⁻¹u`` that only the exact DEQ gradient cancels
— on the band that carries most of the image's energy.

It is the ``fb`` scheme of ``model.prior: wavelet`` (registered for the pair); every other prior's ``fb``
is the generic image-domain one (:mod:`.composed`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import launch
from .flat_coefficients import FlatCoefficients, Layout
from .physics import Observation, Params, Physics, as_observation
from .prior import Prior
from .priors import WaveletWeights, group_soft_threshold
from .scheme import PaddedScheme, register_scheme
from .wavelets import WaveletTransform


class NoValidStep(ValueError):
    """θ so extreme (a weight 0 or infinite) that the step rule has no valid step."""


def optimal_step(lipschitz: torch.Tensor, strong_convexity: torch.Tensor,
                 injective: bool | None = None) -> torch.Tensor:
    """``τ* = 2/(μ + L)``: the smallest ω, needs μ > 0. ``injective``: whether μ > 0 is known on the host
    (σ_min(A) > 0 with a finite θ), so that μ is not read back from the device; None reads it."""
    if not (strong_convexity > 0 if injective is None else injective):
        raise NoValidStep("the optimal step needs μ > 0 (A injective); use step_rule=safe")
    return 2 / (strong_convexity + lipschitz)


def safe_step(lipschitz: torch.Tensor, strong_convexity: torch.Tensor, injective: bool | None = None) -> torch.Tensor:
    """``τ = 1.95/L``: convergent for any μ ≥ 0."""
    return 1.95 / lipschitz


STEP_RULES: dict[str, Callable[..., torch.Tensor]] = {  # (L, μ, injective: bool | None) → τ
    "optimal": optimal_step,
    "safe": safe_step,
}


def contraction_factor(tau: torch.Tensor, lipschitz: torch.Tensor, strong_convexity: torch.Tensor) -> torch.Tensor:
    """``ω(τ) = max(|1 − τμ|, |1 − τL|)``: the Lipschitz constant of one forward-backward step."""
    return torch.maximum((1 - tau * strong_convexity).abs(), (1 - tau * lipschitz).abs())


class StepParameters(NamedTuple):
    """θ-dependent step quantities: θ per detail level, max θ, τ, ``L = ‖A‖²/min θ²``, ``μ = σ_min²/max θ²``."""

    theta: list[torch.Tensor]
    top: torch.Tensor
    tau: torch.Tensor
    lipschitz: torch.Tensor
    strong_convexity: torch.Tensor


@dataclass
class WaveletContext:
    """θ-dependent quantities shared by every step of one solve, on the flat layout of the iterate
    (:mod:`.flat_coefficients`): each pair is ``(approximation band, details)``."""

    layout: Layout
    b: FlatCoefficients  # D Aᵀ y
    start: FlatCoefficients  # D x₀ (x₀ = PaddedScheme.start: Aᵀ y unless the physics estimates better)
    scale: tuple[torch.Tensor, torch.Tensor]  # θ: max θ on the approximation band (detached), θ on the details
    inverse: tuple[torch.Tensor, torch.Tensor]  # θ⁻¹
    steps: tuple[torch.Tensor, torch.Tensor]  # τ θ⁻¹
    tau: torch.Tensor
    lipschitz: torch.Tensor
    strong_convexity: torch.Tensor
    size: tuple[int, int]  # (H, W) of the image before padding
    params: Params  # the operator's parameters
    affine: tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]] | None = None  # A = I: the step is a ⊙ u + c


@register_scheme("fb", prior="wavelet")
class WaveletFB(PaddedScheme):
    """Forward-backward on weighted wavelet coefficients, for ``½‖Ax − y‖² + ‖θ D x‖_{1,2}``."""

    options = {"step_rule": "optimal"}

    @classmethod
    def compose(cls, physics: Physics, prior: Prior, step_rule: str = "optimal", **_) -> WaveletFB:
        """Over a :class:`~.wavelet_prior.WaveletPrior`: its transform and weights."""
        return cls(physics, prior.transform, prior, step_rule)

    def __init__(self, physics: Physics, transform: WaveletTransform, weights: WaveletWeights,
                 step_rule: str = "optimal"):
        super().__init__(physics, transform.multiple)
        if step_rule not in STEP_RULES:
            raise ValueError(f"step_rule must be one of {', '.join(STEP_RULES)}, not {step_rule!r}")
        self.transform = transform
        self.theta = weights
        self.step_rule = step_rule

    def step_parameters(self, obs: Observation) -> StepParameters:
        """θ per level and the step τ(θ) of the rule, from the physics' norm bounds."""
        theta = self.theta.diagonal()
        flat = torch.cat([t.flatten() for t in theta])
        lo, hi = flat.min(), flat.max()
        bounds = self.physics.norm_bounds(obs.y, obs.params)
        lipschitz = bounds.norm**2 / lo**2
        strong_convexity = bounds.sigma_min**2 / hi**2
        # μ > 0 read on the CPU (free: an infinite θ, μ = 0, is caught); from σ_min on a launch-bound device
        injective = bool(bounds.sigma_min > 0) if launch.launch_bound(hi) else None
        tau = STEP_RULES[self.step_rule](lipschitz, strong_convexity, injective)
        return StepParameters(theta, hi, tau, lipschitz, strong_convexity)

    def step_size(self, obs: Observation) -> torch.Tensor:
        return self.step_parameters(as_observation(obs)).tau

    def prepare(self, obs: Observation) -> WaveletContext:
        obs = as_observation(obs)
        aty = self.adjoint(obs.y, obs.params)
        x0 = self.start(obs.y, obs.params, aty)
        coeffs = self.transform.analysis(aty)
        layout = Layout.of(coeffs)
        b = layout.pack(coeffs)
        start = b if x0 is aty else layout.pack(self.transform.analysis(x0))
        s = self.step_parameters(obs)
        scale = (s.top.detach(), layout.spread(s.theta))  # max θ: a constant of the parametrization (module doc)
        inverse = tuple(1 / c for c in scale)
        steps = tuple(s.tau * i for i in inverse)
        affine = None
        if self.physics.identity:  # u − τθ⁻¹(θ⁻¹u − b) = (1 − τθ⁻²) ⊙ u + τθ⁻¹ ⊙ b, precomputed once
            affine = (tuple(1 - t * i for t, i in zip(steps, inverse)), (steps[0] * b.approx, steps[1] * b.details))
        size = self.physics.image_size(obs.y, obs.params)
        return WaveletContext(layout, b, start, scale, inverse, steps, s.tau, s.lipschitz, s.strong_convexity, size,
                              obs.params, affine)

    def init(self, ctx: WaveletContext) -> FlatCoefficients:
        """``u₀ = θ D x₀`` (``x₀ = Aᵀ y`` unless the physics estimates better)."""
        return FlatCoefficients(ctx.scale[0] * ctx.start.approx, ctx.scale[1] * ctx.start.details)

    @staticmethod
    def _image(u: FlatCoefficients, ctx: WaveletContext, transform: WaveletTransform) -> torch.Tensor:
        """``Dᵀ θ⁻¹ u``: back from weighted coefficients to wavelet coefficients ``w = D x``, then to the image."""
        w = FlatCoefficients(u.approx * ctx.inverse[0], u.details * ctx.inverse[1])
        return transform.synthesis(ctx.layout.levels(w))

    def _gradient_step(self, u: FlatCoefficients, ctx: WaveletContext) -> FlatCoefficients:
        """``u − τ θ⁻¹ (D Aᵀ A Dᵀ θ⁻¹ u − D Aᵀ y)``, one ``addcmul`` for the approximation and one for all the
        details; with autograd off, ``− D Aᵀ y`` is subtracted in place from the fresh analysis, whose flat
        details have a storage of their own (the concatenation's)."""
        if ctx.affine is not None:
            return FlatCoefficients(*(torch.addcmul(c, a, v) for a, c, v in zip(*ctx.affine, (u.approx, u.details))))
        x = self.normal(self._image(u, ctx, self.transform), ctx.size, ctx.params)
        r = ctx.layout.pack(self.transform.analysis(x))
        pairs = zip((u.approx, u.details), ctx.steps, (r.approx, r.details), (ctx.b.approx, ctx.b.details))
        if torch.is_grad_enabled():
            return FlatCoefficients(*(torch.addcmul(v, rv - bv, step, value=-1) for v, step, rv, bv in pairs))
        return FlatCoefficients(*(torch.addcmul(v, rv.sub_(bv), step, value=-1) for v, step, rv, bv in pairs))

    def step(self, u: FlatCoefficients, ctx: WaveletContext) -> FlatCoefficients:
        """``prox_{τ‖·‖_{1,2}}(u − τ θ⁻¹ (D Aᵀ A Dᵀ θ⁻¹ u − D Aᵀ y))``; identity prox on the approximation.
        With autograd off the prox overwrites the gradient step's fresh details."""
        z = self._gradient_step(u, ctx)
        details = group_soft_threshold(z.details, ctx.tau, self.theta.group_dims, not torch.is_grad_enabled())
        return FlatCoefficients(z.approx, details)

    def output(self, u: FlatCoefficients, ctx: WaveletContext) -> torch.Tensor:
        """``x = Dᵀ θ⁻¹ u``, cropped back to the image's size."""
        h, w = ctx.size
        return self._image(u, ctx, self.transform)[..., :h, :w]

    def contraction(self, ctx: WaveletContext) -> torch.Tensor:
        """``ω(τ)``, so that ``Φ_K`` is ``ω^K``-Lipschitz."""
        return contraction_factor(ctx.tau, ctx.lipschitz, ctx.strong_convexity)
