"""Anderson-accelerated restarts: the same fixed point in fewer steps, a residual that bounds the restart
residual, the safeguard, and ReTune from the accelerated point (the gradient still from K plain steps)."""

from __future__ import annotations

import math

import pytest
import torch

from retune_cli.config import resolve
from retune_cli.core.fixed_point import anderson, fixed_point, relative_residual
from retune_cli.core.hypergrad import SolveOptions, restarts, solve
from retune_cli.core.pytree import flatten, leaves
from retune_cli.data import sample_dir
from retune_cli.images import read_image
from retune_cli.models import build_scheme, solve_options


def problem(preset: str, overrides: dict | None = None, seed: int = 0):
    """A float64 scheme with spread-out weights and a 32×32 observation of a built-in photograph."""
    scheme = build_scheme(resolve(preset, overrides or {})).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in scheme.theta.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    clean = read_image(sample_dir() / "astronaut.png")[:, 100:132, 200:232].unsqueeze(0).double()
    obs = scheme.physics.simulate(clean, 0)
    ctx = scheme.prepare(obs)
    return scheme, obs, ctx


def test_flatten_round_trip():
    scheme, _, ctx = problem("deblur-wavelet", {"physics.blur_width": 5})
    u = scheme.init(ctx)
    vector, unflatten = flatten(u)
    assert vector.dim() == 1 and vector.numel() == sum(t.numel() for t in leaves(u))
    assert all(torch.equal(a, b) for a, b in zip(leaves(unflatten(vector)), leaves(u)))


@pytest.mark.parametrize(("preset", "overrides"), [
    ("deblur-wavelet", {"physics.blur_width": 5, "model.init_lambda": 0.1}),
    ("inpaint-wavelet", {"model.init_lambda": 0.1}),
])
def test_anderson_reaches_the_same_fixed_point_in_fewer_maps(preset, overrides):
    scheme, _, ctx = problem(preset, overrides)
    K = 5
    plain, plain_stats = restarts(scheme, ctx, scheme.init(ctx), K, 1e-10, 20000)
    fast, fast_stats = restarts(scheme, ctx, scheme.init(ctx), K, 1e-10, 20000, "anderson")
    assert plain_stats.residual <= 1e-10 and fast_stats.residual <= 1e-10
    assert fast_stats.iterations * 3 <= plain_stats.iterations, (fast_stats, plain_stats)
    with torch.no_grad():
        x_plain, x_fast = scheme.output(plain, ctx), scheme.output(fast, ctx)
        assert float((x_plain - x_fast).norm() / x_plain.norm()) <= 1e-7
        # the point returned is a fixed point of Φ_K, within the residual reported (a bound)
        assert relative_residual(scheme.restart(fast, ctx, K), fast) <= fast_stats.residual * (1 + 1e-6)


@pytest.mark.parametrize("preset", ["denoise-wavelet-b", "inpaint-wavelet"])
def test_the_accelerated_residual_bounds_the_restart_residual(preset):
    """Stopped early at every tolerance, the reported residual ``Σ_{i<K} ω^i‖φ(x) − x‖/‖φ(x)‖`` is at
    least the restart residual ``‖Φ_K(x) − x‖/‖Φ_K(x)‖`` of the point returned (ω = ½ for denoising)."""
    scheme, _, ctx = problem(preset, {"model.init_lambda": 0.1})
    for tol in (1e-2, 1e-4, 1e-6):
        u, stats = restarts(scheme, ctx, scheme.init(ctx), 4, tol, 20000, "anderson")
        assert stats.residual <= tol
        assert relative_residual(scheme.restart(u, ctx, 4), u) <= stats.residual * 1.01


def test_the_safeguard_falls_back_to_plain_maps():
    """On a map where extrapolation overshoots (a rotation-like contraction), the residual never ends
    above the plain iteration's and the fixed point is still reached."""
    angle = torch.tensor(2.5, dtype=torch.float64)
    rotation = 0.97 * torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    offset = torch.tensor([1.0, 2.0], dtype=torch.float64)

    def step(u):
        return rotation @ u + offset + 0.05 * torch.tanh(u)  # a mildly non-linear contraction

    u, stats = anderson(step, torch.zeros(2, dtype=torch.float64), 1e-12, 500, memory=3)
    assert stats.residual <= 1e-12
    assert float((step(u) - u).norm()) <= 1e-10


