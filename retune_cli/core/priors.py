"""Weighted ℓ2,1 wavelet prior ``‖θ D x‖_{1,2}`` (paper eqs. 44–45) and its proximity operator.

θ is diagonal on the detail coefficients: it multiplies ``w_{j,k,b,c}`` by ``λ_j sqrt(Λ_·)``.

* θ_B (``"bands"``): ``Σ_j λ_j Σ_{k,c} sqrt(Σ_b Λ_b w²)``, groups over bands b;
* θ_BC (``"bands-channels"``): ``Σ_j λ_j Σ_k sqrt(Σ_{b,c} Λ_{b,c} w²)``, groups over (b, c).

Positivity comes from learning ``log λ`` and ``log Λ``. The approximation band is not penalized.

Two starts. The paper's: ``λ_j = init_lambda``, ``Λ = 1``. The noise start (:meth:`WaveletWeights.universal`):
universal thresholds ``θ_{j,c} = s_c √(2 log n_j)``, ``n_j = n / 4^(j−1)`` the pixels of the image that
level j (1 = finest) analyses (n those of a training crop), ``s_c`` the noise level of channel c. Why θ is
the threshold: with ``w = D x``, the scheme minimizes ``½‖A Dᵀw − y‖² + ‖θ w‖_{1,2}``; its per-step prox
thresholds ``u = θ w`` at τ, i.e. w at τ/θ after a gradient step τ/θ² — and for A = I the fixed point of
``w ↦ soft_{τ/θ}(w − (τ/θ²)(w − D y))`` is ``soft_θ(D y)`` whatever τ: θ is the effective threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

WEIGHTS = ("bands", "bands-channels")


class WaveletWeights(nn.Module):
    """Learned weights θ: ``log_lambda`` (one per scale) and ``log_Lambda`` (per band or band×channel).

    ``log_lambda[i]`` belongs to ``details[i]`` of :class:`~retune_cli.core.wavelets.Coefficients`
    (coarsest scale first).
    """

    def __init__(self, levels: int, weights: str, channels: int = 3, init_lambda: float = 0.1):
        """The paper's start: ``λ_j = init_lambda``, ``Λ = 1``."""
        super().__init__()
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, not {weights!r}")
        if init_lambda <= 0:
            raise ValueError("init_lambda must be positive")
        self.weights = weights
        self.log_lambda = nn.Parameter(torch.full((levels,), math.log(init_lambda)))
        shape = (3,) if weights == "bands" else (3, channels)
        self.log_Lambda = nn.Parameter(torch.zeros(shape))

    @classmethod
    def universal(cls, levels: int, weights: str, noise: Sequence[float], pixels: int) -> WaveletWeights:
        """The noise start ``θ_{j,b,c} = s_c √(2 log(n / 4^(j−1)))`` (j = 1 finest, n = ``pixels``, s_c =
        ``noise[c]``): ``λ_j = s̄ √(2 log n_j)`` with ``s̄ = √(mean_c s_c²)``, and ``Λ_{b,c} = (s_c / s̄)²`` for θ_BC;
        θ_B, one weight for all channels, gets ``Λ_b = 1``, i.e. s̄ in every channel."""
        s = torch.as_tensor(noise, dtype=torch.float64)
        if s.dim() != 1 or s.numel() == 0 or not torch.all(s > 0) or not torch.all(torch.isfinite(s)):
            raise ValueError("the noise levels of a universal threshold must be finite and positive")
        if pixels < 4 ** levels:
            raise ValueError(f"{pixels} pixels are too few for {levels} levels")
        weights_module = cls(levels, weights, channels=s.numel())
        rms = s.pow(2).mean().sqrt()
        fine_to_coarse = torch.arange(levels, dtype=torch.float64)
        universal = torch.sqrt(2 * (math.log(pixels) - fine_to_coarse * math.log(4)))
        with torch.no_grad():
            weights_module.log_lambda.copy_(torch.log(rms * universal).flip(0))  # stored coarsest first
            if weights == "bands-channels":
                weights_module.log_Lambda.copy_(2 * torch.log(s / rms).expand(3, -1))
        return weights_module

    @property
    def group_dims(self) -> tuple[int, ...]:
        """Dimensions of a ``(N, C, 3, h, w)`` detail tensor that a group spans."""
        return (2,) if self.weights == "bands" else (1, 2)

    def diagonal(self) -> list[torch.Tensor]:
        """θ per level, shaped to broadcast against ``(N, C, 3, h, w)``: ``λ_j sqrt(Λ)``."""
        band_scale = torch.exp(0.5 * self.log_Lambda)
        band_scale = (
            band_scale.view(1, 1, 3, 1, 1) if self.weights == "bands" else band_scale.t().reshape(1, -1, 3, 1, 1)
        )
        return [torch.exp(log_l) * band_scale for log_l in self.log_lambda]

    def extra_repr(self) -> str:
        return f"weights={self.weights!r}, levels={self.log_lambda.numel()}"


