"""A kit that checks your own physics, prior or scheme before you train with it. Each ``check_*`` returns
a :class:`Check` (the error measured, its tolerance, what it means) or raises :class:`ContractError` (an
``AssertionError``: a failing test in pytest) saying what is wrong; ``check_physics``, ``check_prior`` and
``check_scheme`` run every check that applies and report every failure at once. Inputs are random
(seeded), computations in float64 on copies of the components.

    from retune_cli.testing import check_physics, check_prior, check_scheme

    def test_my_prior():
        check_prior(MyPrior())                  # prox optimality; analysis adjoint, norm, conjugate prox

    def test_my_scheme():
        check_scheme(scheme)                    # iterate leaves, contraction factor, DEQ gradient vs FD

Physics: ``⟨Ax, y⟩ = ⟨x, Aᵀy⟩``, ``normal = AᵀA``, ``norm_bounds`` bounding ‖A‖ over a whole batch of
per-image operators (and σ_min from below), ``prox_data`` optimality when offered. Prior: ``prox`` against
``value()`` (the prox output p minimizes ``g(q) + ‖q − x‖²/2τ``), ``analysis`` adjointness and norm bound,
``conjugate_prox`` firmly nonexpansive (and Moreau's identity given ``h``). Scheme: every leaf of the
iterate matters, ``contraction`` bounds the step's Lipschitz constant, and the DEQ hypergradient matches
central finite differences on a tiny problem.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from .contract_checks import (
    SHAPE,
    Check,
    ContractError,
    check_adjoint,
    check_analysis_adjoint,
    check_analysis_norm,
    check_conjugate_prox,
    check_norm_bounds,
    check_normal,
    check_prox,
    check_prox_data,
    randn,
    result,
    size,
)
from .core.hypergrad import SolveOptions, solve
from .core.implicit import finite_difference_gradient, flat_gradient, theta_parameters
from .core.physics import Observation, Physics
from .core.prior import Prior
from .core.pytree import leaves, rebuild
from .core.scheme import Scheme, has_data_prox

__all__ = [
    "Check", "ContractError", "check_adjoint", "check_analysis_adjoint", "check_analysis_norm", "check_conjugate_prox",
    "check_contraction", "check_gradient", "check_iterate", "check_norm_bounds", "check_normal", "check_physics",
    "check_prior", "check_prox", "check_prox_data", "check_scheme", "tiny_problem",
]
MAX_FD_PARAMETERS = 64  # finite differences cost two fixed points per θ entry


def _all(runs: list[Callable[[], Check]]) -> list[Check]:
    """Every check run; one :class:`ContractError` listing each failure (a line each), else the checks."""
    done, failures = [], []
    for run in runs:
        try:
            done.append(run())
        except ContractError as e:
            failures.append(str(e))
    if failures:
        raise ContractError("\n".join(failures))
    return done


def check_physics(physics: Physics, shape=SHAPE, seed: int = 0) -> list[Check]:
    """Adjoint, normal, norm bounds, and ``prox_data`` when the physics offers it."""
    runs = [partial(check, physics, shape, seed) for check in (check_adjoint, check_normal, check_norm_bounds)]
    if has_data_prox(physics):
        runs.append(partial(check_prox_data, physics, shape, seed))
    return _all(runs)


def check_prior(prior: Prior, shape=SHAPE, seed: int = 0, h: Callable | None = None) -> list[Check]:
    """What the prior offers: ``prox`` (against ``value()``, when it has one), the ``analysis`` operator's
    adjoint, norm bound and conjugate prox (Moreau's identity too with ``h``, ``g = h ∘ L``)."""
    offers, runs = type(prior).capabilities(), []
    if "prox" in offers and type(prior).value is not Prior.value:
        runs.append(partial(check_prox, prior, shape, seed))
    if "analysis" in offers:
        runs += [partial(check_analysis_adjoint, prior, shape, seed), partial(check_analysis_norm, prior, shape, seed),
                 partial(check_conjugate_prox, prior, shape, seed, h=h)]
    return _all(runs)


def tiny_problem(physics: Physics, side: int = 32, seed: int = 0) -> tuple[Observation, torch.Tensor]:
    """A smooth random clean image ``(1, 3, side, side)`` in float64 and its observation through ``physics``."""
    coarse = torch.rand((1, 3, 4, 4), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    clean = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    return physics.simulate(clean, seed), clean


def _float64(scheme: Scheme, obs: Observation) -> tuple[Scheme, Observation]:
    return copy.deepcopy(scheme).double(), obs.to(torch.float64)


def _start(scheme: Scheme, ctx, seed: int) -> list[torch.Tensor]:
    """The leaves of the initial iterate, each moved by 1 % of its rms at random (off special points)."""
    parts = [t.detach() for t in leaves(scheme.init(ctx))]
    return [t + 0.01 * (size(t) / t.numel() ** 0.5 or 1.0) * randn(t.shape, seed + i) for i, t in enumerate(parts)]


def check_iterate(scheme: Scheme, obs: Observation, seed: int = 0) -> Check:
    """The iterate round-trips through its pytree (``leaves``/``rebuild``), ``step`` keeps its leaves' shapes,
    and every leaf changes the output now or after one step (else it is dead state, or unflatten misplaces it)."""
    scheme, obs = _float64(scheme, obs)
    with torch.no_grad():
        ctx = scheme.prepare(obs)
        like = scheme.init(ctx)
        parts = _start(scheme, ctx, seed)
        if not all(torch.equal(a, b) for a, b in zip(leaves(rebuild(like, parts)), parts)):
            return result("iterate", 1.0, 0.0, "leaves(rebuild(u, leaves(u))) differs from leaves(u)")
        shapes = [t.shape for t in parts]
        stepped = [t.shape for t in leaves(scheme.step(rebuild(like, parts), ctx))]
    if stepped != shapes:
        return result("iterate", 1.0, 0.0, f"step() turns leaves shaped {shapes} into {stepped}")
    parts = [t.requires_grad_(True) for t in parts]
    with torch.enable_grad():
        u = rebuild(like, parts)
        out = [scheme.output(u, ctx), scheme.output(scheme.step(u, ctx), ctx)]
        total = sum(torch.sum(o * randn(o.shape, seed + 100 + i)) for i, o in enumerate(out))
        grads = torch.autograd.grad(total, parts, allow_unused=True)
    dead = [i for i, g in enumerate(grads) if g is None or not bool(torch.any(g != 0))]
    detail = (f"leaves {dead} (of {len(parts)}) change the output neither now nor after one step" if dead else
              f"all {len(parts)} leaves of the iterate change the output now or after one step")
    return result("iterate", float(len(dead)), 0.0, detail)


def check_contraction(scheme: Scheme, obs: Observation, seed: int = 0, tolerance: float = 1e-6) -> Check:
    """``‖φ(u) − φ(v)‖ ≤ ω ‖u − v‖`` for random iterates near the start, ω = ``contraction(ctx)`` (nothing to
    check when it is NaN, unknown)."""
    scheme, obs = _float64(scheme, obs)
    with torch.no_grad():
        ctx = scheme.prepare(obs)
        omega, like = float(scheme.contraction(ctx)), scheme.init(ctx)
        if omega != omega:
            return result("contraction", 0.0, tolerance, "ω unknown (NaN): nothing to check")
        worst = 0.0
        for k in range(3):
            u, v = _start(scheme, ctx, seed + 10 * k), _start(scheme, ctx, seed + 10 * k + 5)
            fu, fv = leaves(scheme.step(rebuild(like, u), ctx)), leaves(scheme.step(rebuild(like, v), ctx))
            worst = max(worst, size([a - b for a, b in zip(fu, fv)]) / size([a - b for a, b in zip(u, v)]))
    return result("contraction", max(worst - omega, 0.0), tolerance,
                  f"the step is ω-Lipschitz, ω = {omega:.4g} (measured up to {worst:.4g})")


def check_gradient(scheme: Scheme, obs: Observation, clean: torch.Tensor, K: int = 1, tolerance: float = 1e-4,
                   max_restarts: int = 20000) -> Check:
    """The DEQ hypergradient of ``mean((x̂ − clean)²)`` matches central finite differences (x̂ converged in
    float64) on each learned θ entry; keep the problem tiny (at most :data:`MAX_FD_PARAMETERS` entries)."""
    scheme, obs = _float64(scheme, obs)
    count = sum(p.numel() for p in theta_parameters(scheme))
    if count > MAX_FD_PARAMETERS:
        raise ValueError(f"check_gradient: θ has {count} entries; finite differences take at most {MAX_FD_PARAMETERS}")
    clean = clean.to(torch.float64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return torch.mean((x - clean) ** 2)

    options = SolveOptions(K, 1, tol=1e-13, max_restarts=max_restarts, adjoint_tol=1e-13, adjoint_max_iter=2000)
    deq = flat_gradient(scheme, loss(solve(scheme, obs, options, "deq").x)).detach()
    fd = finite_difference_gradient(scheme, obs, K, loss, max_restarts=max_restarts)
    if not float(fd.norm()) > 0:
        return result("gradient", math.inf, tolerance, "θ does not move x̂ (zero finite differences): pick θ that does")
    error = float((deq - fd).norm() / fd.norm())
    return result("gradient", error, tolerance, f"DEQ hypergradient = finite differences over {count} θ entries")


def check_scheme(scheme: Scheme, clean: torch.Tensor | None = None, seed: int = 0, K: int = 1,
                 side: int = 32) -> list[Check]:
    """Iterate, contraction and gradient checks on ``clean`` (default: :func:`tiny_problem`'s image, ``side``²)
    observed through the scheme's physics."""
    if clean is None:
        obs, clean = tiny_problem(scheme.physics, side, seed)
    else:
        obs = scheme.physics.simulate(clean, seed)
    return _all([partial(check_iterate, scheme, obs, seed), partial(check_contraction, scheme, obs, seed),
                 partial(check_gradient, scheme, obs, clean, K)])
