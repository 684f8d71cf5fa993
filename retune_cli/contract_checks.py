"""The checks of a physics' and a prior's mathematics behind :mod:`retune_cli.testing` (which adds the
schemes' and the aggregates). Everything runs in float64 on copies, on random inputs seeded by ``seed``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .core.physics import Params, Physics, operator_norm
from .core.prior import Prior

SHAPE = (2, 3, 32, 32)  # a batch of two images: per-image operators (masks, kernels) differ


class ContractError(AssertionError):
    """A component breaks its contract: the message names the check, the error measured and what it means."""


@dataclass(frozen=True)
class Check:
    """One check's outcome: the error measured (0 is exact) against its tolerance."""

    name: str
    error: float
    tolerance: float
    detail: str

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance  # False for NaN

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return f"{verdict} {self.name}: {self.detail} (error {self.error:.2e}, tolerance {self.tolerance:.0e})"


def result(name: str, error: float, tolerance: float, detail: str) -> Check:
    """The :class:`Check`, or :class:`ContractError` saying it failed."""
    check = Check(name, float(error), tolerance, detail)
    if not check.passed:
        raise ContractError(str(check))
    return check


def randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def dot(a, b) -> float:
    """``Σ ⟨a_i, b_i⟩`` over tensors or lists of tensors."""
    pairs = zip(a, b) if isinstance(a, (list, tuple)) else [(a, b)]
    return float(sum(torch.sum(x * y) for x, y in pairs))


def size(a) -> float:
    return math.sqrt(dot(a, a))


def drawn(physics: Physics, shape, seed: int) -> Params:
    """The physics' random parameters for a batch (masks, kernels), floating ones in float64."""
    return {k: v.double() if v.is_floating_point() else v for k, v in physics.draw(torch.Size(shape), seed).items()}


def check_adjoint(physics: Physics, shape=SHAPE, seed: int = 0, tolerance: float = 1e-6) -> Check:
    """``⟨A x, y⟩ = ⟨x, Aᵀ y⟩`` for random x, y (relative to ``‖Ax‖‖y‖ + ‖x‖‖Aᵀy‖``)."""
    x, params = randn(shape, seed), drawn(physics, shape, seed)
    ax = physics.A(x, params)
    y = randn(ax.shape, seed + 1)
    aty = physics.A_adjoint(y, params)
    error = abs(dot(ax, y) - dot(x, aty)) / (size(ax) * size(y) + size(x) * size(aty) or 1.0)
    return result("adjoint", error, tolerance, "⟨A x, y⟩ = ⟨x, Aᵀ y⟩ (A_adjoint is A's adjoint)")


def check_normal(physics: Physics, shape=SHAPE, seed: int = 0, tolerance: float = 1e-6) -> Check:
    """``normal(x) = Aᵀ(A x)``."""
    x, params = randn(shape, seed), drawn(physics, shape, seed)
    expected = physics.A_adjoint(physics.A(x, params), params)
    error = size(physics.normal(x, params) - expected) / (size(expected) or 1.0)
    return result("normal", error, tolerance, "normal(x) = Aᵀ(A x)")


def check_norm_bounds(physics: Physics, shape=SHAPE, seed: int = 0, tolerance: float = 1e-3) -> Check:
    """``norm_bounds`` bounds ‖A‖ from above over the whole batch (each image with its own operator, by
    power iteration) and σ_min from below (``‖A x‖ ≥ σ_min ‖x‖`` for random x); ``identity`` means A = I."""
    x, params = randn(shape, seed), drawn(physics, shape, seed)
    bounds = physics.norm_bounds(physics.A(x, params), params)
    n = shape[0]
    norms = []
    for i in range(n):
        own = {k: v[i:i + 1] if v.shape[0] == n else v for k, v in params.items()}
        norms.append(operator_norm(physics, x[i:i + 1], own, iterations=300, tol=1e-10))
        ratio = size(physics.A(x[i:i + 1], own)) / size(x[i:i + 1])
        if ratio < bounds.sigma_min * (1 - tolerance):
            return result("norm_bounds", bounds.sigma_min / ratio - 1, tolerance,
                          f"σ_min = {bounds.sigma_min:.4g} is no lower bound: ‖A x‖/‖x‖ = {ratio:.4g} for image {i}")
    if physics.identity and not torch.equal(physics.A(x, params), x):
        return result("norm_bounds", math.inf, tolerance, "identity = True but A x ≠ x")
    largest, bound = max(norms), float(bounds.norm)
    return result("norm_bounds", max(largest / bound - 1, 0.0), tolerance,
                  f"‖A‖ ≤ {bound:.6g} over the batch (power iteration per image: {largest:.6g})")


