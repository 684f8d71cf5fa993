"""Gradients at the fixed point: JFB, DEQ (implicit differentiation), finite differences, and the
quantities of the paper's error bounds (Lemma 1, Theorem 2).

The iterate ``u`` lives in the scheme's own coordinates and the image is ``x = out(u, θ)``, so for
a loss ``L(x)`` with ``a = ∂_u L(out(û, θ))`` (a VJP through the output map):

* DEQ (eq. 20): ``g = vᵀ ∂_θ Φ_K(û, θ) + ∂_θ L(out(û, θ))`` with ``v = a + ∂_u Φ_K(û)ᵀ v``;
* JFB (eq. 28): the same with ``v = a`` (``J_θ⁻¹ ≈ I``): one backpropagation through Φ_K at û;
* Lemma 1: ``‖g − g^JF‖ ≤ δ_K/(1 − δ_K) · ‖a‖ · ‖∂_θ Φ_K(û)‖₂``.

Gradients are flat vectors over the scheme's ``theta`` parameters, in their registration order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .hypergrad import truncated_unrolled
from .wavelets import Coefficients

Loss = Callable[[torch.Tensor], torch.Tensor]


def leaves(state) -> list[torch.Tensor]:
    """The tensors of an iterate (a tensor or wavelet :class:`Coefficients`)."""
    return [state.approx, *state.details] if isinstance(state, Coefficients) else [state]


def rebuild(like, tensors: list[torch.Tensor]):
    """Inverse of :func:`leaves`."""
    return Coefficients(tensors[0], tuple(tensors[1:])) if isinstance(like, Coefficients) else tensors[0]


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum(torch.sum(x * y) for x, y in zip(a, b))


def norm(a: list[torch.Tensor]) -> float:
    return math.sqrt(float(_dot(a, a).detach()))


def flatten_grads(grads, params) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def theta_parameters(scheme) -> list[torch.nn.Parameter]:
    """The parameters being learned (those that require a gradient), in registration order."""
    return [p for p in scheme.parameters() if p.requires_grad]


@torch.no_grad()
def fixed_point(scheme, ctx, u0, K: int, tol: float, max_restarts: int):
    """Restart Φ_K from ``u0`` until ``‖u_Kt − u_K(t−1)‖/‖u_Kt‖ ≤ tol``; returns ``(û, residual, restarts)``."""
    u, residual, done = u0, float("inf"), 0
    while done < max_restarts and residual > tol:
        new = truncated_unrolled(scheme, u, ctx, K)
        diff = [a - b for a, b in zip(leaves(new), leaves(u))]
        residual = norm(diff) / max(norm(leaves(new)), 1e-300)
        u, done = new, done + 1
    return u, residual, done


@dataclass
class Linearization:
    """Φ_K and the loss linearized at a point ``u``: the pieces every fixed-point gradient needs."""

    scheme: object
    params: list[torch.nn.Parameter]
    point: list[torch.Tensor]  # u (requires grad)
    image_loss: torch.Tensor  # L(out(u, θ))
    mapped: list[torch.Tensor]  # Φ_K(u, θ)

    def loss_gradients(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``(a = ∂_u L(out(u)), ∂_θ L(out(u, θ)))``."""
        grads = torch.autograd.grad(self.image_loss, self.point + self.params, retain_graph=True, allow_unused=True)
        n = len(self.point)
        return list(grads[:n]), flatten_grads(grads[n:], self.params)

    def vjp_u(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        """``∂_u Φ_K(u)ᵀ v``."""
        return list(torch.autograd.grad(self.mapped, self.point, v, retain_graph=True))

    def vjp_theta(self, v: list[torch.Tensor], create_graph: bool = False) -> torch.Tensor:
        """``∂_θ Φ_K(u)ᵀ v`` as a flat vector."""
        grads = torch.autograd.grad(
            self.mapped, self.params, v, retain_graph=True, allow_unused=True, create_graph=create_graph
        )
        return flatten_grads(grads, self.params)


def linearize(scheme, y: torch.Tensor, point, K: int, loss: Loss) -> Linearization:
    """Record Φ_K at ``point`` (detached) and the loss of ``out(point)``, with graphs in u and θ."""
    ctx = scheme.prepare(y)
    u = [t.detach().requires_grad_(True) for t in leaves(point)]
    state = rebuild(point, u)
    mapped = leaves(truncated_unrolled(scheme, state, ctx, K))
    return Linearization(scheme, theta_parameters(scheme), u, loss(scheme.output(state, ctx)), mapped)


@dataclass(frozen=True)
class AdjointSolve:
    """Solution of ``v = a + ∂_u Φ_Kᵀ v``: the vector, the relative residual reached, the iterations."""

    v: list[torch.Tensor]
    residual: float
    iterations: int


def solve_adjoint_fixed_point(lin: Linearization, a: list[torch.Tensor], tol: float, max_iter: int) -> AdjointSolve:
    """Neumann / fixed-point iteration ``v ← a + ∂_u Φ_Kᵀ v`` (converges at rate δ_K)."""
    v, residual, it = a, float("inf"), 0
    scale = max(norm(a), 1e-300)
    while it < max_iter and residual > tol:
        new = [ai + ji for ai, ji in zip(a, lin.vjp_u(v))]
        residual = norm([n - o for n, o in zip(new, v)]) / scale
        v, it = new, it + 1
    return AdjointSolve(v, residual, it)


def solve_adjoint_gmres(lin: Linearization, a: list[torch.Tensor], tol: float, max_iter: int, restart: int = 30):
    """GMRES(restart) on ``(I − ∂_u Φ_Kᵀ) v = a``, relative residual ``‖a − (I − Jᵀ)v‖/‖a‖ ≤ tol``."""
    shapes = [t.shape for t in a]
    sizes = [t.numel() for t in a]

    def split(x: torch.Tensor) -> list[torch.Tensor]:
        return [p.view(s) for p, s in zip(torch.split(x, sizes), shapes)]

    def op(x: torch.Tensor) -> torch.Tensor:
        return x - torch.cat([t.flatten() for t in lin.vjp_u(split(x))])

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
            coef = torch.linalg.lstsq(hess[: m + 2, : m + 1], e1.unsqueeze(1)).solution.squeeze(1)
            inner = float(torch.linalg.vector_norm(hess[: m + 2, : m + 1] @ coef - e1)) / b_norm
            if inner <= tol or hess[m + 1, m] <= 1e-300 or it >= max_iter:
                break
            basis.append(w / hess[m + 1, m])
        x = x + torch.stack(basis[: m + 1], dim=1) @ coef
        r = b - op(x)
        residual = float(torch.linalg.vector_norm(r)) / b_norm
    return AdjointSolve(split(x), residual, it)


ADJOINT_SOLVERS = {"fixed-point": solve_adjoint_fixed_point, "gmres": solve_adjoint_gmres}


def deq_gradient(lin: Linearization, solver: str = "gmres", tol: float = 1e-10, max_iter: int = 1000):
    """DEQ hypergradient at the linearization point (assumed a fixed point); ``(g, AdjointSolve)``."""
    a, direct = lin.loss_gradients()
    solved = ADJOINT_SOLVERS[solver](lin, a, tol, max_iter)
    return lin.vjp_theta(solved.v) + direct, solved


def jfb_gradient(lin: Linearization) -> torch.Tensor:
    """JFB hypergradient ``aᵀ ∂_θ Φ_K(û) + ∂_θ L(out(û, θ))``."""
    a, direct = lin.loss_gradients()
    return lin.vjp_theta(a) + direct


def jacobian_u_norm(lin: Linearization, iterations: int = 50, seed: int = 0) -> float:
    """Measured local Lipschitz constant ``‖∂_u Φ_K(u)‖₂`` by power iteration on ``JᵀJ``.

    ``J w`` is obtained from the VJP by double backpropagation: ``J w = ∂_z ⟨Jᵀ z, w⟩``.
    """
    g = torch.Generator().manual_seed(seed)
    w = [torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device) for t in lin.point]
    z = [torch.zeros_like(t, requires_grad=True) for t in lin.mapped]
    jt_z = torch.autograd.grad(lin.mapped, lin.point, z, create_graph=True)
    sigma = 0.0
    for _ in range(iterations):
        scale = norm(w)
        if scale == 0:
            return 0.0
        w = [t / scale for t in w]
        jw = torch.autograd.grad(jt_z, z, w, retain_graph=True)
        w = lin.vjp_u(list(jw))
        sigma = math.sqrt(norm(w))
    return sigma


