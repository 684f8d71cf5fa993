"""Elementary steps φ(·, θ) of the inner solvers (paper §4.1–4.2, DESIGN.md §2.1–2.2).

A scheme is an ``nn.Module`` whose parameters are θ, with four methods used by
:mod:`retune_cli.core.hypergrad`:

* ``prepare(y)``: everything that depends on θ and y but not on the iterate (step size, …);
* ``init(ctx)``: the starting point ``u_0``;
* ``step(u, ctx)``: one elementary step ``u ↦ φ(u, θ)``;
* ``output(u, ctx)``: the image an iterate stands for.

Wavelet forward-backward on the coefficients ``u = θ D x`` (paper eq. 51):
``u⁺ = prox_{τ‖·‖_{1,2}}(u − τ θ⁻¹ D Aᵀ(A Dᵀ θ⁻¹ u − y))``, ``x = Dᵀ θ⁻¹ u``, ``u_0 = θ D Aᵀ y``.

The approximation band is not penalized, so its scale in ``u`` is free: it is set to ``max θ`` so
that the approximation band's curvature lies within ``[μ, L]`` and never limits the step. That scale
is a constant of the parametrization, not a function of θ for autograd (``max θ`` detached): x̂ does
not depend on it, and a θ-dependent scale would add to the Jacobian-free gradients (JFB, ReTune) a
spurious term ``−u_a/c²`` through the output ``x = Dᵀθ⁻¹u`` that only the exact DEQ gradient cancels
— on the band that carries most of the image's energy.

Plug-and-play forward-backward (paper eq. 53): ``x⁺ = D_σ(x − τ Aᵀ(A x − y))``, ``x_0 = Aᵀ y``.

Both work on a domain padded to a multiple of the transform's or network's scale: for denoising
``y`` is reflect-padded; otherwise the padded pixels are unobserved (``A`` acts on the crop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .physics import is_identity, operator_norm_bounds
from .priors import WaveletWeights, group_soft_threshold
from .wavelets import Coefficients, WaveletTransform

STEP_RULES = ("optimal", "safe")


def tau_from_rule(lipschitz: torch.Tensor, strong_convexity: torch.Tensor, rule: str) -> torch.Tensor:
    """``τ* = 2/(μ + L)`` (``"optimal"``, needs μ > 0) or ``τ = 1.95/L`` (``"safe"``)."""
    if rule == "optimal":
        if not strong_convexity > 0:
            raise ValueError("the optimal step needs μ > 0 (A injective); use step_rule=safe")
        return 2 / (strong_convexity + lipschitz)
    if rule == "safe":
        return 1.95 / lipschitz
    raise ValueError(f"step_rule must be one of {STEP_RULES}, not {rule!r}")


def contraction_factor(tau: torch.Tensor, lipschitz: torch.Tensor, strong_convexity: torch.Tensor) -> torch.Tensor:
    """``ω(τ) = max(|1 − τμ|, |1 − τL|)``: the Lipschitz constant of one forward-backward step."""
    return torch.maximum((1 - tau * strong_convexity).abs(), (1 - tau * lipschitz).abs())


def pad_to_multiple(y: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad (replicate when too small) the bottom/right of ``y`` to multiples of ``multiple``."""
    h, w = y.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return y
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(y, (0, pw, 0, ph), mode=mode)


@dataclass
class WaveletContext:
    """θ-dependent quantities shared by every step of one solve."""

    b: Coefficients  # D Aᵀ y
    theta: list[torch.Tensor]  # θ per detail level
    approx_scale: torch.Tensor  # θ on the approximation band
    tau: torch.Tensor
    lipschitz: torch.Tensor
    strong_convexity: torch.Tensor
    size: tuple[int, int]  # (H, W) of y before padding
    affine: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # A = I: the step is a ⊙ u + c


