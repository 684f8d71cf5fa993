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

from .pytree import leaves, norm


class FixedPointStats(NamedTuple):
    """How a fixed-point iteration ended: maps applied and the last relative residual (inf if none)."""

    iterations: int
    residual: float


@torch.no_grad()
def relative_residual(new, old) -> float:
    """``‖new − old‖ / ‖new‖`` over all leaves."""
    new_leaves = leaves(new)
    return norm([a - b for a, b in zip(new_leaves, leaves(old))]) / max(norm(new_leaves), 1e-300)


@torch.no_grad()
def fixed_point(step: Callable, u0, tol: float, max_iter: int):
    """Iterate ``u ← step(u)`` from ``u0`` until the relative residual is ≤ ``tol`` or ``max_iter``
    maps were applied (``tol = 0``: exactly ``max_iter``); returns ``(u, FixedPointStats)``.

    Runs without building a graph; ``u0`` is returned as it is when ``max_iter`` is 0.
    """
    u, residual, done = u0, float("inf"), 0
    while done < max_iter and residual > tol:
        new = step(u)
        residual = relative_residual(new, u)
        u, done = new, done + 1
    return u, FixedPointStats(done, residual)
