"""The one fixed-point routine of the engine: restarts of Φ_K, ``restore --tol``, compare-grads'
equilibrium and the Neumann adjoint solver all iterate ``u ← map(u)`` here.

Residual (the only one reported anywhere): ``r_t = ‖u_t − u_{t−1}‖ / ‖u_t‖`` over all leaves of the
iterate, where ``u_t = map(u_{t−1})``; iteration stops when ``r_t ≤ tol`` or after ``max_iter`` maps.
For restarts the map is ``Φ_K`` on the scheme's own iterate (wavelet coefficients ``u = θDx`` for
wavelet schemes, the image for PnP), so one iteration is one restart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .pytree import flatten, leaves, norm


class FixedPointStats(NamedTuple):
    """How a fixed-point iteration ended: maps applied and the last relative residual (inf if none)."""

    iterations: int
    residual: float


@torch.no_grad()
def relative_residual(new, old) -> float:
    """``‖new − old‖ / ‖new‖`` over all leaves."""
    new_leaves = leaves(new)
    return norm([a - b for a, b in zip(new_leaves, leaves(old))]) / max(norm(new_leaves), 1e-300)


ACCELERATIONS = ("none", "anderson")


@torch.no_grad()
def fixed_point(step: Callable, u0, tol: float, max_iter: int, accelerate: str = "none", memory: int = 5):
    """Iterate ``u ← step(u)`` from ``u0`` until the relative residual is ≤ ``tol`` or ``max_iter``
    maps were applied (``tol = 0``: exactly ``max_iter``); returns ``(u, FixedPointStats)``.

    ``accelerate="anderson"``: :func:`anderson` with ``memory`` past maps. Runs without building a
    graph; ``u0`` is returned as it is when ``max_iter`` is 0.
    """
    if accelerate == "anderson":
        return anderson(step, u0, tol, max_iter, memory)
    if accelerate != "none":
        raise ValueError(f"accelerate must be one of {', '.join(ACCELERATIONS)}, not {accelerate!r}")
    u, residual, done = u0, float("inf"), 0
    while done < max_iter and residual > tol:
        new = step(u)
        residual = relative_residual(new, u)
        u, done = new, done + 1
    return u, FixedPointStats(done, residual)


@torch.no_grad()
def anderson(step: Callable, u0, tol: float, max_iter: int, memory: int = 5, ridge: float = 1e-10):
    """Anderson acceleration (type II) of ``u ← g(u)``, safeguarded.

    Each map ``g_k = g(x_k)`` has the residual ``f_k = g_k − x_k``; the next point is
    ``x_{k+1} = g_k − ΔG γ`` with ``γ = argmin ‖f_k − ΔF γ‖`` over the last ``memory`` differences
    (``ΔF``, ``ΔG``: columns ``f_{i+1} − f_i``, ``g_{i+1} − g_i``; a ridge of ``ridge·‖ΔF‖²`` keeps the
    normal equations solvable). When the residual grows, the history is dropped and the plain map is
    taken (``x_{k+1} = g_k``). The residual reported is the engine's, ``‖g_k − x_k‖/‖g_k‖``, and the
    iterate returned is the last map ``g_k``, as for plain restarts.
    """
    x, unflatten = flatten(u0)
    g_hist: list[torch.Tensor] = []
    f_hist: list[torch.Tensor] = []
    g, residual, previous, done = x, float("inf"), float("inf"), 0
    while done < max_iter and residual > tol:
        g = flatten(step(unflatten(x)))[0]
        f = g - x
        residual, done = float(f.norm() / g.norm().clamp_min(1e-300)), done + 1
        if residual > previous:  # safeguard: restart from the plain map
            g_hist, f_hist = [], []
        previous = residual
        g_hist, f_hist = (g_hist + [g])[-memory - 1 :], (f_hist + [f])[-memory - 1 :]
        x = g if len(f_hist) < 2 else g - _anderson_correction(g_hist, f_hist, f, ridge)
    return unflatten(g), FixedPointStats(done, residual)


def _anderson_correction(g_hist, f_hist, f, ridge: float) -> torch.Tensor:
    """``ΔG γ`` with ``γ`` the regularized least-squares coefficients of ``f`` on ``ΔF``."""
    dF = torch.stack([b - a for a, b in zip(f_hist, f_hist[1:])], dim=1)
    dG = torch.stack([b - a for a, b in zip(g_hist, g_hist[1:])], dim=1)
    gram = (dF.T @ dF).double()
    gram += ridge * gram.diagonal().sum().clamp_min(1e-300) * torch.eye(gram.shape[0], dtype=gram.dtype,
                                                                         device=gram.device)
    gamma = torch.linalg.solve(gram, (dF.T @ f).double()).to(f.dtype)
    return dG @ gamma
