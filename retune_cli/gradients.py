"""compare-grads workflow: every hypergradient of one problem, against DEQ and finite differences.

θ is a checkpoint's or a preset's initial one; the clean image (a built-in one by default) is
center-cropped and degraded with the physics and ``seed`` exactly as ``retune restore --simulate``
does. Gradients are with respect to the raw (log-domain) parameters, flattened in checkpoint order.
Every registered gradient mode is compared: the equilibrium ones (jfb, deq) once per K, from the
fixed point û; the others (retune, unrolled) per (K, T), from ``u_0``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import learned_parameters
from .config import Config
from .core import implicit
from .core.adjoint import ADJOINT_SOLVERS
from .core.hypergrad import GRADIENT_MODES, Solution, SolveOptions, restarts, solve
from .core.memory import saved_tensor_bytes
from .core.pytree import leaves, norm
from .core.schemes import NoValidStep
from .data import sample_dir
from .errors import InputError
from .files import write_text
from .images import read_image
from .limits import check_cost
from .memory_check import check_fits, graph_bytes

DEFAULT_IMAGE = "astronaut.png"
FD_MAX_PARAMETERS = 128  # finite differences cost 2·d fixed-point solves: beyond this, they are skipped


@dataclass
class Comparison:
    theta_names: list[str]
    delta: list[dict] = field(default_factory=list)
    gradients: dict[str, list[float]] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    solver: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "theta_names": self.theta_names,
            "delta": self.delta,
            "gradients": self.gradients,
            "rows": self.rows,
            "solver": self.solver,
        }

    def write_json(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_json(), indent=2))


def _center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if not 1 <= crop <= min(h, w):
        raise InputError(f"--crop {crop} must be at least 1 and at most the image's side ({w}×{h})")
    top, left = (h - crop) // 2, (w - crop) // 2
    return x[..., top : top + crop, left : left + crop]


def mode_gradient(scheme, obs, options: SolveOptions, mode: str, loss, start=None) -> tuple[torch.Tensor, Solution]:
    """The flat hypergradient of ``loss`` under gradient ``mode`` (the registry's), with its solution."""
    solution = solve(scheme, obs, options, mode, start)
    return implicit.flat_gradient(scheme, loss(solution.x)), solution


def _timed(fn: Callable, *args) -> tuple:
    """``(fn(*args), seconds, bytes saved for backward)``."""
    start = time.perf_counter()
    with saved_tensor_bytes() as saved:
        out = fn(*args)
    return out, time.perf_counter() - start, saved[0]


def _theta_names(scheme) -> list[str]:
    return [f"{name}[{i}]" for name, t in learned_parameters(scheme).items() for i in range(t.numel())]


@dataclass
class Problem:
    """One compare-grads problem: the scheme, the observation, the loss, the fixed point û."""

    scheme: torch.nn.Module
    obs: object
    loss: Callable
    u0: object
    u_hat: object
    omega: float
    fixed_point: dict
    tol: float  # the restart residual û was solved to


def _fixed_point_tol(dtype: torch.dtype) -> float:
    """û's restart residual: near float64's precision; in float32, above what Anderson's residual bound
    (K·‖φ(x) − x‖/‖φ(x)‖ at rounding) can reach."""
    return 1e-14 if dtype == torch.float64 else 1e-6


def _problem(scheme, image: Path | None, crop: int, seed: int, dtype: torch.dtype, K: int, source: str,
             tol: float) -> Problem:
    """The problem, its fixed point û found to machine precision; a θ (of ``source``) that leaves the
    scheme no valid step, or no finite fixed point, is refused."""
    device = next(scheme.parameters()).device
    clean = _center_crop(read_image(image or sample_dir() / DEFAULT_IMAGE), crop).unsqueeze(0).to(device, dtype)
    with torch.no_grad():
        obs = scheme.physics.simulate(clean, seed)
        try:
            ctx = scheme.prepare(obs)
        except NoValidStep as e:  # θ so extreme that no valid step exists
            raise InputError(f"{source}: its θ leaves the scheme no valid step ({e})") from None
        except ValueError as e:  # what the physics or prior refuses
            raise InputError(f"{source}: {e}") from None
        u0 = scheme.init(ctx)
        u_hat, stats = restarts(scheme, ctx, u0, K, tol, 100000, "anderson")
        if not all(bool(torch.all(torch.isfinite(leaf))) for leaf in leaves(u_hat)):
            raise InputError(f"{source}: its θ gives a non-finite fixed point; θ is out of range")
        omega = float(scheme.contraction(ctx).detach())

    def loss(x: torch.Tensor) -> torch.Tensor:
        return torch.mean((x - clean) ** 2)

    stats_dict = {"fixed_point_residual": stats.residual, "fixed_point_restarts": stats.iterations}
    return Problem(scheme, obs, loss, u0, u_hat, omega, stats_dict, tol)


class _Rows:
    """Rows of the table, each judged against the DEQ and finite-difference gradients."""

    def __init__(self, result: Comparison, g_deq: torch.Tensor, fd: torch.Tensor | None,
                 on_row: Callable[[dict], None]):
        self.result, self.g_deq, self.fd, self.on_row = result, g_deq, fd, on_row

    def add(self, method: str, K, T, g: torch.Tensor, seconds: float, peak: int, bound=None, **extra) -> None:
        g_deq, fd = self.g_deq, self.fd
        self.result.rows.append({
            "method": method, "K": K, "T": T, "gradient": g.tolist(),
            "rel_err_deq": float((g - g_deq).norm() / g_deq.norm()),
            "rel_err_fd": None if fd is None else float((g - fd).norm() / fd.norm()),
            "cosine_deq": float(torch.nn.functional.cosine_similarity(g, g_deq, dim=0)),
            "bound": bound, "seconds": seconds, "peak_bytes": peak, **extra,
        })
        self.on_row(self.result.rows[-1])


def _bounds(p: Problem, K: int, result: Comparison) -> float | None:
    """δ_K in theory (ω^K) and measured, appended to ``result.delta``; the Lemma-1 bound."""
    lin = implicit.linearize(p.scheme, p.obs, p.u_hat, K, p.loss)
    delta = p.omega**K
    result.delta.append({"K": K, "theory": delta, "measured": implicit.jacobian_u_norm(lin)})
    return implicit.lemma1_bound(delta, norm(lin.loss_gradient()), implicit.jacobian_theta_norm(lin))


def _accelerated_rows(p: Problem, K: int, T: int, rows: _Rows) -> None:
    """ReTune from Anderson-accelerated restarts: the row ``retune-anderson``; its ``restart_term`` is
    ``δ_K‖û − ũ‖`` with ũ the point the recorded Φ_K starts from."""
    ctx = p.scheme.prepare(p.obs)
    point, _ = restarts(p.scheme, ctx, p.u0, K, 0.0, T - 1, "anderson")
    distance = norm([a - b for a, b in zip(leaves(p.u_hat), leaves(point))])
    o = SolveOptions(K, T, accelerate="anderson")
    (g, _), seconds, saved = _timed(mode_gradient, p.scheme, p.obs, o, "retune", p.loss)
    rows.add("retune-anderson", K, T, g, seconds, saved, restart_term=p.omega**K * distance)


def _rows_for_K(p: Problem, K: int, Ts: list[int], options: dict, rows: _Rows, result: Comparison, skip=(),
                accelerate: bool = False) -> None:
    """The equilibrium modes once (from û), then the restart modes per T (from u_0), and with
    ``accelerate`` ReTune from accelerated restarts; ``skip``: done already."""
    bound = _bounds(p, K, result)
    distance = norm([a - b for a, b in zip(leaves(p.u_hat), leaves(p.u0))])
    for method in (m for m, mode in GRADIENT_MODES.items() if mode.equilibrium and m not in skip):
        o = SolveOptions(K, 1, **options)
        (g, _), seconds, saved = _timed(mode_gradient, p.scheme, p.obs, o, method, p.loss, p.u_hat)
        extra = {"abs_err_deq": float((g - rows.g_deq).norm())} if method == "jfb" else {}
        rows.add(method, K, None, g, seconds, saved, bound if method == "jfb" else None, **extra)
    for T in Ts:
        for method in (m for m, mode in GRADIENT_MODES.items() if not mode.equilibrium):
            (g, _), seconds, saved = _timed(mode_gradient, p.scheme, p.obs, SolveOptions(K, T), method, p.loss)
            rows.add(method, K, T, g, seconds, saved, restart_term=(p.omega**K) ** T * distance)
        if accelerate:
            _accelerated_rows(p, K, T, rows)


def _finite_differences(p: Problem, K: int, say: Callable[[str], None]) -> tuple[torch.Tensor | None, float]:
    """Central differences from û (Anderson-accelerated), or ``None`` when θ has more than
    ``FD_MAX_PARAMETERS`` entries (2·d solves); their time in seconds."""
    if sum(q.numel() for q in implicit.theta_parameters(p.scheme)) > FD_MAX_PARAMETERS:
        return None, 0.0
    say("finite differences")
    start = time.perf_counter()
    fd = implicit.finite_difference_gradient(p.scheme, p.obs, K, p.loss, tol=p.tol, start=p.u_hat)
    return fd, time.perf_counter() - start


def _check_options(Ks: list[int], Ts: list[int], solver: str, tol: float, fp_tol: float) -> float:
    """The options refused in one line each; the fixed-point tolerance."""
    if min(Ks) < 1 or min(Ts) < 1:
        raise InputError("--K and --T values must be at least 1")
    if solver not in ADJOINT_SOLVERS:
        raise InputError(f"--solver must be one of {', '.join(ADJOINT_SOLVERS)}, not {solver!r}")
    if not 0 <= tol < 1:
        raise InputError(f"--tol (the DEQ adjoint's relative residual) must be in [0, 1), not {tol}")
    if not 0 < fp_tol < 1:
        raise InputError(f"--fixed-point-tol must be in (0, 1), not {fp_tol}")
    return fp_tol


def compare_gradients(
    scheme,
    config: Config,
    image: Path | None = None,
    crop: int = 64,
    seed: int = 0,
    Ks: list[int] = (1, 5, 10),
    Ts: list[int] = (1, 2, 5, 10, 20),
    dtype: torch.dtype = torch.float64,
    solver: str = "gmres",
    tol: float = 1e-12,
    on_progress: Callable[[str, int, int], None] | None = None,
    source: str = "θ",
    accelerate: bool = False,
    fixed_point_tol: float | None = None,
) -> Comparison:
    """Table of every gradient mode and finite differences (see module doc); ``source`` names where θ
    comes from (a checkpoint, a preset) in messages; ``accelerate`` adds ``retune-anderson`` rows;
    ``on_progress(stage, rows done, rows in all)`` as it goes; ``fixed_point_tol``: û's restart residual
    (default :func:`_fixed_point_tol`)."""
    fp_tol = _check_options(Ks, Ts, solver, tol, _fixed_point_tol(dtype) if fixed_point_tol is None
                            else fixed_point_tol)
    iterations = max(Ks) * max(Ts)  # the largest unrolled row keeps every iterate of a crop² image
    check_cost(f"--K {max(Ks)} × --T {max(Ts)} on a --crop {crop} image", iterations, iterations * 3 * crop**2,
               dtype.itemsize)
    equilibrium = sum(mode.equilibrium for mode in GRADIENT_MODES.values())
    total = 1 + len(Ks) * equilibrium + len(Ks) * len(Ts) * (len(GRADIENT_MODES) - equilibrium + accelerate)
    report = on_progress or (lambda what, done, total: None)
    report("fixed point", 0, total)
    p = _problem(scheme.to(dtype), image, crop, seed, dtype, max(Ks), source, fp_tol)
    fixed, per_step = graph_bytes(p.scheme, p.obs, SolveOptions())
    check_fits(fixed + per_step * iterations, p.obs.y.device, f"backpropagating the unrolled row --K {max(Ks)} × "
               f"--T {max(Ts)} on a --crop {crop} image", lambda room: "lower --K, --T or --crop")
    result = Comparison(_theta_names(p.scheme))

    def say(what: str) -> None:
        report(what, len(result.rows), total)

    options = {"tol": fp_tol, "max_restarts": 100000,
               "adjoint_solver": solver, "adjoint_tol": tol, "adjoint_max_iter": 1000}
    say("DEQ")
    o = SolveOptions(min(Ks), 1, **options)
    (g_deq, solved), seconds, saved = _timed(mode_gradient, p.scheme, p.obs, o, "deq", p.loss, p.u_hat)
    result.solver = {"name": solver, "tol": tol, "residual": solved.adjoint.residual,
                     "iterations": solved.adjoint.iterations, **p.fixed_point}
    fd, fd_seconds = _finite_differences(p, max(Ks), say)
    fd = None if fd is None else fd.to(g_deq)
    result.gradients = {"deq": g_deq.tolist()} | ({} if fd is None else {"fd": fd.tolist()})
    result.solver["finite_differences"] = fd is not None
    rows = _Rows(result, g_deq, fd, lambda r: say(f"{r['method']} K={r['K'] or '–'} T={r['T'] or '–'}"))
    rows.add("deq", min(Ks), None, g_deq, seconds, saved)
    if fd is not None:
        rows.add("fd", None, None, fd, fd_seconds, 0)
    for K in Ks:
        say(f"K = {K}")
        _rows_for_K(p, K, list(Ts), options, rows, result, ("deq",) if K == min(Ks) else (), accelerate)
    return result