def jacobian_theta_norm(lin: Linearization) -> float:
    """Exact ``‖∂_θ Φ_K(u)‖₂`` from the d×d Gram matrix ``J_θᵀ J_θ`` (d is small)."""
    z = [torch.zeros_like(t, requires_grad=True) for t in lin.mapped]
    jt_z = lin.vjp_theta(z, create_graph=True)
    d = jt_z.numel()
    gram = torch.zeros(d, d, dtype=jt_z.dtype)
    for i in range(d):
        column = torch.autograd.grad(jt_z[i], z, retain_graph=True)  # J_θ e_i
        gram[:, i] = lin.vjp_theta(list(column)).cpu()
    return math.sqrt(max(float(torch.linalg.eigvalsh((gram + gram.T) / 2).max()), 0.0))


def lemma1_bound(delta: float, loss_grad_norm: float, theta_jacobian_norm: float) -> float | None:
    """``δ/(1 − δ) · ‖∂L‖ · ‖∂_θ Φ_K‖₂`` (None when δ ≥ 1: no contraction, no bound)."""
    if not delta < 1:
        return None
    return delta / (1 - delta) * loss_grad_norm * theta_jacobian_norm


@torch.no_grad()
def _loss_at_equilibrium(scheme, y, K, loss, tol, max_restarts) -> float:
    ctx = scheme.prepare(y)
    u, _, _ = fixed_point(scheme, ctx, scheme.init(ctx), K, tol, max_restarts)
    return float(loss(scheme.output(u, ctx)))


def finite_difference_gradient(
    scheme, y: torch.Tensor, K: int, loss: Loss, h: float = 1e-5, tol: float = 1e-14, max_restarts: int = 20000
) -> torch.Tensor:
    """Central differences of ``θ ↦ L(x̂_θ)`` on each raw parameter entry, x̂ converged to ``tol``."""
    params = theta_parameters(scheme)
    out = []
    for p in params:
        flat = p.data.view(-1)
        for i in range(flat.numel()):
            old = float(flat[i])
            values = []
            for shift in (h, -h):
                flat[i] = old + shift
                values.append(_loss_at_equilibrium(scheme, y, K, loss, tol, max_restarts))
            flat[i] = old
            out.append((values[0] - values[1]) / (2 * h))
    return torch.tensor(out, dtype=torch.float64)


def deq_at_equilibrium(scheme, y: torch.Tensor, K: int, loss: Loss, tol: float = 1e-6, max_iter: int = 500):
    """DEQ hypergradient of ``L(x̂_θ)``: fixed point to ``tol``, then GMRES to ``tol``; flat vector."""
    with torch.no_grad():
        ctx = scheme.prepare(y)
        u_hat, _, _ = fixed_point(scheme, ctx, scheme.init(ctx), K, tol, max_iter)
    gradient, _ = deq_gradient(linearize(scheme, y, u_hat, K, loss), "gmres", tol, max_iter)
    return gradient
