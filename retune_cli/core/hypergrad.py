"""Gradient modes: how much of ``x = out(Φ_K^T(u_0, θ))`` autograd records (paper §3, Algorithm 1).

Every mode returns a :class:`Solution` whose image ``x`` carries a graph such that
``loss(x).backward()`` yields that mode's hypergradient; modes are registered by name
(:data:`GRADIENT_MODES`) and used alike by training, compare-grads and the benchmarks:

* ``retune``: T − 1 restarts without a graph (or as many steps, Anderson-accelerated: :func:`restarts`), then one
  plain ``Φ_K`` with it from the point reached:
  ``g^R(θ) = ∂_x L(x_KT)ᵀ ∂_θ Φ_K(x_K(T−1), θ)`` (eq. 25); memory of K steps whatever T;
* ``unrolled``: backpropagation through all K·T steps from ``u_0(θ)`` (T = 1: the same as retune);
* ``jfb``: restarts to the fixed point (``tol``) without a graph, then one ``Φ_K`` with it from û — at most
  ``max_restarts`` in all, as :func:`restore` does: ``g^JF = ∂_x L(x̂)ᵀ ∂_θ Φ_K(û, θ)`` (eq. 28);
* ``deq``: the same forward; the backward solves ``v = a + ∂_u Φ_K(û)ᵀ v`` with the configured adjoint
  solver (``a`` the incoming gradient) before going through ``∂_θ Φ_K(û)``: the exact implicit
  gradient (eq. 20) at the fixed point.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch.autograd.function import once_differentiable

from .adjoint import ADJOINT_SOLVERS, AdjointSolve
from .fixed_point import ACCELERATIONS, FixedPointStats, anderson, fixed_point, relative_residual
from .physics import Observation, as_observation
from .pytree import leaves, rebuild
from .scheme import Scheme


@dataclass(frozen=True)
class SolveOptions:
    """K, T, and the tolerances of the fixed-point modes (forward restarts and adjoint solve)."""

    K: int = 10
    T: int = 10
    tol: float = 1e-4  # jfb/deq: relative residual of the restarts
    max_restarts: int = 200  # jfb/deq: restarts in all, the recorded one included
    adjoint_solver: str = "gmres"
    adjoint_tol: float = 1e-6
    adjoint_max_iter: int = 200
    accelerate: str = "none"  # the graph-free restarts: none | anderson

    def __post_init__(self) -> None:
        if self.K < 1 or self.T < 1 or self.max_restarts < 1:
            raise ValueError("K, T and max_restarts must be at least 1")
        if self.accelerate not in ACCELERATIONS:
            raise ValueError(f"accelerate must be one of {', '.join(ACCELERATIONS)}")
        if self.adjoint_solver not in ADJOINT_SOLVERS:
            raise ValueError(f"adjoint_solver must be one of {', '.join(ADJOINT_SOLVERS)}")


@dataclass
class Solution:
    """The restored image (with the mode's graph), the restarts of Φ_K applied in all and the relative
    residual of the last one; ``adjoint`` is the deq backward's solve, once it has run."""

    x: torch.Tensor
    restarts: int
    last_residual: torch.Tensor | float  # on the device until :attr:`residual` reads it
    adjoint_solves: list[AdjointSolve] = field(default_factory=list)

    @property
    def residual(self) -> float:
        return float(self.last_residual)

    @property
    def adjoint(self) -> AdjointSolve | None:
        return self.adjoint_solves[-1] if self.adjoint_solves else None


Mode = Callable[[Scheme, object, object, SolveOptions], Solution]
GRADIENT_MODES: dict[str, Mode] = {}


def register_gradient(name: str, equilibrium: bool = False) -> Callable[[Mode], Mode]:
    """Decorator: make a mode ``(scheme, ctx, u0, options) -> Solution`` available as ``name``;
    ``equilibrium``: it restarts to the fixed point (T plays no role)."""

    def decorate(mode: Mode) -> Mode:
        mode.equilibrium = equilibrium
        GRADIENT_MODES[name] = mode
        return mode

    return decorate


def restarts(scheme: Scheme, ctx, u0, K: int, tol: float, max_restarts: int, accelerate: str = "none",
             on_restart: Callable[[int], None] | None = None) -> tuple[object, FixedPointStats]:
    """Restarts of ``Φ_K`` from ``u0`` without a graph until the restart residual is ≤ ``tol`` or
    ``max_restarts`` were done (``tol = 0``: all of them); ``on_restart(t)`` after restart t.

    ``accelerate="anderson"``: Anderson acceleration of the elementary step φ itself (extrapolating after
    every step converges in several times fewer steps than extrapolating after every K), in blocks of K
    steps counted as restarts; the residual is the bound ``Σ_{i<K} ω^i ‖φ(x) − x‖/‖φ(x)‖ ≥ ‖Φ_K(x) − x‖/…``
    (``K‖φ(x) − x‖/…`` when ω is unknown or 1)."""
    if accelerate == "anderson":
        omega = float(scheme.contraction(ctx).detach())
        scale = (1 - omega**K) / (1 - omega) if 0 <= omega < 1 else float(K)
        return anderson(partial(scheme.step, ctx=ctx), u0, tol, max_restarts, block=K, scale=scale,
                        on_block=on_restart)
    if accelerate != "none":
        raise ValueError(f"accelerate must be one of {', '.join(ACCELERATIONS)}, not {accelerate!r}")
    step = partial(scheme.restart, ctx=ctx, K=K)
    if on_restart is not None:
        done = itertools.count(1)
        step = partial(_reported, step, lambda: on_restart(next(done)))
    return fixed_point(step, u0, tol, max_restarts)


def _reported(step: Callable, report: Callable[[], None], u):
    """``step(u)``, then ``report()``."""
    new = step(u)
    report()
    return new


def _finish(scheme: Scheme, ctx, before, after, restarts: int, **extra) -> Solution:
    """The solution after the last (recorded) restart ``before → after``."""
    return Solution(scheme.output(after, ctx), restarts, relative_residual(after, before), **extra)


@register_gradient("retune")
def retune(scheme: Scheme, ctx, u0, o: SolveOptions) -> Solution:
    u, stats = restarts(scheme, ctx, u0, o.K, 0.0, o.T - 1, o.accelerate)
    return _finish(scheme, ctx, u, scheme.restart(u, ctx, o.K), stats.iterations + 1)


@register_gradient("unrolled")
def unrolled(scheme: Scheme, ctx, u0, o: SolveOptions) -> Solution:
    before = after = u0
    for _ in range(o.T):
        before, after = after, scheme.restart(after, ctx, o.K)
    return _finish(scheme, ctx, before, after, o.T)


def _equilibrium(scheme: Scheme, ctx, u0, o: SolveOptions):
    """û: restarts to ``tol`` without a graph, detached; at most ``max_restarts − 1``, so that with the
    recorded restart that follows the solve does at most ``max_restarts``."""
    u, stats = restarts(scheme, ctx, u0, o.K, o.tol, o.max_restarts - 1, o.accelerate)
    return [t.detach() for t in leaves(u)], stats.iterations, u


@register_gradient("jfb", equilibrium=True)
def jfb(scheme: Scheme, ctx, u0, o: SolveOptions) -> Solution:
    point, done, like = _equilibrium(scheme, ctx, u0, o)
    u_hat = rebuild(like, point)
    return _finish(scheme, ctx, u_hat, scheme.restart(u_hat, ctx, o.K), done + 1)


class _ImplicitBackward(torch.autograd.Function):
    """Identity forward; backward replaces the incoming gradient ``a`` by the adjoint solution ``v``."""

    @staticmethod
    def forward(ctx, solve: Callable, *tensors: torch.Tensor):
        ctx.solve = solve
        return tuple(t.clone() for t in tensors)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: torch.Tensor):
        solve, ctx.solve = ctx.solve, None  # release the closure (and Φ_K's graph) once used
        return (None, *solve(list(grads)))