def test_tol_zero_runs_exactly_max_iter_maps():
    scheme, _, ctx = problem("deblur-wavelet", {"physics.blur_width": 5})
    calls, blocks = [], []
    step = scheme.step
    scheme.step = lambda u, ctx: calls.append(1) or step(u, ctx)
    _, stats = restarts(scheme, ctx, scheme.init(ctx), 2, 0.0, 7, "anderson", on_restart=blocks.append)
    assert stats.iterations == len(blocks) == 7 and len(calls) == 14
    assert blocks == list(range(1, 8))
    _, stats = fixed_point(lambda u: scheme.restart(u, ctx, 2), scheme.init(ctx), 0.0, 7)
    assert stats.iterations == 7


def test_retune_with_accelerated_restarts_backpropagates_through_K_plain_steps():
    """x = out(Φ_K(ũ)) with ũ the Anderson point after T − 1 restarts; the gradient is that of one
    recorded Φ_K from ũ (so memory stays that of K steps)."""
    scheme, obs, ctx = problem("deblur-wavelet", {"physics.blur_width": 5, "model.init_lambda": 0.1})
    K, T = 3, 6
    accelerated = solve(scheme, obs, SolveOptions(K, T, accelerate="anderson"), "retune")
    ctx = scheme.prepare(obs)
    point, _ = restarts(scheme, ctx, scheme.init(ctx), K, 0.0, T - 1, "anderson")
    expected = scheme.output(scheme.restart(point, ctx, K), ctx)
    assert torch.allclose(accelerated.x, expected, rtol=0, atol=1e-12)
    assert accelerated.restarts == T
    params = [p for p in scheme.parameters() if p.requires_grad]
    g = torch.autograd.grad(torch.sum(accelerated.x**2), params)
    g_ref = torch.autograd.grad(torch.sum(expected**2), params)
    assert all(torch.allclose(a, b, rtol=1e-10, atol=0) for a, b in zip(g, g_ref))


def test_config_and_options_accept_only_known_accelerations():
    config = resolve("denoise-wavelet-b", {"train.accelerate": "anderson"})
    assert solve_options(config.train).accelerate == "anderson"
    from retune_cli.errors import InputError

    with pytest.raises(InputError, match="train.accelerate"):
        resolve("denoise-wavelet-b", {"train.accelerate": "broyden"})
    with pytest.raises(ValueError, match="accelerate"):
        SolveOptions(accelerate="broyden")


def test_a_diverging_map_stops_with_a_non_finite_residual():
    calls = []

    def step(u):
        calls.append(1)
        return u * 1e200 + 1.0

    u, stats = anderson(step, torch.ones(3, dtype=torch.float64), 1e-8, 50)
    assert not math.isfinite(stats.residual) and len(calls) <= 3


def test_an_extrapolation_that_maps_to_nan_falls_back_to_the_plain_map():
    """Every extrapolated point maps to NaN here: the iteration goes back to its last plain map each
    time and still reaches the fixed point 10 of ``u ↦ 0.9u + 1``."""
    seen: list[torch.Tensor] = [torch.zeros(3, dtype=torch.float64)]

    def step(u):
        if not any(torch.equal(u, s) for s in seen):
            return torch.full_like(u, float("nan"))
        out = 0.9 * u + 1
        seen.append(out.clone())
        return out

    u, stats = anderson(step, seen[0].clone(), 1e-10, 2000)
    assert math.isfinite(stats.residual) and stats.residual <= 1e-10
    assert torch.allclose(u, torch.full_like(u, 10.0), rtol=0, atol=1e-8)


def test_no_extrapolation_from_rounding_errors():
    """A map with ω ≈ 0 reaches its fixed point at once; with tol = 0 the iteration keeps mapping until
    the residual is exactly 0 (or the budget ends) without extrapolating from differences of rounding
    errors: the iterate stays the fixed point."""
    target = torch.linspace(-1, 1, 50, dtype=torch.float32)

    def step(u):
        return target + 1e-9 * torch.sin(1e3 * u)  # a contraction with ω ≈ 1e-6: fixed point ≈ target

    u, stats = anderson(step, torch.zeros(50), 0.0, 200)
    assert stats.iterations <= 200 and torch.allclose(u, target, rtol=0, atol=1e-6)
