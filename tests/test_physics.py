"""Inpainting and deblurring physics: adjoints, kernels, ‖A‖, masks, noise, observations and their
sharding, the physics registry, and the wavelet forward-backward scheme's fixed point under these
operators (README: "The method, as implemented")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retune_cli.config import resolve
from retune_cli.core.fixed_point import fixed_point
from retune_cli.core.hypergrad import restore
from retune_cli.core.operators import (
    PHYSICS,
    ChannelBlur,
    Denoise,
    RandomInpainting,
    as_kernel,
    build_physics,
    channel_blur_kernel,
    register_physics,
)
from retune_cli.core.physics import (
    ChannelGaussianNoise,
    NormBounds,
    Observation,
    Params,
    Physics,
    operator_norm,
)
from retune_cli.core.priors import WaveletWeights, group_soft_threshold
from retune_cli.core.pytree import leaves
from retune_cli.core.schemes import WaveletFB
from retune_cli.core.wavelets import Coefficients, WaveletTransform
from retune_cli.errors import InputError
from retune_cli.models import build_scheme


def inner(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.sum(a * b))


def norm(a: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a))


def inpainting(shape, seed: int = 0, keep: float = 0.3) -> tuple[RandomInpainting, Params]:
    """An inpainting physics and the mask parameters it draws for a batch of ``shape`` from ``seed``."""
    physics = build_physics("inpaint", sigma=[0.05], keep=keep)
    return physics, physics.draw(shape, seed)


def dense_matrix(physics, shape: tuple[int, int, int], params: Params | None = None,
                 adjoint: bool = False) -> torch.Tensor:
    """The n×n matrix of A (or Aᵀ) on images of ``shape`` (C, H, W), built column by column."""
    n = int(np.prod(shape))
    basis = torch.eye(n, dtype=torch.float64).view(n, *shape)
    op = physics.A_adjoint if adjoint else physics.A
    return torch.cat([op(basis[i : i + 64], params) for i in range(0, n, 64)]).reshape(n, n).T


# --------------------------------------------------------------------------- adjoints


@pytest.mark.parametrize("size", [(16, 16), (20, 28), (27, 13)])
@pytest.mark.parametrize("how", ["draw", "given"])
def test_inpainting_adjoint(size, how):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    physics = build_physics("inpaint", sigma=[0.05], keep=0.4)
    if how == "draw":
        params = physics.draw(x.shape, seed=5)
        assert params["mask"].shape == (2, 1, *size)
    else:  # a user's mask, shared by the batch
        params = {"mask": (torch.rand(1, 1, *size, generator=g) < 0.4).float()}
    ax, aty = physics.A(x, params), physics.A_adjoint(y, params)
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
    """Column by column: the matrix of Aᵀ is the transpose of the matrix of A (a measured kernel too,
    given as parameters or at construction)."""
    shape = (3, 8, 10)
    measured = torch.rand(3, 3, 3, generator=torch.Generator().manual_seed(0))
    blur = build_physics("deblur", sigma=[0.05], blur_width=3)
    cases = [
        (blur, None),
        (blur, blur.operator_params(measured, (1, *shape))),
        (ChannelBlur([0.05], kernel=measured), None),
        inpainting((1, *shape)),
    ]
    for physics, params in cases:
        a = dense_matrix(physics, shape, params)
        assert torch.allclose(dense_matrix(physics, shape, params, adjoint=True), a.T, rtol=0, atol=1e-13)
    # the measured kernel is the same operator whichever way it is given, and not the configured one
    given = dense_matrix(blur, shape, {"kernel": as_kernel(measured)})
    assert torch.equal(given, dense_matrix(ChannelBlur([0.05], kernel=measured), shape))
    assert not torch.allclose(given, dense_matrix(blur, shape))


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
    assert torch.equal(physics.kernel, kernel)
    ones = torch.ones(1, 3, 26, 30, dtype=torch.float64)
    assert torch.allclose(physics.A(ones), ones, rtol=0, atol=1e-6)  # constants are kept


def test_blur_kernel_refusals():
    with pytest.raises(ValueError):
        channel_blur_kernel(0)
    physics = build_physics("deblur", sigma=[0.05], blur_width=25)
    with pytest.raises(ValueError, match="smaller than the .*blur kernel"):
        physics.A(torch.zeros(1, 3, 20, 40))
    with pytest.raises(ValueError, match="smaller than the .*blur kernel"):
        physics.check_fits((1, 3, 20, 40))
    physics.check_fits((1, 3, 25, 25))  # exactly the kernel's size fits
    with pytest.raises(ValueError):
        as_kernel(torch.ones(2, 5, 5))  # two channels
    with pytest.raises(ValueError):
        physics.operator_params(torch.ones(2, 5, 5), (1, 3, 32, 32))
    with pytest.raises(ValueError):
        ChannelBlur([0.05], kernel=torch.ones(2, 5, 5))
    with pytest.raises(ValueError):
        as_kernel(torch.full((3, 3), float("nan")))
    with pytest.raises(ValueError, match="smaller than the .*blur kernel"):  # a user kernel too large
        physics.operator_params(torch.full((9, 9), 1 / 81), (1, 3, 8, 16))
    # a measured kernel given as parameters is checked against the image, not the configured kernel
    small = physics.operator_params(torch.full((3, 3), 1 / 9), (1, 3, 8, 8))
    assert small["kernel"].shape == (1, 3, 3, 3)
    assert physics.A(torch.ones(1, 3, 8, 8), small).shape == (1, 3, 8, 8)


# --------------------------------------------------------------------------- ‖A‖


def test_operator_norm_matches_a_dense_computation_for_the_blur():
    shape = (3, 12, 12)
    like = torch.zeros(1, *shape, dtype=torch.float64)
    uniform = build_physics("deblur", sigma=[0.05], blur_width=5)
    # a kernel that does not sum to 1 and has negative taps: ‖A‖ is then not 1
    kernel = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    params = uniform.operator_params(kernel, like.shape)
    measured = ChannelBlur([0.05], blur_width=5, kernel=kernel)
    dense = {}
    for name, physics, p in (("uniform", uniform, None), ("measured", uniform, params),
                             ("constructed", measured, None)):
        dense[name] = float(torch.linalg.matrix_norm(dense_matrix(physics, shape, p), 2))
        assert operator_norm(physics, like, p, iterations=2000, tol=1e-13) == pytest.approx(dense[name], rel=1e-9)
    assert dense["constructed"] == dense["measured"]
    assert dense["uniform"] == pytest.approx(1.0, rel=1e-6)
    assert operator_norm(uniform, like) == pytest.approx(1.0, rel=1e-6)  # well separated: converged
    # The random kernel's two largest singular values are 7.4705 and 7.4320: the default 100 iterations
    # stop 1.4e-4 short. Power iteration approaches ‖A‖ from below (the unsafe side for τ = 1.95/L, whose
    # 2.5 % margin absorbs this).
    estimate = operator_norm(uniform, like, params)
    assert dense["measured"] * (1 - 1e-3) <= estimate <= dense["measured"] * (1 + 1e-12)
    assert dense["measured"] != pytest.approx(1.0, rel=1e-2)
    # the blur's norm_bounds is exact (the largest modulus of the kernel's DFT), not that estimate
    for bounds in (uniform.norm_bounds(like, params), measured.norm_bounds(like)):
        assert isinstance(bounds, NormBounds)
        assert bounds.norm == pytest.approx(dense["measured"], rel=1e-10)
        assert bounds.sigma_min == 0.0
        assert bounds[0] == bounds.norm and bounds[1] == 0.0


def test_operator_norm_of_a_mask():
    shape = (3, 12, 12)
    like = torch.zeros(1, *shape, dtype=torch.float64)
    physics, params = inpainting((1, *shape), seed=4, keep=0.2)
    dense = float(torch.linalg.matrix_norm(dense_matrix(physics, shape, params), 2))
    assert dense == 1.0  # exactly one as soon as one pixel is kept
    assert operator_norm(physics, like, params) == pytest.approx(1.0, rel=1e-9)
    assert physics.norm_bounds(like, params) == (1.0, 0.0)
    assert physics.norm_bounds(like) == (1.0, 0.0)  # known without the mask
    empty = {"mask": torch.zeros(1, 1, 12, 12)}
    assert float(torch.linalg.matrix_norm(dense_matrix(physics, shape, empty), 2)) == 0.0
    assert operator_norm(physics, like, empty) == 0.0


def test_identity_norm_bounds():
    physics = build_physics("denoise", sigma=[0.05])
    like = torch.zeros(1, 3, 12, 12, dtype=torch.float64)
    assert physics.identity and physics.injective
    assert physics.norm_bounds(like) == (1.0, 1.0)
    assert operator_norm(physics, like) == pytest.approx(1.0, rel=1e-12)
    for name in ("inpaint", "deblur"):
        assert not PHYSICS[name].identity and not PHYSICS[name].injective


def test_operator_norm_follows_the_kernel():
    """‖A‖ belongs to the kernel in use: another kernel (as parameters or at construction) gets its own
    norm, the configured kernel's is unchanged, and another image shape is handled."""
    like = torch.zeros(1, 3, 12, 12, dtype=torch.float64)
    physics = build_physics("deblur", sigma=[0.05], blur_width=5)
    assert physics.norm_bounds(like).norm == pytest.approx(1.0, rel=1e-7)  # float32 taps
    doubled = {"kernel": as_kernel(2 * channel_blur_kernel(5))}  # ‖A‖ = 2
    assert physics.norm_bounds(like, doubled).norm == pytest.approx(2.0, rel=1e-7)
    assert physics.norm_bounds(like).norm == pytest.approx(1.0, rel=1e-7)  # float32 taps
    assert physics.norm_bounds(like.expand(4, -1, -1, -1), doubled).norm == pytest.approx(2.0, rel=1e-7)
    taller = torch.zeros(1, 3, 16, 12, dtype=torch.float64)
    assert physics.norm_bounds(taller).norm == pytest.approx(operator_norm(physics, taller), rel=1e-4)

