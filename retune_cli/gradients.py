"""compare-grads workflow: every hypergradient of one problem, against DEQ and finite differences.

θ is a checkpoint's or a preset's initial one; the clean image (a built-in one by default) is
center-cropped and degraded with the physics and ``seed`` exactly as ``retune restore --simulate``
does. Gradients are with respect to the raw (log-domain) parameters, flattened in checkpoint order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import learned_parameters
from .config import Config
from .core import implicit
from .core.hypergrad import solve
from .core.memory import saved_tensor_bytes
from .core.physics import simulate
from .data import sample_dir
from .errors import InputError
from .images import read_image

DEFAULT_IMAGE = "astronaut.png"


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


def _center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if crop > min(h, w):
        raise InputError(f"--crop {crop} is larger than the image ({w}×{h})")
    top, left = (h - crop) // 2, (w - crop) // 2
    return x[..., top : top + crop, left : left + crop]


def _timed(fn: Callable, *args) -> tuple:
    """``(fn(*args), seconds, bytes saved for backward)``."""
    start = time.perf_counter()
    with saved_tensor_bytes() as saved:
        out = fn(*args)
    return out, time.perf_counter() - start, saved[0]


def _at_fixed_point(gradient: Callable, scheme, y, u_hat, K: int, loss, *args):
    """Record Φ_K at û (the part of the cost and memory that JFB and DEQ share), then ``gradient``."""
    lin = implicit.linearize(scheme, y, u_hat, K, loss)
    return lin, gradient(lin, *args)


def unrolled_gradient(scheme, y: torch.Tensor, K: int, T: int, mode: str, loss) -> torch.Tensor:
    """Flat gradient of ``L(x_KT)`` with the ``retune`` or ``unrolled`` graph."""
    params = implicit.theta_parameters(scheme)
    grads = torch.autograd.grad(loss(solve(scheme, y, K, T, mode)), params, allow_unused=True)
    return implicit.flatten_grads(grads, params)


def _theta_names(scheme) -> list[str]:
    return [f"{name}[{i}]" for name, t in learned_parameters(scheme).items() for i in range(t.numel())]


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
    on_progress: Callable[[str], None] | None = None,
) -> Comparison:
    """Table of DEQ, JFB, ReTune, unrolled and finite-difference hypergradients (see module doc)."""
    if min(Ks) < 1 or min(Ts) < 1:
        raise InputError("--K and --T values must be at least 1")
    say = on_progress or (lambda _: None)
    scheme = scheme.to(dtype)
    device = next(scheme.parameters()).device
    clean = _center_crop(read_image(image or sample_dir() / DEFAULT_IMAGE), crop).unsqueeze(0).to(device, dtype)
    with torch.no_grad():
        y = simulate(scheme.physics, clean, seed)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return torch.mean((x - clean) ** 2)

    result = Comparison(_theta_names(scheme))
    say("fixed point")
    ctx = scheme.prepare(y)
    u0 = scheme.init(ctx)
    u_hat, residual, restarts = implicit.fixed_point(
        scheme, ctx, u0, max(Ks), 1e-14 if dtype == torch.float64 else 1e-7, 100000
    )
    distance = implicit.norm([a - b for a, b in zip(implicit.leaves(u_hat), implicit.leaves(u0))])
    omega = float(scheme.contraction(ctx).detach())

    say("DEQ")
    (lin, (g_deq, solved)), seconds, saved = _timed(
        _at_fixed_point, implicit.deq_gradient, scheme, y, u_hat, min(Ks), loss, solver, tol
    )
    result.solver = {
        "name": solver,
        "tol": tol,
        "residual": solved.residual,
        "iterations": solved.iterations,
        "fixed_point_residual": residual,
        "fixed_point_restarts": restarts,
    }
    say("finite differences")
    start = time.perf_counter()
    fd = implicit.finite_difference_gradient(scheme, y, max(Ks), loss).to(g_deq)
    fd_seconds = time.perf_counter() - start
    result.gradients = {"deq": g_deq.tolist(), "fd": fd.tolist()}

    def row(method: str, K, T, g: torch.Tensor, seconds: float, peak: int, bound=None, **extra) -> None:
        result.rows.append(
            {
                "method": method,
                "K": K,
                "T": T,
                "gradient": g.tolist(),
                "rel_err_deq": float((g - g_deq).norm() / g_deq.norm()),
                "rel_err_fd": float((g - fd).norm() / fd.norm()),
                "cosine_deq": float(torch.nn.functional.cosine_similarity(g, g_deq, dim=0)),
                "bound": bound,
                "seconds": seconds,
                "peak_bytes": peak,
                **extra,
            }
        )

    row("deq", min(Ks), None, g_deq, seconds, saved)
    row("fd", None, None, fd, fd_seconds, 0)
    for K in Ks:
        say(f"K = {K}")
        (lin, g_jfb), seconds, saved = _timed(_at_fixed_point, implicit.jfb_gradient, scheme, y, u_hat, K, loss)
        delta = omega**K
        a, _ = lin.loss_gradients()
        theta_norm = implicit.jacobian_theta_norm(lin)
        result.delta.append({"K": K, "theory": delta, "measured": implicit.jacobian_u_norm(lin)})
        bound = implicit.lemma1_bound(delta, implicit.norm(a), theta_norm)
        row("jfb", K, None, g_jfb, seconds, saved, bound, abs_err_deq=float((g_jfb - g_deq).norm()))
        for T in Ts:
            for method in ("retune", "unrolled"):
                g, seconds, saved = _timed(unrolled_gradient, scheme, y, K, T, method, loss)
                row(method, K, T, g, seconds, saved, restart_term=delta**T * distance)
    return result