class PaddedForwardBackward(nn.Module):
    """The data term ``½‖A x − y‖²`` on a domain padded to a multiple of ``multiple``."""

    def __init__(self, physics, multiple: int):
        super().__init__()
        self.physics = physics
        self.multiple = multiple

    @property
    def _identity(self) -> bool:
        return is_identity(self.physics)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Aᵀ y`` on the padded domain: reflect-padded ``y`` when ``A = I``; otherwise the padded
        pixels are unobserved (``A`` acts on the crop) and ``Aᵀ y`` is zero there."""
        if self._identity:
            return pad_to_multiple(y, self.multiple)
        x = self.physics.A_adjoint(y)
        return F.pad(x, (0, -x.shape[-1] % self.multiple, 0, -x.shape[-2] % self.multiple))

    def _normal(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``Aᵀ A x`` on the padded domain (``x`` when ``A = I``)."""
        if self._identity:
            return x
        h, w = size
        return self._adjoint(self.physics.A(x[..., :h, :w]))


class WaveletFB(PaddedForwardBackward):
    """Forward-backward on weighted wavelet coefficients, for ``½‖Ax − y‖² + ‖θ D x‖_{1,2}``."""

    def __init__(self, physics, transform: WaveletTransform, weights: WaveletWeights, step_rule: str = "optimal"):
        super().__init__(physics, transform.multiple)
        if step_rule not in STEP_RULES:
            raise ValueError(f"step_rule must be one of {STEP_RULES}, not {step_rule!r}")
        self.transform = transform
        self.theta = weights
        self.step_rule = step_rule

    def _weights_and_step(self, y: torch.Tensor) -> tuple:
        """``(θ per level, max θ, τ, L, μ)`` with ``L = ‖A‖²/min θ²`` and ``μ = σ_min(A)²/max θ²``."""
        theta = self.theta.diagonal()
        flat = torch.cat([t.flatten() for t in theta])
        lo, hi = flat.min(), flat.max()
        norm, sigma_min = operator_norm_bounds(self.physics, y)
        lipschitz = norm**2 / lo**2
        strong_convexity = sigma_min**2 / hi**2
        return theta, hi, tau_from_rule(lipschitz, strong_convexity, self.step_rule), lipschitz, strong_convexity

    def step_size(self, y: torch.Tensor) -> torch.Tensor:
        """The step τ(θ) of the current weights for observations shaped like ``y``."""
        return self._weights_and_step(y)[2]

    def prepare(self, y: torch.Tensor) -> WaveletContext:
        size = tuple(y.shape[-2:])
        b = self.transform.analysis(self._adjoint(y))
        theta, hi, tau, lipschitz, strong_convexity = self._weights_and_step(y)
        approx_scale = hi.detach()  # a constant of the parametrization: see the module docstring
        affine = None
        if self._identity:  # u − τθ⁻¹(θ⁻¹u − b) = (1 − τ/θ²) ⊙ u + (τ/θ) ⊙ b, precomputed once
            scales = [approx_scale, *theta]
            bands = [b.approx, *b.details]
            affine = ([1 - tau / s**2 for s in scales], [(tau / s) * band for s, band in zip(scales, bands)])
        return WaveletContext(b, theta, approx_scale, tau, lipschitz, strong_convexity, size, affine)

    def init(self, ctx: WaveletContext) -> Coefficients:
        return Coefficients(ctx.approx_scale * ctx.b.approx, tuple(t * d for t, d in zip(ctx.theta, ctx.b.details)))

    @staticmethod
    def _unweight(u: Coefficients, ctx: WaveletContext) -> Coefficients:
        """``θ⁻¹ u``: back from weighted coefficients to wavelet coefficients ``w = D x``."""
        return Coefficients(u.approx / ctx.approx_scale, tuple(d / t for t, d in zip(ctx.theta, u.details)))

    def _coefficient_normal(self, u: Coefficients, ctx: WaveletContext) -> Coefficients:
        """``D Aᵀ A Dᵀ θ⁻¹ u`` (``θ⁻¹ u`` when ``A = I``, since ``D`` is orthonormal)."""
        scaled = self._unweight(u, ctx)
        if self._identity:
            return scaled
        x = self._normal(self.transform.synthesis(scaled), ctx.size)
        return self.transform.analysis(x)

    def _gradient_step(self, u: Coefficients, ctx: WaveletContext) -> list[torch.Tensor]:
        """``u − τ θ⁻¹ (D Aᵀ A Dᵀ θ⁻¹ u − D Aᵀ y)``, band by band (approximation first)."""
        bands = [u.approx, *u.details]
        if ctx.affine is not None:
            return [torch.addcmul(c, a, v) for a, c, v in zip(*ctx.affine, bands)]
        r = self._coefficient_normal(u, ctx)
        scales = [ctx.approx_scale, *ctx.theta]
        return [
            v - (ctx.tau / s) * (rv - bv)
            for v, s, rv, bv in zip(bands, scales, [r.approx, *r.details], [ctx.b.approx, *ctx.b.details])
        ]

    def step(self, u: Coefficients, ctx: WaveletContext) -> Coefficients:
        """``prox_{τ‖·‖_{1,2}}(u − τ θ⁻¹ (D Aᵀ A Dᵀ θ⁻¹ u − D Aᵀ y))``; identity prox on the approximation."""
        approx, *details = self._gradient_step(u, ctx)
        dims = self.theta.group_dims
        return Coefficients(approx, tuple(group_soft_threshold(z, ctx.tau, dims) for z in details))

    def output(self, u: Coefficients, ctx: WaveletContext) -> torch.Tensor:
        """``x = Dᵀ θ⁻¹ u``, cropped back to the size of y."""
        x = self.transform.synthesis(self._unweight(u, ctx))
        h, w = ctx.size
        return x[..., :h, :w]

    def contraction(self, ctx: WaveletContext) -> torch.Tensor:
        """``ω(τ)``, so that ``Φ_K`` is ``ω^K``-Lipschitz."""
        return contraction_factor(ctx.tau, ctx.lipschitz, ctx.strong_convexity)