def check_prox_data(physics: Physics, shape=SHAPE, seed: int = 0, tau: float = 0.7, tolerance: float = 1e-6) -> Check:
    """``p = prox_data(z, y, τ)`` satisfies ``Aᵀ(A p − y) + (p − z)/τ = 0``."""
    x, z, params = randn(shape, seed), randn(shape, seed + 2), drawn(physics, shape, seed)
    y = physics.A(x, params)
    y = y + 0.1 * randn(y.shape, seed + 1)
    p = physics.prox_data(z, y, torch.tensor(tau, dtype=torch.float64), params)
    data, proximal = physics.A_adjoint(physics.A(p, params) - y, params), (p - z) / tau
    error = size(data + proximal) / (size(data) + size(proximal) or 1.0)
    return result("prox_data", error, tolerance, "Aᵀ(A p − y) + (p − z)/τ = 0 at p = prox_data(z, y, τ)")


def in_float64(prior: Prior) -> Prior:
    """A float64 copy (the user's prior is left as it is)."""
    return copy.deepcopy(prior).double()


def _local_minimum(objective: Callable, point, candidates: dict[str, object]) -> tuple[float, str]:
    """The largest relative decrease of ``objective`` from ``point`` to a candidate (≥ 0), and that candidate."""
    base = float(objective(point))
    drops = {label: (base - float(objective(c))) / max(abs(base), 1e-300) for label, c in candidates.items()}
    worst = max(drops, key=drops.__getitem__)
    return max(drops[worst], 0.0), worst


