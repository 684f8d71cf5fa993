"""Wavelet forward-backward: fixed point, step rules, contraction, closed form for denoising."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pywt
import torch

from retune_cli.config import resolve
from retune_cli.core.hypergrad import SolveOptions, restore, solve
from retune_cli.core.scheme import pad_to_multiple
from retune_cli.core.schemes import STEP_RULES, contraction_factor
from retune_cli.models import build_scheme

SIGMA = torch.tensor([0.10, 0.25, 0.50], dtype=torch.float64).view(1, 3, 1, 1)
# Spread-out weights (not all equal) for the bands and bands-channels layouts.
LOG_LAMBDA = [-2.3, -2.6, -2.8, -2.5]
LOG_LAMBDA_B = [0.2, -0.2, 0.1]
LOG_LAMBDA_BC = [[0.2, -0.2, 0.1], [0.0, 0.3, -0.1], [-0.3, 0.1, 0.2]]


def group_norm(z: torch.Tensor, dims) -> torch.Tensor:
    return torch.sqrt(torch.sum(z * z, dim=dims, keepdim=True))


def make_scheme(weights: str = "bands", step_rule: str = "optimal", **overrides):
    config = resolve("denoise-wavelet-b", {"model.weights": weights, "model.step_rule": step_rule, **overrides})
    return build_scheme(config).double()


def set_weights(scheme, log_lambda, log_Lambda) -> None:
    with torch.no_grad():
        scheme.theta.log_lambda.copy_(torch.as_tensor(log_lambda, dtype=torch.float64))
        scheme.theta.log_Lambda.copy_(torch.as_tensor(log_Lambda, dtype=torch.float64))


def spread_weights(scheme) -> None:
    set_weights(scheme, LOG_LAMBDA, LOG_LAMBDA_B if scheme.theta.weights == "bands" else LOG_LAMBDA_BC)


def noisy(h=32, w=32, n=1):
    """A smooth clean image (sinusoids plus a step edge) and its noisy observation."""
    yy = torch.linspace(0, 1, h, dtype=torch.float64).view(1, 1, h, 1)
    xx = torch.linspace(0, 1, w, dtype=torch.float64).view(1, 1, 1, w)
    phase = torch.rand(n, 3, 1, 1, dtype=torch.float64) * 6
    clean = 0.5 + 0.3 * torch.sin(6 * xx + phase) * torch.cos(4 * yy) + 0.15 * (xx > 0.5)
    return clean, clean + SIGMA * torch.randn(n, 3, h, w, dtype=torch.float64)


def num(t) -> float:
    return float(torch.as_tensor(t).detach())


def rel(a, b) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def closed_form(y: torch.Tensor, lam: float, weights: str, wavelet="db4", levels=4) -> torch.Tensor:
    """Dᵀ(group soft-threshold of the details of D y at λ, approximation kept), with PyWavelets and numpy."""
    coeffs = pywt.wavedec2(y.numpy(), wavelet, mode="periodization", level=levels, axes=(-2, -1))
    out = [coeffs[0]]
    for bands in coeffs[1:]:
        d = np.stack(bands, axis=2)  # (N, C, 3, h, w)
        axes = (2,) if weights == "bands" else (1, 2)
        norm = np.sqrt(np.sum(d**2, axis=axes, keepdims=True))
        d = d * np.maximum(0, 1 - lam / np.maximum(norm, 1e-300))
        out.append((d[:, :, 0], d[:, :, 1], d[:, :, 2]))
    return torch.from_numpy(pywt.waverec2(out, wavelet, mode="periodization", axes=(-2, -1)))


@pytest.mark.filterwarnings("ignore:Level value of .* is too high:UserWarning")
@pytest.mark.parametrize("weights", ["bands", "bands-channels"])
def test_equal_weights_one_step_is_the_closed_form_solution(weights):
    lam = 0.12
    scheme = make_scheme(weights)
    set_weights(scheme, [math.log(lam)] * 4, torch.zeros_like(scheme.theta.log_Lambda))
    _, y = noisy(32, 48, n=2)
    ctx = scheme.prepare(y)
    assert num(scheme.contraction(ctx)) == pytest.approx(0, abs=1e-12)  # optimal rule, μ = L
    assert num(ctx.tau) == pytest.approx(lam**2, rel=1e-12)  # τ* = 2/(μ+L) = λ²
    expected = closed_form(y, lam, weights)
    one_step = restore(scheme, y, K=1, max_restarts=1).x
    assert rel(one_step, expected) <= 1e-10
    many = restore(scheme, y, K=5, max_restarts=4).x  # already at the fixed point: further steps change nothing
    assert rel(many, expected) <= 1e-10
    assert rel(expected, y) > 0.05  # the threshold does something


def test_safe_rule_contraction_with_equal_weights():
    scheme = make_scheme(step_rule="safe")
    ctx = scheme.prepare(noisy()[1])
    assert num(scheme.contraction(ctx)) == pytest.approx(0.95, abs=1e-12)  # |1 − 1.95|


@pytest.mark.parametrize("weights", ["bands", "bands-channels"])
def test_step_size_and_contraction_follow_theta(weights):
    scheme = make_scheme(weights)
    spread_weights(scheme)
    theta = torch.cat([t.detach().flatten() for t in scheme.theta.diagonal()])
    lo, hi = float(theta.min()), float(theta.max())
    ctx = scheme.prepare(noisy()[1])
    lipschitz, mu = 1 / lo**2, 1 / hi**2  # ‖A‖ = σ_min(A) = 1 for denoising
    assert num(ctx.lipschitz) == pytest.approx(lipschitz, rel=1e-12)
    assert num(ctx.strong_convexity) == pytest.approx(mu, rel=1e-12)
    assert num(ctx.tau) == pytest.approx(2 / (lipschitz + mu), rel=1e-12)
    assert num(scheme.contraction(ctx)) == pytest.approx((hi**2 - lo**2) / (hi**2 + lo**2), rel=1e-12)
    safe = make_scheme(weights, "safe")
    spread_weights(safe)
    ctx = safe.prepare(noisy()[1])
    assert num(ctx.tau) == pytest.approx(1.95 / lipschitz, rel=1e-12)
    assert num(safe.contraction(ctx)) == pytest.approx(max(1 - 1.95 * mu / lipschitz, 0.95), rel=1e-12)


@pytest.mark.parametrize("weights", ["bands", "bands-channels"])
def test_optimal_and_safe_rules_reach_the_same_fixed_point(weights):
    clean, y = noisy()
    fixed = {}
    for rule in ("optimal", "safe"):
        scheme = make_scheme(weights, rule)
        spread_weights(scheme)
        fp = restore(scheme, y, K=10, max_restarts=2000, tol=1e-14)
        assert fp.residual <= 1e-14 and fp.restarts < 2000
        fixed[rule] = fp.x
    assert rel(fixed["safe"], fixed["optimal"]) <= 1e-6
    assert torch.mean((fixed["optimal"] - clean) ** 2) < 0.9 * torch.mean((y - clean) ** 2)


@pytest.mark.parametrize("weights", ["bands", "bands-channels"])
def test_fixed_point_minimizes_the_objective(weights):
    """x̂ minimizes ½‖x − y‖² + ‖θ D x‖_{1,2}: no perturbation lowers it."""
    scheme = make_scheme(weights)
    spread_weights(scheme)
    _, y = noisy()
    x_hat = restore(scheme, y, K=10, max_restarts=500, tol=1e-14).x
    theta = [t.detach() for t in scheme.theta.diagonal()]
    dims = scheme.theta.group_dims

    def energy(x):
        details = scheme.transform.analysis(x).details
        return 0.5 * torch.sum((x - y) ** 2) + sum(group_norm(t * d, dims).sum() for t, d in zip(theta, details))

    best = energy(x_hat)
    g = torch.Generator().manual_seed(3)
    for scale in (1e-5, 1e-3, 1e-1):
        for _ in range(10):
            assert energy(x_hat + scale * torch.randn(x_hat.shape, generator=g, dtype=x_hat.dtype)) >= best - 1e-10
    assert energy(y) > best and energy(0.99 * x_hat) > best


def test_fixed_point_of_the_step():
    scheme = make_scheme()
    spread_weights(scheme)
    _, y = noisy()
    ctx = scheme.prepare(y)
    with torch.no_grad():
        u = scheme.init(ctx)
        for _ in range(300):
            u = scheme.step(u, ctx)
        v = scheme.step(u, ctx)
    assert rel(v.approx, u.approx) <= 1e-12
    for a, b in zip(v.details, u.details):
        assert float(torch.linalg.vector_norm(a - b)) <= 1e-12 * float(torch.linalg.vector_norm(b)) + 1e-14


@pytest.mark.parametrize(("h", "w"), [(37, 50), (16, 16), (5, 7), (17, 33)])
def test_any_image_size_restores_to_the_same_size(h, w):
    scheme = make_scheme()
    spread_weights(scheme)
    clean, y = noisy(h, w)
    x = restore(scheme, y, K=5, max_restarts=3).x
    assert x.shape == y.shape
    assert torch.all(torch.isfinite(x))
    assert torch.mean((x - clean) ** 2) < torch.mean((y - clean) ** 2)  # it denoises
    x_solve = solve(scheme, y, SolveOptions(K=5, T=3)).x
    assert x_solve.shape == y.shape
    assert torch.allclose(x_solve, x, rtol=0, atol=1e-12)


def test_pad_to_multiple():
    y = torch.arange(2 * 3 * 5 * 7, dtype=torch.float64).reshape(2, 3, 5, 7)
    p = pad_to_multiple(y, 4)
    assert p.shape == (2, 3, 8, 8)
    assert torch.equal(p[..., :5, :7], y)
    assert torch.equal(p[..., 5, :7], y[..., 3, :])  # reflect: the row below the edge mirrors the one above
    assert pad_to_multiple(y[..., :4, :4], 4) is not None and pad_to_multiple(y[..., :4, :4], 4).shape[-2:] == (4, 4)
    tiny = pad_to_multiple(y[..., :2, :3], 16)  # too small to reflect: replicated
    assert tiny.shape[-2:] == (16, 16) and torch.all(tiny[..., 15, 15] == y[..., 1, 2])


def test_step_rule_validation():
    one = torch.tensor(1.0)
    with pytest.raises(ValueError, match="μ > 0"):
        STEP_RULES["optimal"](one, torch.tensor(0.0))
    with pytest.raises(KeyError):
        STEP_RULES["fastest"]
    assert set(STEP_RULES) == {"optimal", "safe"}
    assert float(STEP_RULES["optimal"](torch.tensor(3.0), one)) == 0.5  # 2/(μ + L)
    assert float(STEP_RULES["safe"](torch.tensor(3.0), one)) == pytest.approx(0.65)  # 1.95/L
    assert float(contraction_factor(torch.tensor(0.5), torch.tensor(2.0), torch.tensor(1.0))) == 0.5
    scheme = make_scheme()
    with pytest.raises(ValueError, match="step_rule"):
        type(scheme)(scheme.physics, scheme.transform, scheme.theta, step_rule="fastest")