class PnPParameters(nn.Module):
    """θ = (σ, τ) of PnP-FB — the denoiser's noise level and the step — learned as logarithms."""

    def __init__(self, sigma: float, tau: float):
        super().__init__()
        if sigma <= 0 or tau <= 0:
            raise ValueError("the PnP σ and τ must be positive")
        self.log_sigma = nn.Parameter(torch.tensor([math.log(sigma)]))
        self.log_tau = nn.Parameter(torch.tensor([math.log(tau)]))


@dataclass
class PnPContext:
    aty: torch.Tensor  # Aᵀ y on the padded domain
    sigma: torch.Tensor
    tau: torch.Tensor
    size: tuple[int, int]


class PnPFB(PaddedForwardBackward):
    """Plug-and-play forward-backward ``x⁺ = D_σ(x − τ Aᵀ(A x − y))`` with a denoiser ``D_σ(x, σ)``.

    ``multiple``: the image sides the denoiser needs (8 for DRUNet's three downsamplings).
    """

    def __init__(self, physics, denoiser: nn.Module, params: PnPParameters, multiple: int = 8):
        super().__init__(physics, multiple)
        self.denoiser = denoiser
        self.theta = params

    def step_size(self, y: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.theta.log_tau)

    def prepare(self, y: torch.Tensor) -> PnPContext:
        sigma, tau = torch.exp(self.theta.log_sigma), torch.exp(self.theta.log_tau)
        return PnPContext(self._adjoint(y), sigma.to(y), tau.to(y), tuple(y.shape[-2:]))

    def init(self, ctx: PnPContext) -> torch.Tensor:
        return ctx.aty

    def step(self, x: torch.Tensor, ctx: PnPContext) -> torch.Tensor:
        z = x - ctx.tau * (self._normal(x, ctx.size) - ctx.aty)
        return self.denoiser(z, ctx.sigma.expand(x.shape[0]))

    def output(self, x: torch.Tensor, ctx: PnPContext) -> torch.Tensor:
        h, w = ctx.size
        return x[..., :h, :w]

    def contraction(self, ctx: PnPContext) -> torch.Tensor:
        """Unknown for a network: NaN (compare-grads then reports the measured δ_K only)."""
        return torch.tensor(float("nan"))
