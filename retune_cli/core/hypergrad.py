"""Restarted truncated unrolling and the hypergradients it yields (paper §3, Algorithm 1).

``Φ_K = φ ∘ … ∘ φ`` (K elementary steps) and ``Φ_K^T`` (T restarts). The gradient modes differ only
in which part of ``x_KT = Φ_K^T(x_0, θ)`` autograd records:

* ``"retune"``: ``x_K(T−1)`` is computed without a graph and treated as a constant, so
  ``g^R(θ) = ∂_x L(x_KT)ᵀ ∂_θ Φ_K(x_K(T−1), θ)`` (eq. 25) and memory is that of K steps;
* ``"unrolled"``: backpropagation through all K·T steps from ``x_0(θ)``.

With T = 1 both record the same graph, so they give the same gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GRADIENTS = ("retune", "unrolled")


def truncated_unrolled(scheme, u, ctx, K: int):
    """``Φ_K(u, θ)``: K elementary steps."""
    for _ in range(K):
        u = scheme.step(u, ctx)
    return u


def solve(scheme, y: torch.Tensor, K: int, T: int, gradient: str = "retune") -> torch.Tensor:
    """``x_KT``: the image after T restarts of ``Φ_K``, with the graph ``gradient`` asks for."""
    if K < 1 or T < 1:
        raise ValueError("K and T must be at least 1")
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {GRADIENTS}, not {gradient!r}")
    ctx = scheme.prepare(y)
    u = scheme.init(ctx)
    if gradient == "retune" and T > 1:
        with torch.no_grad():
            for _ in range(T - 1):
                u = truncated_unrolled(scheme, u, ctx, K)
        T = 1
    for _ in range(T):
        u = truncated_unrolled(scheme, u, ctx, K)
    return scheme.output(u, ctx)


@dataclass(frozen=True)
class FixedPoint:
    """Result of :func:`restore`: the image, how many restarts it took, the last relative residual."""

    x: torch.Tensor
    restarts: int
    residual: float


def relative_residual(new: torch.Tensor, old: torch.Tensor) -> float:
    """``‖x_Kt − x_K(t−1)‖ / ‖x_Kt‖``."""
    return float(torch.linalg.vector_norm(new - old) / torch.linalg.vector_norm(new).clamp_min(1e-30))


@torch.no_grad()
def restore(scheme, y: torch.Tensor, K: int, max_restarts: int, tol: float = 0.0) -> FixedPoint:
    """Restart ``Φ_K`` until the relative residual is ≤ ``tol`` or ``max_restarts`` is reached."""
    if K < 1 or max_restarts < 1:
        raise ValueError("K and the number of restarts must be at least 1")
    ctx = scheme.prepare(y)
    u = scheme.init(ctx)
    x = scheme.output(u, ctx)
    residual, done = float("inf"), 0
    while done < max_restarts and residual > tol:
        u = truncated_unrolled(scheme, u, ctx, K)
        new = scheme.output(u, ctx)
        residual = relative_residual(new, x)
        x, done = new, done + 1
    return FixedPoint(x, done, residual)
