"""Wavelet coefficients with the details of all levels in one tensor: one operation per step, not one per level.

:class:`~.wavelets.Coefficients` keeps a tensor per level, ``(N, C, 3, h_j, w_j)``; the iterate of the wavelet
forward-backward (:class:`~.schemes.WaveletFB`) keeps them side by side, ``details (N, C, 3, P)`` with
``P = Σ_j h_j w_j`` (coarsest level first), so that the gradient step and the group prox — groups over the
bands (θ_B) or the bands and channels (θ_BC), never across positions — are one elementwise operation each
for the whole pyramid instead of one per level. :meth:`Layout.levels` gives the per-level views back
(no copy) for the synthesis; :meth:`Layout.pack` writes an analysis into the flat form (one copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .pytree import register_pytree
from .wavelets import Coefficients


@dataclass(frozen=True)
class FlatCoefficients:
    """The approximation band ``(N, C, h_J, w_J)`` and the details of every level ``(N, C, 3, P)``."""

    approx: torch.Tensor
    details: torch.Tensor


register_pytree(FlatCoefficients, lambda c: [c.approx, c.details], lambda ts: FlatCoefficients(*ts))


@dataclass(frozen=True)
class Layout:
    """The sizes ``(h_j, w_j)`` of the detail levels, coarsest first (the order of ``Coefficients.details``)."""

    sizes: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, coeffs: Coefficients) -> Layout:
        return cls(tuple(tuple(d.shape[-2:]) for d in coeffs.details))

    def pack(self, coeffs: Coefficients) -> FlatCoefficients:
        """``[vec(d_J) … vec(d_1)]`` along the last dimension (differentiable)."""
        return FlatCoefficients(coeffs.approx, torch.cat([d.flatten(-2) for d in coeffs.details], dim=-1))

    def spread(self, per_level: list[torch.Tensor]) -> torch.Tensor:
        """Per-level weights ``(1, C', 3, 1, 1)`` → ``(1, C', 3, P)``, each repeated over its level's positions."""
        return torch.cat([t.flatten(-2).expand(*t.shape[:-2], h * w) for t, (h, w) in zip(per_level, self.sizes)],
                         dim=-1)

    def levels(self, flat: FlatCoefficients) -> Coefficients:
        """The per-level views ``(N, C, 3, h_j, w_j)`` of ``flat.details`` (no copy)."""
        parts = torch.split(flat.details, [h * w for h, w in self.sizes], dim=-1)
        return Coefficients(flat.approx, tuple(p.unflatten(-1, s) for p, s in zip(parts, self.sizes)))