@register_gradient("deq", equilibrium=True)
def deq(scheme: Scheme, ctx, u0, o: SolveOptions) -> Solution:
    point, done, like = _equilibrium(scheme, ctx, u0, o)
    point = [t.requires_grad_(True) for t in point]
    with torch.enable_grad():
        mapped = leaves(scheme.restart(rebuild(like, point), ctx, o.K))
    solves: list[AdjointSolve] = []  # shared with the Solution, not the Solution itself: no reference cycle

    def vjp(v: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(torch.autograd.grad(mapped, point, v, retain_graph=True))

    def solve_adjoint(a: list[torch.Tensor]) -> list[torch.Tensor]:
        solves.append(ADJOINT_SOLVERS[o.adjoint_solver](vjp, a, o.adjoint_tol, o.adjoint_max_iter))
        return solves[-1].v

    implicit = rebuild(like, list(_ImplicitBackward.apply(solve_adjoint, *mapped)))
    return _finish(scheme, ctx, rebuild(like, point), implicit, done + 1, adjoint_solves=solves)


def solve(scheme: Scheme, obs: Observation | torch.Tensor, options: SolveOptions, mode: str = "retune",
          start=None) -> Solution:
    """Restore ``obs`` with ``scheme`` and record the graph of gradient ``mode`` (see module doc);
    ``start`` replaces ``u_0`` (a warm start, e.g. a known fixed point)."""
    if mode not in GRADIENT_MODES:
        raise ValueError(f"gradient must be one of {', '.join(GRADIENT_MODES)}, not {mode!r}")
    ctx = scheme.prepare(as_observation(obs))
    return GRADIENT_MODES[mode](scheme, ctx, scheme.init(ctx) if start is None else start, options)


@torch.no_grad()
def restore(scheme: Scheme, obs: Observation | torch.Tensor, K: int, max_restarts: int, tol: float = 0.0,
            start=None, accelerate: str = "none", on_restart: Callable[[int], None] | None = None) -> Solution:
    """Restart ``Φ_K`` until the relative residual is ≤ ``tol`` or ``max_restarts`` restarts were done
    (see :func:`restarts` for ``accelerate`` and ``on_restart``)."""
    if K < 1 or max_restarts < 1:
        raise ValueError("K and the number of restarts must be at least 1")
    ctx = scheme.prepare(as_observation(obs))
    u0 = scheme.init(ctx) if start is None else start
    u, stats = restarts(scheme, ctx, u0, K, tol, max_restarts, accelerate, on_restart)
    return Solution(scheme.output(u, ctx), stats.iterations, stats.last)
