"""Inpainting and deblurring physics: adjoints, kernels, ‖A‖, masks, noise, and the wavelet
forward-backward scheme's fixed point under these operators (DESIGN.md §2.1, §2.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retune_cli.config import resolve
from retune_cli.core.hypergrad import restore
from retune_cli.core.implicit import fixed_point, leaves
from retune_cli.core.physics import (
    ChannelBlur,
    ChannelGaussianNoise,
    RandomInpainting,
    build_physics,
    channel_blur_kernel,
    operator_norm,
    operator_norm_bounds,
    simulate,
)
from retune_cli.core.priors import group_soft_threshold
from retune_cli.core.wavelets import Coefficients
from retune_cli.errors import InputError
from retune_cli.models import build_scheme


def inner(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.sum(a * b))


def norm(a: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a))


def inpainting(shape, seed: int = 0, keep: float = 0.3) -> RandomInpainting:
    physics = build_physics("inpaint", sigma=[0.05], keep=keep)
    physics.draw(shape, seed)
    return physics


def dense_matrix(physics, shape: tuple[int, int, int], adjoint: bool = False) -> torch.Tensor:
    """The n×n matrix of A (or Aᵀ) on images of ``shape`` (C, H, W), built column by column."""
    n = int(np.prod(shape))
    basis = torch.eye(n, dtype=torch.float64).view(n, *shape)
    op = physics.A_adjoint if adjoint else physics.A
    return torch.cat([op(basis[i : i + 64]) for i in range(0, n, 64)]).reshape(n, n).T


# --------------------------------------------------------------------------- adjoints


@pytest.mark.parametrize("size", [(16, 16), (20, 28), (27, 13)])
@pytest.mark.parametrize("how", ["draw", "set_mask"])
def test_inpainting_adjoint(size, how):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    physics = build_physics("inpaint", sigma=[0.05], keep=0.4)
    if how == "draw":
        physics.draw(x.shape, seed=5)
    else:
        physics.set_mask((torch.rand(1, 1, *size, generator=g) < 0.4).float())
    ax, aty = physics.A(x), physics.A_adjoint(y)
    assert ax.dtype == aty.dtype == torch.float64
    assert abs(inner(ax, y) - inner(x, aty)) <= 1e-10 * norm(ax) * norm(y)


@pytest.mark.parametrize(("size", "width"), [((16, 16), 5), ((20, 28), 5), ((27, 13), 3), ((32, 40), 25)])
def test_deblurring_adjoint(size, width):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    physics = build_physics("deblur", sigma=[0.05], blur_width=width)
    ax, aty = physics.A(x), physics.A_adjoint(y)
    assert ax.shape == aty.shape == x.shape
    assert ax.dtype == aty.dtype == torch.float64
    assert abs(inner(ax, y) - inner(x, aty)) <= 1e-10 * norm(ax) * norm(y)


def test_dense_adjoint_is_the_transpose():
    """Column by column: the matrix of Aᵀ is the transpose of the matrix of A (a measured kernel too)."""
    shape = (3, 8, 10)
    blur = build_physics("deblur", sigma=[0.05], blur_width=3)
    blur.set_kernel(torch.rand(3, 3, 3, generator=torch.Generator().manual_seed(0)))
    for physics in (blur, inpainting((1, *shape))):
        a = dense_matrix(physics, shape)
        assert torch.allclose(dense_matrix(physics, shape, adjoint=True), a.T, rtol=0, atol=1e-13)


# --------------------------------------------------------------------------- the channel-wise blur


def support(image: torch.Tensor) -> set[tuple[int, int]]:
    return {tuple(p) for p in torch.nonzero(image.abs() > 1e-12).tolist()}


@pytest.mark.parametrize(
    ("size", "width", "at"), [((15, 15), 5, (7, 7)), ((33, 41), 25, (16, 20)), ((9, 12), 3, (4, 7))]
)
def test_blur_orientation_per_channel(size, width, at):
    """A bright pixel spreads horizontally in red, vertically in green, along the main diagonal in blue,
    over exactly ``width`` pixels centred on it, each with weight 1/width."""
    physics = build_physics("deblur", sigma=[0.05], blur_width=width)
    delta = torch.zeros(1, 3, *size, dtype=torch.float64)
    delta[..., at[0], at[1]] = 1.0
    out = physics.A(delta)[0]
    r0, c0 = at
    offsets = range(-(width // 2), width // 2 + 1)
    expected = {
        0: {(r0, c0 + k) for k in offsets},  # red: horizontal
        1: {(r0 + k, c0) for k in offsets},  # green: vertical
        2: {(r0 + k, c0 + k) for k in offsets},  # blue: top-left to bottom-right
    }
    for channel, points in expected.items():
        assert support(out[channel]) == points, channel
        values = torch.stack([out[channel][p] for p in points])
        # (the kernel is kept in float32, so its taps are 1/width to float32 precision)
        assert torch.allclose(values, torch.full_like(values, 1 / width), rtol=1e-7, atol=0)


def test_blur_wraps_around_circularly():
    physics = build_physics("deblur", sigma=[0.05], blur_width=5)
    delta = torch.zeros(1, 3, 10, 12, dtype=torch.float64)
    delta[..., 0, 11] = 1.0  # top-right corner
    out = physics.A(delta)[0]
    assert support(out[0]) == {(0, c % 12) for c in range(9, 14)}
    assert support(out[1]) == {(r % 10, 11) for r in range(-2, 3)}
    assert support(out[2]) == {(k % 10, (11 + k) % 12) for k in range(-2, 3)}


@pytest.mark.parametrize("width", [1, 4, 5, 25])
def test_blur_kernels_sum_to_one(width):
    kernel = channel_blur_kernel(width)
    assert kernel.shape == (1, 3, width, width)
    assert torch.allclose(kernel.sum(dim=(-2, -1)), torch.ones(1, 3))
    assert torch.all(kernel >= 0)
    physics = build_physics("deblur", sigma=[0.05], blur_width=width)
    ones = torch.ones(1, 3, 26, 30, dtype=torch.float64)
    assert torch.allclose(physics.A(ones), ones, rtol=0, atol=1e-6)  # constants are kept


def test_blur_kernel_refusals():
    with pytest.raises(ValueError):
        channel_blur_kernel(0)
    physics = build_physics("deblur", sigma=[0.05], blur_width=25)
    with pytest.raises(ValueError, match="smaller than the blur kernel"):
        physics.A(torch.zeros(1, 3, 20, 40))
    with pytest.raises(ValueError):
        physics.set_kernel(torch.ones(2, 5, 5))  # two channels


# --------------------------------------------------------------------------- ‖A‖


def test_operator_norm_matches_a_dense_computation_for_the_blur():
    shape = (3, 12, 12)
    like = torch.zeros(1, *shape, dtype=torch.float64)
    uniform = build_physics("deblur", sigma=[0.05], blur_width=5)
    measured = build_physics("deblur", sigma=[0.05], blur_width=5)
    # a kernel that does not sum to 1 and has negative taps: ‖A‖ is then not 1
    measured.set_kernel(torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    dense = {}
    for name, physics in (("uniform", uniform), ("measured", measured)):
        dense[name] = float(torch.linalg.matrix_norm(dense_matrix(physics, shape), 2))
        assert operator_norm(physics, like, iterations=2000, tol=1e-13) == pytest.approx(dense[name], rel=1e-9)
    assert dense["uniform"] == pytest.approx(1.0, rel=1e-6)
    assert operator_norm(uniform, like) == pytest.approx(1.0, rel=1e-6)  # well separated: converged
    # The random kernel's two largest singular values are 7.4705 and 7.4320: the default 100 iterations
    # stop 1.4e-4 short. Power iteration approaches ‖A‖ from below (the unsafe side for τ = 1.95/L, whose
    # 2.5 % margin absorbs this).
    estimate = operator_norm(measured, like)
    assert dense["measured"] * (1 - 1e-3) <= estimate <= dense["measured"] * (1 + 1e-12)
    assert dense["measured"] != pytest.approx(1.0, rel=1e-2)
    assert operator_norm_bounds(measured, like)[0] == pytest.approx(estimate, rel=1e-12)
    assert operator_norm_bounds(measured, like)[1] == 0.0


def test_operator_norm_of_a_mask():
    shape = (3, 12, 12)
    like = torch.zeros(1, *shape, dtype=torch.float64)
    physics = inpainting((1, *shape), seed=4, keep=0.2)
    dense = float(torch.linalg.matrix_norm(dense_matrix(physics, shape), 2))
    assert dense == 1.0  # exactly one as soon as one pixel is kept
    assert operator_norm(physics, like) == pytest.approx(1.0, rel=1e-9)
    assert operator_norm_bounds(physics) == (1.0, 0.0)
    physics.set_mask(torch.zeros(1, 1, 12, 12))
    assert float(torch.linalg.matrix_norm(dense_matrix(physics, shape), 2)) == 0.0
    assert operator_norm(physics, like) == 0.0


def test_set_kernel_invalidates_the_cached_operator_norm():
    like = torch.zeros(1, 3, 12, 12, dtype=torch.float64)
    physics = build_physics("deblur", sigma=[0.05], blur_width=5)
    assert operator_norm_bounds(physics, like)[0] == pytest.approx(1.0, rel=1e-6)
    physics.set_kernel(2 * channel_blur_kernel(5))  # ‖A‖ = 2
    assert operator_norm_bounds(physics, like)[0] == pytest.approx(2.0, rel=1e-6)


# --------------------------------------------------------------------------- masks, noise, simulate


def test_mask_is_shared_by_the_channels_and_drawn_per_image():
    physics = inpainting((3, 3, 40, 40), seed=7, keep=0.3)
    kept = physics.A(torch.ones(3, 3, 40, 40))
    assert torch.equal(kept[:, 0], kept[:, 1]) and torch.equal(kept[:, 0], kept[:, 2])
    assert set(kept.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(kept[0], kept[1])  # each image of a batch has its own mask


def test_mask_comes_from_the_seed_and_keeps_the_requested_fraction():
    def mask(seed, keep=0.1):
        return inpainting((1, 3, 128, 128), seed, keep).A(torch.ones(1, 3, 128, 128))[0, 0]

    assert torch.equal(mask(3), mask(3))
    assert not torch.equal(mask(3), mask(4))
    for keep in (0.1, 0.5):
        # binomial standard deviation of the fraction: sqrt(0.25 / 16384) < 0.004
        assert float(mask(11, keep).mean()) == pytest.approx(keep, abs=0.015)
    assert float(mask(11, 1.0).mean()) == 1.0
    with pytest.raises(ValueError):
        build_physics("inpaint", sigma=[0.05], keep=0.0)


def test_an_inpainting_mask_must_be_set_before_use():
    physics = build_physics("inpaint", sigma=[0.05])
    with pytest.raises(ValueError, match="mask is not set"):
        physics.A(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="mask is not set"):
        simulate(physics, torch.zeros(1, 3, 8, 8), seed=0, redraw=False)


@pytest.mark.parametrize("name", ["denoise", "inpaint", "deblur"])
def test_simulate_is_deterministic(name):
    physics = build_physics(name, sigma=[0.05, 0.1, 0.2], keep=0.3, blur_width=5)
    clean = torch.rand(2, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    first = simulate(physics, clean, seed=12)
    assert torch.equal(simulate(physics, clean, seed=12), first)
    assert not torch.allclose(simulate(physics, clean, seed=13), first)
    assert first.shape == clean.shape and first.dtype == clean.dtype


def test_simulate_keeps_a_given_mask_without_redraw():
    physics = build_physics("inpaint", sigma=[0.0])
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., ::2, :] = 1
    physics.set_mask(mask)
    clean = torch.rand(1, 3, 16, 16)
    assert torch.equal(simulate(physics, clean, seed=1, redraw=False), clean * mask)


def test_inpainting_observation_is_zero_exactly_where_pixels_are_missing():
    clean = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    physics = build_physics("inpaint", sigma=[0.05], keep=0.3)
    y = simulate(physics, clean, seed=2)
    mask = physics.A(torch.ones_like(clean)) > 0
    assert torch.all(y[mask] != 0)
    assert torch.all(y[~mask] == 0)


@pytest.mark.parametrize("sigma", [[0.05, 0.2, 0.4], [0.15]])
def test_channel_noise_has_the_right_std_per_channel(sigma):
    noise = ChannelGaussianNoise(sigma)
    x = torch.full((2, 3, 128, 128), 0.5, dtype=torch.float64)
    y = noise(x, seed=3)
    expected = torch.tensor(sigma * (3 // len(sigma)), dtype=torch.float64)
    std = (y - x).transpose(0, 1).reshape(3, -1).std(dim=1)
    mean = (y - x).transpose(0, 1).reshape(3, -1).mean(dim=1)
    # 32768 samples per channel: the relative std of the estimate is ~0.4 %
    assert torch.allclose(std, expected, rtol=0.03)
    assert torch.all(mean.abs() <= 0.03 * expected)
    assert torch.equal(noise(x, seed=3), y) and not torch.equal(noise(x, seed=4), y)
    assert noise(x.float(), seed=3).dtype == torch.float32


def test_channel_noise_refuses_bad_sigmas():
    with pytest.raises(ValueError, match="2 noise levels for 3 channels"):
        ChannelGaussianNoise([0.1, 0.2])(torch.zeros(1, 3, 4, 4), seed=0)
    for bad in ([], [-0.1], [float("nan")]):
        with pytest.raises(ValueError):
            ChannelGaussianNoise(bad)
    assert torch.equal(ChannelGaussianNoise([0.0])(torch.ones(1, 3, 4, 4), seed=0), torch.ones(1, 3, 4, 4))


def test_build_physics_types_and_unknown_name():
    assert isinstance(build_physics("inpaint", sigma=[0.1]), RandomInpainting)
    assert isinstance(build_physics("deblur", sigma=[0.1]), ChannelBlur)
    with pytest.raises(ValueError, match="unknown physics"):
        build_physics("telepathy", sigma=[0.1])


# --------------------------------------------------------------------------- wavelet FB with A ≠ I

# Small problems that converge in a few hundred steps (τ = 1.95/L, μ = 0): larger weights make the
# solution sparse; the image is 27×37, not a multiple of 16 (padded to 32×48, the padding unobserved).
FB_CASES = {
    "inpaint": ("inpaint-wavelet", {"physics.keep": 0.3, "model.init_lambda": 0.3}),
    "deblur": ("deblur-wavelet", {"physics.blur_width": 5, "model.init_lambda": 0.3}),
}
SIZE = (27, 37)


def smooth(h: int, w: int) -> torch.Tensor:
    """A structured clean image (sinusoids, a step edge), ``(1, 3, h, w)`` in float64."""
    yy = torch.linspace(0, 1, h, dtype=torch.float64).view(1, 1, h, 1)
    xx = torch.linspace(0, 1, w, dtype=torch.float64).view(1, 1, 1, w)
    phase = torch.tensor([0.0, 2.0, 4.0], dtype=torch.float64).view(1, 3, 1, 1)
    return 0.5 + 0.3 * torch.sin(6 * xx + phase) * torch.cos(4 * yy) + 0.15 * (xx > 0.5)


def fb_problem(case: str):
    preset, overrides = FB_CASES[case]
    scheme = build_scheme(resolve(preset, overrides)).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # spread-out weights
        for p in scheme.theta.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    clean = smooth(*SIZE)
    return scheme, clean, simulate(scheme.physics, clean, seed=0)


def smooth_gradient(scheme, y: torch.Tensor, u: Coefficients) -> tuple[Coefficients, list, float]:
    """Independently of the scheme's step: ``G = θ⁻¹ D Aᵀ(A Dᵀ θ⁻¹ u − y)`` on the padded domain (A acts on
    the top-left crop of y's size, Aᵀ is zero on the padding), θ per level, and θ on the approximation."""
    theta = scheme.theta.diagonal()
    top = float(torch.cat([t.flatten() for t in theta]).max())
    tr = scheme.transform
    h, w = y.shape[-2:]
    x = tr.synthesis(Coefficients(u.approx / top, tuple(d / t for d, t in zip(u.details, theta))))
    back = scheme.physics.A_adjoint(scheme.physics.A(x[..., :h, :w]) - y)
    back = F.pad(back, (0, x.shape[-1] - w, 0, x.shape[-2] - h))
    d = tr.analysis(back)
    return Coefficients(d.approx / top, tuple(c / t for c, t in zip(d.details, theta))), theta, top


