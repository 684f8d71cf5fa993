"""Quantities at the fixed point for compare-grads: the linearization of Φ_K, the measured δ_K,
``‖∂_θ Φ_K‖₂``, the paper's Lemma-1 bound, and finite differences (the ground truth).

The iterate ``u`` lives in the scheme's own coordinates and the image is ``x = out(u, θ)``, so for a
loss ``L(x)`` with ``a = ∂_u L(out(û, θ))`` (a VJP through the output map), Lemma 1 reads
``‖g − g^JF‖ ≤ δ_K/(1 − δ_K) · ‖a‖ · ‖∂_θ Φ_K(û)‖₂``. The gradients themselves come from the
gradient modes (:mod:`.hypergrad`). Gradients are flat vectors over the scheme's learned parameters,
in their registration order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .hypergrad import restarts
from .physics import Observation, as_observation
from .pytree import leaves, norm, rebuild

Loss = Callable[[torch.Tensor], torch.Tensor]


def flatten_grads(grads, params) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def theta_parameters(scheme) -> list[torch.nn.Parameter]:
    """The parameters being learned (those that require a gradient), in registration order."""
    return [p for p in scheme.parameters() if p.requires_grad]


def flat_gradient(scheme, value: torch.Tensor) -> torch.Tensor:
    """``∂ value / ∂θ`` as one flat vector over :func:`theta_parameters`."""
    params = theta_parameters(scheme)
    return flatten_grads(torch.autograd.grad(value, params, allow_unused=True), params)


@dataclass
class Linearization:
    """Φ_K and the loss linearized at a point ``u``: what the bounds at the fixed point need."""

    params: list[torch.nn.Parameter]
    point: list[torch.Tensor]  # u (requires grad)
    image_loss: torch.Tensor  # L(out(u, θ))
    mapped: list[torch.Tensor]  # Φ_K(u, θ)

    def loss_gradient(self) -> list[torch.Tensor]:
        """``a = ∂_u L(out(u))`` (zero on leaves the output does not use, e.g. a primal–dual's dual)."""
        return list(torch.autograd.grad(self.image_loss, self.point, retain_graph=True, materialize_grads=True))

    def vjp_u(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        """``∂_u Φ_K(u)ᵀ v``."""
        return list(torch.autograd.grad(self.mapped, self.point, v, retain_graph=True))

    def vjp_theta(self, v: list[torch.Tensor], create_graph: bool = False) -> torch.Tensor:
        """``∂_θ Φ_K(u)ᵀ v`` as a flat vector."""
        grads = torch.autograd.grad(
            self.mapped, self.params, v, retain_graph=True, allow_unused=True, create_graph=create_graph
        )
        return flatten_grads(grads, self.params)


def linearize(scheme, obs: Observation | torch.Tensor, point, K: int, loss: Loss) -> Linearization:
    """Record Φ_K at ``point`` (detached) and the loss of ``out(point)``, with graphs in u and θ."""
    ctx = scheme.prepare(as_observation(obs))
    u = [t.detach().requires_grad_(True) for t in leaves(point)]
    state = rebuild(point, u)
    mapped = leaves(scheme.restart(state, ctx, K))
    return Linearization(theta_parameters(scheme), u, loss(scheme.output(state, ctx)), mapped)


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
def _loss_at_equilibrium(scheme, obs, K, loss, tol, max_restarts, start) -> float:
    ctx = scheme.prepare(obs)
    u0, accelerate = (scheme.init(ctx), "none") if start is None else (start, "anderson")
    u, _ = restarts(scheme, ctx, u0, K, tol, max_restarts, accelerate)
    return float(loss(scheme.output(u, ctx)))


def finite_difference_gradient(
    scheme, obs: Observation | torch.Tensor, K: int, loss: Loss, h: float = 1e-5, tol: float = 1e-14,
    max_restarts: int = 20000, start=None
) -> torch.Tensor:
    """Central differences of ``θ ↦ L(x̂_θ)`` on each raw parameter entry, x̂ converged to ``tol``: from
    ``u_0`` by plain restarts, or from ``start`` (the fixed point û at θ, which a step h moves by O(h))
    by Anderson-accelerated ones — far fewer restarts where Φ_K is barely contractive."""
    obs = as_observation(obs)
    out = []
    for p in theta_parameters(scheme):
        flat = p.data.view(-1)
        for i in range(flat.numel()):
            old = float(flat[i])
            values = []
            for shift in (h, -h):
                flat[i] = old + shift
                values.append(_loss_at_equilibrium(scheme, obs, K, loss, tol, max_restarts, start))
            flat[i] = old
            out.append((values[0] - values[1]) / (2 * h))
    return torch.tensor(out, dtype=torch.float64)


def gradient_check(scheme, obs: Observation, clean: torch.Tensor, K: int) -> dict[str, float]:
    """Compare the gradient just computed (in ``.grad``) with the DEQ one at the same θ and batch."""
    from .hypergrad import SolveOptions, solve

    params = theta_parameters(scheme)
    ours = flatten_grads([p.grad for p in params], params).detach().clone()
    options = SolveOptions(K, 1, tol=1e-6, max_restarts=500, adjoint_tol=1e-6, adjoint_max_iter=500)
    deq = flat_gradient(scheme, torch.mean((solve(scheme, obs, options, "deq").x - clean) ** 2)).detach()
    return {
        "grad_cosine": float(torch.nn.functional.cosine_similarity(ours, deq, dim=0)),
        "grad_rel_err": float((ours - deq).norm() / deq.norm().clamp_min(1e-30)),
    }