def test_mask_is_shared_by_the_channels_and_drawn_per_image():
    physics, params = inpainting((3, 3, 40, 40), seed=7, keep=0.3)
    assert params["mask"].shape == (3, 1, 40, 40)
    kept = physics.A(torch.ones(3, 3, 40, 40), params)
    assert torch.equal(kept[:, 0], kept[:, 1]) and torch.equal(kept[:, 0], kept[:, 2])
    assert set(kept.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(kept[0], kept[1])  # each image of a batch has its own mask


def test_mask_comes_from_the_seed_and_keeps_the_requested_fraction():
    def mask(seed, keep=0.1):
        physics, params = inpainting((1, 3, 128, 128), seed, keep)
        return physics.A(torch.ones(1, 3, 128, 128), params)[0, 0]

    assert torch.equal(mask(3), mask(3))
    assert not torch.equal(mask(3), mask(4))
    for keep in (0.1, 0.5):
        # binomial standard deviation of the fraction: sqrt(0.25 / 16384) < 0.004
        assert float(mask(11, keep).mean()) == pytest.approx(keep, abs=0.015)
    assert float(mask(11, 1.0).mean()) == 1.0
    with pytest.raises(ValueError):
        build_physics("inpaint", sigma=[0.05], keep=0.0)


def test_an_inpainting_mask_must_be_given_before_use():
    physics = build_physics("inpaint", sigma=[0.05])
    for params in (None, {}, {"kernel": channel_blur_kernel(3)}):
        with pytest.raises(ValueError, match="mask is not set"):
            physics.A(torch.zeros(1, 3, 8, 8), params)
        with pytest.raises(ValueError, match="mask is not set"):
            physics.A_adjoint(torch.zeros(1, 3, 8, 8), params)
    with pytest.raises(ValueError, match="mask is not set"):  # given parameters without a mask: no draw
        physics.simulate(torch.zeros(1, 3, 8, 8), seed=0, params={})


@pytest.mark.parametrize("name", ["denoise", "inpaint", "deblur"])
def test_simulate_is_deterministic(name):
    physics = build_physics(name, sigma=[0.05, 0.1, 0.2], keep=0.3, blur_width=5)
    clean = torch.rand(2, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    first = physics.simulate(clean, seed=12)
    assert isinstance(first, Observation)
    again = physics.simulate(clean, seed=12)
    assert torch.equal(again.y, first.y)
    assert again.params.keys() == first.params.keys() == ({"mask"} if name == "inpaint" else set())
    assert all(torch.equal(again.params[k], v) for k, v in first.params.items())
    assert not torch.allclose(physics.simulate(clean, seed=13).y, first.y)
    assert first.y.shape == clean.shape and first.y.dtype == clean.dtype


def test_simulate_keeps_given_parameters():
    physics = build_physics("inpaint", sigma=[0.0])
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., ::2, :] = 1
    clean = torch.rand(1, 3, 16, 16)
    obs = physics.simulate(clean, seed=1, params={"mask": mask})
    assert torch.equal(obs.y, clean * mask)
    assert obs.params["mask"] is mask
    # a user's mask image (white = known) gives the same parameters
    image = torch.cat([mask[0] * 0.9, torch.zeros(2, 16, 16)])
    assert torch.equal(physics.operator_params(image, clean.shape)["mask"], mask)
    with pytest.raises(ValueError, match="16×16"):
        physics.operator_params(image[:, :, :8], clean.shape)
    # a given kernel blurs with it, not with the configured one
    blur = build_physics("deblur", sigma=[0.0], blur_width=5)
    box = {"kernel": as_kernel(torch.full((3, 3), 1 / 9))}
    obs = blur.simulate(clean, seed=1, params=box)
    assert torch.equal(obs.y, ChannelBlur([0.0], kernel=torch.full((3, 3), 1 / 9)).A(clean))
    assert not torch.allclose(obs.y, blur.simulate(clean, seed=1).y)


def test_inpainting_observation_is_zero_exactly_where_pixels_are_missing():
    clean = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    physics = build_physics("inpaint", sigma=[0.05], keep=0.3)
    obs = physics.simulate(clean, seed=2)
    mask = physics.A(torch.ones_like(clean), obs.params) > 0
    assert torch.equal(mask, obs.params["mask"].expand_as(clean) > 0)
    assert torch.all(obs.y[mask] != 0)
    assert torch.all(obs.y[~mask] == 0)


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


# --------------------------------------------------------------------------- observations: sharding


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shard_slices_per_image_params_and_keeps_shared_ones(world):
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kernel = as_kernel(torch.full((3, 3), 1 / 9))
    observed = {
        "inpaint": build_physics("inpaint", sigma=[0.05], keep=0.3).simulate(x, seed=4),
        "deblur": build_physics("deblur", sigma=[0.05], blur_width=5).simulate(x, seed=4, params={"kernel": kernel}),
    }
    for name, obs in observed.items():
        pieces = [obs.shard(rank, world) for rank in range(world)]
        for rank, piece in enumerate(pieces):
            assert torch.equal(piece.y, obs.y[rank::world])
            if name == "inpaint":  # per image (batch N): sliced with the images
                assert torch.equal(piece.params["mask"], obs.params["mask"][rank::world])
                assert piece.params["mask"].shape[0] == piece.y.shape[0]
            else:  # shared (batch 1): kept whole
                assert piece.params["kernel"] is kernel
        assert sum(p.y.shape[0] for p in pieces) == 6


@pytest.mark.parametrize("name", ["inpaint", "deblur"])
def test_sharded_observation_is_the_operator_on_the_shard(name):
    """simulate then shard = A (with the shard's own parameters) on the shard of the clean images."""
    physics = build_physics(name, sigma=[0.0], keep=0.3, blur_width=5)
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    obs = physics.simulate(x, seed=9)
    for rank in range(2):
        shard = obs.shard(rank, 2)
        assert torch.equal(shard.y, physics.A(x[rank::2], shard.params))
        z = torch.rand_like(shard.y)  # Aᵀ on the shard: its own masks
        assert torch.equal(physics.A_adjoint(z, shard.params), physics.A_adjoint(
            torch.zeros_like(obs.y).index_copy(0, torch.arange(rank, 5, 2), z), obs.params)[rank::2])
    # with noise: the shard's observation is the full batch's rows, not a redraw
    noisy = build_physics(name, sigma=[0.1], keep=0.3, blur_width=5).simulate(x, seed=9)
    assert torch.equal(noisy.shard(1, 2).y, noisy.y[1::2])


def test_observation_to_keeps_masks_binary():
    physics = build_physics("inpaint", sigma=[0.05], keep=0.3)
    obs = physics.simulate(torch.rand(2, 3, 8, 8), seed=0)
    moved = obs.to(torch.float64)
    assert moved.y.dtype == moved.params["mask"].dtype == torch.float64
    assert set(moved.params["mask"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(moved.params["mask"].float(), obs.params["mask"])


# --------------------------------------------------------------------------- the registry


def test_build_physics_types_and_unknown_name():
    assert set(PHYSICS) == {"denoise", "inpaint", "deblur", "sr", "python"}
    assert isinstance(build_physics("denoise", sigma=[0.1]), Denoise)
    assert isinstance(build_physics("inpaint", sigma=[0.1]), RandomInpainting)
    assert isinstance(build_physics("deblur", sigma=[0.1]), ChannelBlur)
    for name, cls in PHYSICS.items():
        assert cls.name == name and issubclass(cls, Physics)
    # options a class does not declare are ignored; declared ones are passed
    assert build_physics("denoise", sigma=[0.1], keep=0.3, blur_width=5).noise.sigma.tolist() == pytest.approx([0.1])
    assert build_physics("inpaint", sigma=[0.1], keep=0.3, blur_width=5).keep == 0.3
    assert build_physics("deblur", sigma=[0.1], keep=0.3, blur_width=5).kernel.shape == (1, 3, 5, 5)
    with pytest.raises(ValueError, match="unknown physics"):
        build_physics("telepathy", sigma=[0.1])


class Half(Physics):
    """A tiny new physics: ``A = ½ I``."""

    name = "half"

    def A(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        return 0.5 * x

    A_adjoint = A


@pytest.fixture
def half():
    """``Half`` registered for the test only."""
    assert "half" not in PHYSICS
    try:
        yield register_physics(Half)
    finally:
        PHYSICS.pop("half", None)


def test_registry_is_restored_after_a_new_physics(half):
    assert "half" in PHYSICS


def test_a_registered_physics_works_end_to_end(half):
    """``register_physics`` makes ``build_physics`` (and the config) return it; with the default ‖A‖
    by power iteration, wavelet FB restores with it the minimizer of the equivalent denoising problem:
    ½‖½x − y‖² + ‖θDx‖ = ¼ (½‖x − 2y‖² + ‖4θDx‖)."""
    assert half is Half and PHYSICS["half"] is Half
    physics = build_physics("half", sigma=[0.05], keep=0.3, blur_width=5)
    assert isinstance(physics, Half) and physics.name == "half"
    clean = smooth(16, 16)
    obs = physics.simulate(clean, seed=0)
    assert obs.params == {}
    assert torch.allclose(obs.y, 0.5 * clean, atol=0.3)
    bounds = physics.norm_bounds(obs.y)
    assert bounds.norm == pytest.approx(0.5, rel=1e-9) and bounds.sigma_min == 0.0

    def wavelet(physics: Physics, scale: float, rule: str) -> WaveletFB:
        weights = WaveletWeights(2, "bands", channels=3, init_lambda=0.05 * scale)
        return WaveletFB(physics, WaveletTransform("db4", 2), weights, rule).double()

    scheme = wavelet(physics, 1.0, "safe")
    ctx = scheme.prepare(obs)
    theta = torch.cat([t.flatten() for t in scheme.theta.diagonal()]).detach()
    assert float(ctx.lipschitz.detach()) == pytest.approx(0.25 / float(theta.min()) ** 2, rel=1e-8)
    solution = restore(scheme, obs, K=10, max_restarts=2000, tol=1e-12)
    assert solution.residual <= 1e-12 and solution.restarts < 2000
    assert solution.x.shape == clean.shape

    reference = restore(wavelet(build_physics("denoise", sigma=[0.05]), 4.0, "optimal"), 2 * obs.y, K=10,
                        max_restarts=2000, tol=1e-13)
    assert reference.residual <= 1e-13
    assert torch.allclose(solution.x, reference.x, rtol=0, atol=1e-8)
    assert float(torch.mean((solution.x - clean) ** 2)) < float(torch.mean((2 * obs.y - clean) ** 2))

    # and through a config: physics.name is validated against the registry
    config = resolve("denoise-wavelet-b", {"physics.name": "half", "model.step_rule": "safe"})
    assert isinstance(build_scheme(config).physics, Half)
    with pytest.raises(InputError, match="step_rule"):  # not injective
        resolve("denoise-wavelet-b", {"physics.name": "half", "model.step_rule": "optimal"})


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
    return scheme, clean, scheme.physics.simulate(clean, seed=0)


def smooth_gradient(scheme, obs: Observation, u: Coefficients) -> tuple[Coefficients, list, float]:
    """Independently of the scheme's step: ``G = θ⁻¹ D Aᵀ(A Dᵀ θ⁻¹ u − y)`` on the padded domain (A acts on
    the top-left crop of y's size, Aᵀ is zero on the padding), θ per level, and θ on the approximation."""
    theta = scheme.theta.diagonal()
    top = float(torch.cat([t.flatten() for t in theta]).max())
    tr = scheme.transform
    y, params = obs.y, obs.params
    h, w = y.shape[-2:]
    x = tr.synthesis(Coefficients(u.approx / top, tuple(d / t for d, t in zip(u.details, theta))))
    back = scheme.physics.A_adjoint(scheme.physics.A(x[..., :h, :w], params) - y, params)
    back = F.pad(back, (0, x.shape[-1] - w, 0, x.shape[-2] - h))
    d = tr.analysis(back)
    return Coefficients(d.approx / top, tuple(c / t for c, t in zip(d.details, theta))), theta, top


@pytest.mark.parametrize("case", ["inpaint", "deblur"])
def test_wavelet_fb_step_rule_safe(case):
    scheme, _, obs = fb_problem(case)
    ctx = scheme.prepare(obs)
    theta = torch.cat([t.flatten() for t in scheme.theta.diagonal()]).detach()
    a_norm = operator_norm(scheme.physics, obs.y, obs.params, 5000, 1e-15) if case == "deblur" else 1.0
    lipschitz = a_norm**2 / float(theta.min()) ** 2
    assert float(ctx.lipschitz.detach()) == pytest.approx(lipschitz, rel=1e-6)
    assert float(torch.as_tensor(ctx.strong_convexity).detach()) == 0.0
    assert float(ctx.tau.detach()) == pytest.approx(1.95 / lipschitz, rel=1e-6)
    assert float(scheme.step_size(obs).detach()) == pytest.approx(1.95 / lipschitz, rel=1e-6)
    assert float(scheme.contraction(ctx).detach()) == 1.0  # μ = 0: no contraction factor below 1


@pytest.mark.parametrize("case", ["inpaint", "deblur"])
def test_wavelet_fb_converges_to_the_minimizer(case):
    """min_u ½‖A Dᵀ θ⁻¹ u − y‖² + ‖u‖_{1,2}: the restarted scheme's limit is a fixed point of the FB map
    (recomputed here from the formula) and satisfies the optimality condition 0 ∈ G(u) + ∂‖u‖_{1,2}."""
    scheme, _, obs = fb_problem(case)
    # (the residual is that of the scheme's iterate: the weighted wavelet coefficients u)
    residuals = [restore(scheme, obs, K=10, max_restarts=T).residual for T in (1, 4, 16)]
    assert residuals[0] > residuals[1] > residuals[2]
    fp = restore(scheme, obs, K=10, max_restarts=400, tol=1e-12)
    assert fp.residual <= 1e-12 and fp.restarts < 400 and fp.x.shape == obs.y.shape

    with torch.no_grad():
        ctx = scheme.prepare(obs)
        flat, stats = fixed_point(lambda v: scheme.restart(v, ctx, 10), scheme.init(ctx), 1e-13, 400)
        assert stats.residual <= 1e-13
        assert stats.iterations >= fp.restarts  # a tighter tolerance: at least as many restarts
        assert torch.allclose(scheme.output(flat, ctx), fp.x, rtol=0, atol=1e-9)
        u = ctx.layout.levels(flat)  # the details level by level, as the reference below takes them
        grad, theta, _ = smooth_gradient(scheme, obs, u)
        tau = 1.95 * float(torch.cat([t.flatten() for t in theta]).min()) ** 2
        if case == "deblur":
            tau /= operator_norm(scheme.physics, obs.y, obs.params) ** 2
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
    scheme = build_scheme(resolve(preset))
    with pytest.raises(ValueError, match="step_rule must be one of"):
        WaveletFB(scheme.physics, scheme.transform, scheme.theta, step_rule="bad")