def _perturbations(point: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """``point ± ε·rms·d`` for two random directions d and ε from 10⁻¹ to 10⁻⁴, and 0."""
    rms = size(point) / math.sqrt(point.numel()) or 1.0
    out = {"0": torch.zeros_like(point)}
    for k in range(2):
        d = randn(point.shape, seed + 10 + k)
        out |= {f"{'+-'[sign < 0]}{eps:g}·rms·d{k}": point + sign * eps * rms * d
                for eps in (1e-1, 1e-2, 1e-3, 1e-4) for sign in (1, -1)}
    return out


def check_prox(prior: Prior, shape=SHAPE, seed: int = 0, tau: float = 0.5, tolerance: float = 1e-9) -> Check:
    """``p = prox(x, τ)`` minimizes ``g(q) + ‖q − x‖²/(2τ)`` (with ``value()``): no random perturbation of p,
    nor 0 nor x, does better — i.e. ``(x − p)/τ ∈ ∂g(p)``."""
    prior = in_float64(prior)
    x = 0.5 + 0.3 * randn(shape, seed)
    with torch.no_grad():
        p = prior.prox(x, torch.tensor(tau, dtype=torch.float64))

        def objective(q: torch.Tensor) -> torch.Tensor:
            return prior.value(q) + torch.sum((q - x) ** 2) / (2 * tau)

        drop, worst = _local_minimum(objective, p, {"x": x, **_perturbations(p, seed)})
    where = f"; lower at q = {worst}" if drop > tolerance else ""
    return result("prox", drop, tolerance, f"p = prox(x, τ) minimizes g(q) + ‖q − x‖²/2τ against x, 0 and "
                                           f"perturbations of p (τ = {tau}{where})")


def check_analysis_adjoint(prior: Prior, shape=SHAPE, seed: int = 0, tolerance: float = 1e-6) -> Check:
    """``⟨L x, z⟩ = ⟨x, Lᵀ z⟩`` for ``analysis`` and ``analysis_adjoint``."""
    prior = in_float64(prior)
    x = randn(shape, seed)
    with torch.no_grad():
        lx = prior.analysis(x)
        z = [randn(b.shape, seed + 1 + i) for i, b in enumerate(lx)]
        ltz = prior.analysis_adjoint(z)
    error = abs(dot(lx, z) - dot(x, ltz)) / (size(lx) * size(z) + size(x) * size(ltz) or 1.0)
    return result("analysis adjoint", error, tolerance, "⟨L x, z⟩ = ⟨x, Lᵀ z⟩ (analysis_adjoint is its adjoint)")


def check_analysis_norm(prior: Prior, shape=SHAPE, seed: int = 0, tolerance: float = 1e-3) -> Check:
    """``analysis_norm()`` bounds ``‖L‖`` from above (power iteration on ``LᵀL``)."""
    prior = in_float64(prior)
    v, estimate = randn(shape, seed), 0.0
    with torch.no_grad():
        for _ in range(500):
            v = v / size(v)
            w = prior.analysis_adjoint(prior.analysis(v))
            estimate, v = dot(v, w), w
        bound = float(prior.analysis_norm())
    largest = math.sqrt(max(estimate, 0.0))
    return result("analysis norm", max(largest / bound - 1, 0.0), tolerance,
                  f"‖L‖ ≤ analysis_norm() = {bound:.6g} (power iteration: {largest:.6g})")


def _moreau_drop(h: Callable, z: list[torch.Tensor], p: list[torch.Tensor], sigma: float, seed: int) -> float:
    """How much a perturbation of ``w = (z − p)/σ`` lowers ``h(w) + σ/2 ‖w − z/σ‖²`` (0 when Moreau's identity
    ``p = z − σ prox_{h/σ}(z/σ)`` holds)."""
    w = [(a - b) / sigma for a, b in zip(z, p)]
    sizes, shapes = [b.numel() for b in w], [b.shape for b in w]

    def objective(flat: torch.Tensor) -> float:
        parts = [t.view(s) for t, s in zip(torch.split(flat, sizes), shapes)]
        return float(h(parts)) + sigma / 2 * sum(float(torch.sum((a - b / sigma) ** 2)) for a, b in zip(parts, z))

    flat = torch.cat([b.flatten() for b in w])
    return _local_minimum(objective, flat, _perturbations(flat, seed))[0]


def check_conjugate_prox(prior: Prior, shape=SHAPE, seed: int = 0, sigma: float = 0.7, h: Callable | None = None,
                         tolerance: float = 1e-9) -> Check:
    """``P = prox_{σh*}`` is firmly nonexpansive, ``⟨P z₁ − P z₂, z₁ − z₂⟩ ≥ ‖P z₁ − P z₂‖²`` (every prox of a
    convex function is); given ``h`` (a list of tensors → a number), Moreau's identity too: ``(z − P z)/σ``
    minimizes ``h(w) + σ/2 ‖w − z/σ‖²``."""
    prior = in_float64(prior)
    with torch.no_grad():
        like = prior.analysis(randn(shape, seed))
        z1, z2 = ([2 * randn(b.shape, seed + k + i) for i, b in enumerate(like)] for k in (1, 50))
        p1, p2 = prior.conjugate_prox(z1, sigma), prior.conjugate_prox(z2, sigma)
        dp, dz = [a - b for a, b in zip(p1, p2)], [a - b for a, b in zip(z1, z2)]
        gap = max(dot(dp, dp) - dot(dp, dz), 0.0) / dot(dz, dz)
        if h is None or gap > tolerance:
            return result("conjugate prox", gap, tolerance, f"prox_{{σh*}} is firmly nonexpansive (σ = {sigma})")
        drop = _moreau_drop(h, z1, p1, sigma, seed)
    return result("conjugate prox", drop, tolerance,
                  f"prox_{{σh*}} is firmly nonexpansive and meets Moreau's identity with the h given (σ = {sigma})")