def group_norm(z: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Euclidean norm of each group (over ``dims``), kept broadcastable.

    ``sqrt(Σ z² + tiny)``: the smallest normal number keeps the derivative finite (zero) at ``z = 0``,
    where ``sqrt`` alone would give ``0 · ∞ = NaN``; the value changes by less than 1e-19.
    """
    return torch.sqrt(torch.sum(z * z, dim=dims, keepdim=True) + torch.finfo(z.dtype).tiny)


def _inverse_norm(z: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``r = rsqrt(Σ_g z² + ε)`` per group, ``ε = sqrt(tiny)``."""
    return torch.rsqrt(torch.sum(z * z, dim=dims, keepdim=True) + torch.finfo(z.dtype).tiny ** 0.5)


class _GroupSoftThreshold(torch.autograd.Function):
    """``y = z · max(0, s)``, ``s = 1 − λ r``, ``r = (Σ_g z² + ε)^(−1/2)``, λ constant in each group, with
    the backward by hand: ``∂z = g · max(0, s) + z · λ r³ [s ≥ 0] Σ_g g·z`` and
    ``∂λ = −Σ_g r [s ≥ 0] Σ_g g·z`` (summed to λ's shape); ``[s ≥ 0]`` is ``clamp``'s subgradient.
    Saves ``z``, λ and the per-group ``r``; under double backpropagation (``create_graph``, as
    compare-grads' J·w) ``r`` is recomputed from ``z`` so that its graph is exact."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, level: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        inverse_norm = _inverse_norm(z, dims)
        ctx.dims = dims
        ctx.save_for_backward(z, level, inverse_norm)
        return z * torch.clamp(1 - level * inverse_norm, min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, level, inverse_norm = ctx.saved_tensors
        if torch.is_grad_enabled():
            inverse_norm = _inverse_norm(z, ctx.dims)
        shrink = 1 - level * inverse_norm
        active = torch.where(shrink >= 0, inverse_norm, torch.zeros_like(inverse_norm))  # r [s ≥ 0]
        dot = torch.sum(grad * z, dim=ctx.dims, keepdim=True)
        grad_z = torch.addcmul(grad * torch.clamp(shrink, min=0), z, level * active * inverse_norm**2 * dot)
        grad_level = (-active * dot).sum_to_size(level.shape) if ctx.needs_input_grad[1] else None
        return grad_z, grad_level, None


def group_soft_threshold(z: torch.Tensor, level: torch.Tensor | float, dims: tuple[int, ...],
                         inplace: bool = False) -> torch.Tensor:
    """``prox_{level ‖·‖_{1,2}}(z) = z · max(0, 1 − level / ‖z_g‖)`` group by group (``level`` a scalar or
    a tensor constant within each group).

    ``1/‖z_g‖`` is ``rsqrt(Σ z² + ε)`` with ``ε = sqrt(tiny)`` (1e-19 in float32): one fused op, and
    its derivative ``ε^(−3/2)`` stays finite at ``z = 0``, so a zero group gets a zero gradient. Under
    autograd, one node with a hand-written backward (:class:`_GroupSoftThreshold`); without, plain
    operations, and ``inplace=True`` overwrites ``z`` (allocating only the per-group factor).
    """
    level = torch.as_tensor(level, dtype=z.dtype, device=z.device)
    if level.dim():
        group = torch.Size(1 if d in dims or d - z.dim() in dims else n for d, n in enumerate(z.shape))
        if torch.broadcast_shapes(level.shape, group) != group:
            raise ValueError(f"the threshold must be constant within each group, not of shape {tuple(level.shape)}")
    if torch.is_grad_enabled() and (z.requires_grad or level.requires_grad):
        if inplace:
            raise RuntimeError("group_soft_threshold(inplace=True) needs autograd off")
        return _GroupSoftThreshold.apply(z, level, dims)
    factor = _inverse_norm(z, dims).mul_(-level).add_(1).clamp_(min=0)
    return z.mul_(factor) if inplace else z * factor


def weighted_l21(details: list[torch.Tensor], theta: list[torch.Tensor], dims: tuple[int, ...]) -> torch.Tensor:
    """``‖θ w‖_{1,2}``: the sum over levels of the group norms of the weighted details."""
    return sum(group_norm(t * d, dims).sum() for d, t in zip(details, theta))


def _secular(w2t2: torch.Tensor, tt2: torch.Tensor, rho: torch.Tensor, dims: tuple[int, ...]):
    """``g(ρ) = 1/r(ρ) − 1`` with ``r(ρ)² = Σ θ²w²/(ρ + τθ²)²`` over each group, and ``g'(ρ)``."""
    d = rho + tt2
    r2 = torch.sum(w2t2 / d**2, dim=dims, keepdim=True)
    dr2 = -2 * torch.sum(w2t2 / d**3, dim=dims, keepdim=True)
    r = torch.sqrt(r2)
    return 1 / r - 1, -dr2 / (2 * r * r2)


def weighted_group_prox(w: torch.Tensor, theta: torch.Tensor, tau, dims: tuple[int, ...],
                        newton_steps: int = 12) -> torch.Tensor:
    """``prox_{τ‖θ ⊙ ·‖_{1,2}}(w)`` for weights ``θ > 0`` that may vary inside a group (θ_B, θ_BC).

    Per group: ``v = 0`` when ``‖w/θ‖ ≤ τ``; else ``v_i = w_i ρ/(ρ + τθ_i²)`` where ``ρ = ‖θ ⊙ v‖`` is the
    root of ``1/r(ρ) = 1``, ``r(ρ)² = Σ θ_i² w_i²/(ρ + τθ_i²)²`` (increasing and concave in ρ, so Newton
    from ρ = 0 climbs to it monotonically; one step when θ is constant in the group, which is then
    group soft-thresholding at τθ; 8 steps reach float64 precision for weights spread by e^±4 within a
    group). Newton runs without a graph; one last step with it gives the exact implicit derivative,
    since the Newton map is flat at its root.
    """
    tt2 = tau * theta**2
    active = torch.sum((w / theta) ** 2, dim=dims, keepdim=True) > tau**2
    # an inactive group (all zero, say) would give 1/r = ∞ and a NaN gradient through where(): any finite
    # value stands in for its w²θ², since its branch is not taken
    w2t2 = torch.where(active, (w * theta) ** 2, torch.ones_like(w))
    with torch.no_grad():
        rho = torch.zeros_like(torch.sum(w2t2, dim=dims, keepdim=True))
        for _ in range(newton_steps):
            g, dg = _secular(w2t2, tt2, rho, dims)
            rho = torch.where(active, (rho - g / dg).clamp_min(0), torch.ones_like(rho))
    g, dg = _secular(w2t2, tt2, rho, dims)
    rho = torch.where(active, rho - g / dg, torch.ones_like(rho))
    return torch.where(active, w * rho / (rho + tt2), torch.zeros_like(w))
