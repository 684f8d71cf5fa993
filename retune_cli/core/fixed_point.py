"""The one fixed-point routine of the engine: restarts of Φ_K, ``restore --tol``, compare-grads'
equilibrium and the Neumann adjoint solver all iterate ``u ← map(u)`` here.

Residual (the only one reported anywhere): ``r_t = ‖u_t − u_{t−1}‖ / ‖u_t‖`` over all leaves of the
iterate, where ``u_t = map(u_{t−1})``; iteration stops when ``r_t ≤ tol`` or after ``max_iter`` maps.
For restarts the map is ``Φ_K`` on the scheme's own iterate (wavelet coefficients ``u = θDx`` for
wavelet schemes, the image for PnP), so one iteration is one restart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import launch
from .pytree import dot, flatten, leaves


@dataclass(frozen=True)
class FixedPointStats:
    """How a fixed-point iteration ended: maps applied and the last relative residual (inf if none), kept
    on the device until :attr:`residual` reads it."""

    iterations: int
    last: torch.Tensor | float

    @property
    def residual(self) -> float:
        return float(self.last)


@torch.no_grad()
def relative_residual(new, old) -> torch.Tensor:
    """``‖new − old‖ / ‖new‖`` over all leaves, a 0-dim float64 tensor on their device (not read back)."""
    new_leaves = leaves(new)
    difference = [a - b for a, b in zip(new_leaves, leaves(old))]
    squares = torch.stack([dot(difference, difference), dot(new_leaves, new_leaves)]).double()
    return squares[0].sqrt() / squares[1].sqrt().clamp_min(1e-300)


ACCELERATIONS = ("none", "anderson")


@torch.no_grad()
def fixed_point(step: Callable, u0, tol: float, max_iter: int):
    """Iterate ``u ← step(u)`` from ``u0`` until the relative residual is ≤ ``tol`` or ``max_iter``
    maps were applied (``tol = 0``: ``max_iter``, or fewer at an exact fixed point where reads are free);
    returns ``(u, FixedPointStats)``. Runs without building a graph; ``u0`` is returned as it is when
    ``max_iter`` is 0. The residual is read back once per map with ``tol > 0`` or on the CPU; with ``tol = 0``
    on a launch-bound device (:mod:`.launch`) never in the loop: the last one stays on the device."""
    u, previous, residual, done = u0, None, float("inf"), 0
    read = tol > 0 or (max_iter > 0 and not launch.launch_bound(leaves(u0)[0]))
    while done < max_iter and residual > tol:
        previous, u, done = u, step(u), done + 1
        if read:
            residual = float(relative_residual(u, previous))
    if not read and previous is not None:
        return u, FixedPointStats(done, relative_residual(u, previous))
    return u, FixedPointStats(done, residual)


class _History:
    """The last ``memory`` differences ``ΔF``, ``ΔG`` (rows of two ring buffers) and the Gram matrix
    ``ΔF ΔFᵀ`` kept up to date one row at a time (float64)."""

    def __init__(self, like: torch.Tensor, memory: int):
        self.dF = like.new_empty(memory, like.numel())
        self.dG = like.new_empty(memory, like.numel())
        self.gram = torch.zeros(memory, memory, dtype=torch.float64, device=like.device)
        self.clear()

    def clear(self) -> None:
        self.size = self.slot = 0

    def add(self, df: torch.Tensor, dg: torch.Tensor) -> None:
        memory = self.dF.shape[0]
        self.dF[self.slot], self.dG[self.slot] = df, dg
        self.size = min(self.size + 1, memory)
        row = (self.dF[: self.size] @ self.dF[self.slot]).double()
        self.gram[self.slot, : self.size], self.gram[: self.size, self.slot] = row, row
        self.slot = (self.slot + 1) % memory

    def correction(self, f: torch.Tensor, ridge: float) -> torch.Tensor:
        """``ΔGᵀ γ`` with ``γ = argmin ‖f − ΔFᵀ γ‖² + ridge·tr(ΔFΔFᵀ)‖γ‖²``."""
        n = self.size
        gram = self.gram[:n, :n]
        regularized = gram + ridge * gram.diagonal().sum().clamp_min(1e-300) * torch.eye(n, dtype=gram.dtype,
                                                                                         device=gram.device)
        gamma = torch.linalg.solve(regularized, (self.dF[:n] @ f).double()).to(f.dtype)
        return self.dG[:n].T @ gamma


@torch.no_grad()
def anderson(step: Callable, u0, tol: float, max_iter: int, memory: int = 5, block: int = 1, scale: float = 1.0,
             on_block: Callable[[int], None] | None = None, ridge: float = 1e-10):
    """Anderson acceleration (type II) of ``u ← g(u)``, safeguarded, counted in blocks of ``block`` maps.

    Each map ``g_k = g(x_k)`` has the residual ``f_k = g_k − x_k``; the next point is
    ``x_{k+1} = g_k − ΔGᵀγ`` with ``γ = argmin ‖f_k − ΔFᵀγ‖`` over the last ``memory`` differences
    (``f_{i+1} − f_i``, ``g_{i+1} − g_i``; a ridge keeps the normal equations solvable). When the residual
    grows or is at rounding level, the history is dropped and the plain map is taken (``x_{k+1} = g_k``);
    when an extrapolated point maps to non-finite values, the iteration goes back to the last plain map
    ``g_{k−1}``. A plain map to non-finite values stops it.

    The residual is ``scale·‖f_k‖/‖g_k‖``: with ``g = φ`` one step and ``block = K``, ``scale = Σ_{i<K} ω^i``
    makes it a bound on the restart residual ``‖Φ_K(x) − x‖`` (triangle inequality). Stops when it is ≤
    ``tol`` or after ``max_iter`` blocks; ``on_block(b)`` after block b. Returns the last map ``g_k`` and
    ``FixedPointStats(blocks started, residual)`` (``u0`` as it is when ``max_iter`` is 0).
    """
    if max_iter == 0:
        return u0, FixedPointStats(0, float("inf"))
    x, unflatten = flatten(u0)
    history = _History(x, memory)
    g, f_old, g_old = x, None, None
    residual, previous, done = float("inf"), float("inf"), 0
    rounding = 16 * scale * torch.finfo(x.dtype).eps
    while done < max_iter * block and residual > tol:
        g = flatten(step(unflatten(x)))[0]
        f = g - x
        residual, done = scale * float(f.norm() / g.norm().clamp_min(1e-300)), done + 1
        if not math.isfinite(residual):
            if not history.size:  # a plain map diverged: so does the iteration
                break
            history.clear()  # the extrapolation overshot: resume from the last plain map
            g = x = g_old
            f_old, previous, residual = None, float("inf"), float("inf")
        else:
            if residual > previous or residual <= rounding:  # safeguard; or differences of rounding errors
                history.clear()
            elif f_old is not None:
                history.add(f - f_old, g - g_old)
            previous, f_old, g_old = residual, f, g
            x = g - history.correction(f, ridge) if history.size else g
        if on_block is not None and done % block == 0:
            on_block(done // block)
    return unflatten(g), FixedPointStats(-(-done // block), residual)
