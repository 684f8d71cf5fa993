"""Adjoint solvers of implicit differentiation: ``v = a + Jᵀ v`` with ``Jᵀ = ∂_u Φ_K(û)ᵀ`` given as
a vector–Jacobian product ``vjp`` on lists of tensors (the leaves of an iterate).

* ``fixed-point``: the Neumann iteration ``v ← a + Jᵀ v`` (converges at rate δ_K), run by the
  engine's one fixed-point routine, so its residual is ``‖v_t − v_{t−1}‖/‖v_t‖``;
* ``gmres``: restarted GMRES on ``(I − Jᵀ) v = a``, residual ``‖a − (I − Jᵀ) v‖/‖a‖``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .fixed_point import fixed_point

Vjp = Callable[[list[torch.Tensor]], list[torch.Tensor]]


class AdjointSolve(NamedTuple):
    """Solution of ``v = a + Jᵀ v``: the vector, the relative residual reached, the iterations."""

    v: list[torch.Tensor]
    residual: float
    iterations: int


def solve_adjoint_fixed_point(vjp: Vjp, a: list[torch.Tensor], tol: float, max_iter: int) -> AdjointSolve:
    """Neumann / fixed-point iteration ``v ← a + Jᵀ v`` from ``v = a``."""
    v, stats = fixed_point(lambda v: [ai + ji for ai, ji in zip(a, vjp(v))], a, tol, max_iter)
    return AdjointSolve(v, stats.residual, stats.iterations)


def solve_adjoint_gmres(vjp: Vjp, a: list[torch.Tensor], tol: float, max_iter: int, restart: int = 30):
    """GMRES(restart) on ``(I − Jᵀ) v = a``, relative residual ``‖a − (I − Jᵀ)v‖/‖a‖ ≤ tol``."""
    shapes = [t.shape for t in a]
    sizes = [t.numel() for t in a]

    def split(x: torch.Tensor) -> list[torch.Tensor]:
        return [p.view(s) for p, s in zip(torch.split(x, sizes), shapes)]

    def op(x: torch.Tensor) -> torch.Tensor:
        return x - torch.cat([t.flatten() for t in vjp(split(x))])

    b = torch.cat([t.flatten() for t in a])
    b_norm = float(torch.linalg.vector_norm(b)) or 1.0
    x = torch.zeros_like(b)
    r = b.clone()
    residual, it = float(torch.linalg.vector_norm(r)) / b_norm, 0
    while residual > tol and it < max_iter:
        beta = torch.linalg.vector_norm(r)
        basis = [r / beta]
        hess = torch.zeros(restart + 1, restart, dtype=b.dtype, device=b.device)
        m = 0
        for m in range(restart):
            w = op(basis[m])
            it += 1
            for i in range(m + 1):
                hess[i, m] = torch.dot(basis[i], w)
                w = w - hess[i, m] * basis[i]
            hess[m + 1, m] = torch.linalg.vector_norm(w)
            e1 = torch.zeros(m + 2, dtype=b.dtype, device=b.device)
            e1[0] = beta
            coef = torch.linalg.lstsq(hess[: m + 2, : m + 1].cpu(), e1.cpu().unsqueeze(1)).solution.squeeze(1)
            coef = coef.to(b.device)
            inner = float(torch.linalg.vector_norm(hess[: m + 2, : m + 1] @ coef - e1)) / b_norm
            if inner <= tol or hess[m + 1, m] <= 1e-300 or it >= max_iter:
                break
            basis.append(w / hess[m + 1, m])
        x = x + torch.stack(basis[: m + 1], dim=1) @ coef
        r = b - op(x)
        residual = float(torch.linalg.vector_norm(r)) / b_norm
    return AdjointSolve(split(x), residual, it)


ADJOINT_SOLVERS: dict[str, Callable[..., AdjointSolve]] = {
    "gmres": solve_adjoint_gmres,
    "fixed-point": solve_adjoint_fixed_point,
}