@pytest.mark.parametrize("case", ["inpaint", "deblur"])
def test_wavelet_fb_step_rule_safe(case):
    scheme, _, y = fb_problem(case)
    ctx = scheme.prepare(y)
    theta = torch.cat([t.flatten() for t in scheme.theta.diagonal()]).detach()
    a_norm = operator_norm(scheme.physics, y) if case == "deblur" else 1.0
    lipschitz = a_norm**2 / float(theta.min()) ** 2
    assert float(ctx.lipschitz.detach()) == pytest.approx(lipschitz, rel=1e-6)
    assert float(torch.as_tensor(ctx.strong_convexity).detach()) == 0.0
    assert float(ctx.tau.detach()) == pytest.approx(1.95 / lipschitz, rel=1e-6)
    assert float(scheme.contraction(ctx).detach()) == 1.0  # μ = 0: no contraction factor below 1


@pytest.mark.parametrize("case", ["inpaint", "deblur"])
def test_wavelet_fb_converges_to_the_minimizer(case):
    """min_u ½‖A Dᵀ θ⁻¹ u − y‖² + ‖u‖_{1,2}: the restarted scheme's limit is a fixed point of the FB map
    (recomputed here from the formula) and satisfies the optimality condition 0 ∈ G(u) + ∂‖u‖_{1,2}."""
    scheme, _, y = fb_problem(case)
    residuals = [restore(scheme, y, K=10, max_restarts=T).residual for T in (1, 4, 16)]
    assert residuals[0] > residuals[1] > residuals[2]
    fp = restore(scheme, y, K=10, max_restarts=400, tol=1e-12)
    assert fp.residual <= 1e-12 and fp.x.shape == y.shape

    with torch.no_grad():
        ctx = scheme.prepare(y)
        u, residual, _ = fixed_point(scheme, ctx, scheme.init(ctx), 10, 1e-13, 400)
        assert residual <= 1e-13
        assert torch.allclose(scheme.output(u, ctx), fp.x, rtol=0, atol=1e-9)
        grad, theta, _ = smooth_gradient(scheme, y, u)
        tau = 1.95 * float(torch.cat([t.flatten() for t in theta]).min()) ** 2
        if case == "deblur":
            tau /= operator_norm(scheme.physics, y) ** 2
        dims = scheme.theta.group_dims
        # u = φ(u): forward step on everything, group soft-thresholding on the details only
        mapped = [u.approx - tau * grad.approx]
        mapped += [group_soft_threshold(d - tau * g, tau, dims) for d, g in zip(u.details, grad.details)]
        size = torch.sqrt(sum(torch.sum(t**2) for t in leaves(u)))
        assert torch.sqrt(sum(torch.sum((a - b) ** 2) for a, b in zip(mapped, leaves(u)))) <= 1e-11 * size
        # optimality: the approximation band is free; each detail group's subgradient condition
        assert float(grad.approx.abs().max()) <= 1e-9
        active = 0
        for d, g in zip(u.details, grad.details):
            group = torch.sqrt(torch.sum(d * d, dim=dims, keepdim=True))
            g_norm = torch.sqrt(torch.sum(g * g, dim=dims, keepdim=True))
            on = (group > 0).expand_as(d)
            assert torch.allclose(g[on], -(d / group.clamp_min(1e-300))[on], rtol=0, atol=1e-9)
            assert torch.all(g_norm[group == 0] <= 1 + 1e-9)
            active += int((group > 0).sum())
        assert active > 5  # not the trivial all-zero solution


@pytest.mark.parametrize("preset", ["inpaint-wavelet", "deblur-wavelet"])
def test_optimal_step_rule_is_refused_without_an_injective_operator(preset):
    assert resolve(preset).model.step_rule == "safe"
    with pytest.raises(InputError, match="step_rule"):
        resolve(preset, {"model.step_rule": "optimal"})
