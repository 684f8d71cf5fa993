"""The physics of issue 11: super-resolution (``sr``), Gaussian and motion blur drawn per image, your own
deepinv physics (``python``), and the exact proximal operator of the data term of every registered physics
(``prox_data``, on the image and on a scheme's padded domain); plus ``weighted_group_prox``, the prox of
the weighted ℓ2,1 norm with weights that vary inside a group (Douglas–Rachford's prox of g).

Everything in float64, against dense matrices where the size allows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retune_cli.config import resolve
from retune_cli.core.custom import FactoryPhysics, load_factory
from retune_cli.core.operators import PHYSICS, ChannelBlur, build_physics, draw_kernels, fft_norm
from retune_cli.core.physics import Observation, Params, operator_norm
from retune_cli.core.priors import group_soft_threshold, weighted_group_prox
from retune_cli.core.resolution import Downsample
from retune_cli.core.scheme import pad_to_multiple
from retune_cli.models import build_scheme

REPO = Path(__file__).resolve().parents[1]
BAYER = f"{REPO / 'examples' / 'demosaic_physics.py'}:bayer"  # absolute: independent of the working folder
BUILTIN_PHYSICS = {"denoise", "inpaint", "deblur", "sr", "python"}


def inner(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.sum(a * b))


def norm(a: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a))


def randn(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_adjoint(physics, x: torch.Tensor, params: Params | None = None, seed: int = 1) -> None:
    """⟨Ax, y⟩ = ⟨x, Aᵀy⟩ to 1e-10 relative, in float64, for a random y shaped like Ax."""
    ax = physics.A(x, params)
    y = randn(*ax.shape, seed=seed)
    aty = physics.A_adjoint(y, params)
    assert ax.dtype == aty.dtype == torch.float64
    assert aty.shape == x.shape
    assert abs(inner(ax, y) - inner(x, aty)) <= 1e-10 * norm(ax) * norm(y)


def dense(op, in_shape: tuple[int, ...], params: Params | None = None) -> torch.Tensor:
    """The m×n matrix of a linear map on tensors of ``in_shape`` (C, H, W), column by column."""
    n = int(np.prod(in_shape))
    basis = torch.eye(n, dtype=torch.float64).view(n, *in_shape)
    columns = torch.cat([op(basis[i : i + 64], params) for i in range(0, n, 64)])
    return columns.reshape(n, -1).T


def sr(factor: int, filter: str = "bicubic") -> Downsample:
    return build_physics("sr", sigma=[0.01], factor=factor, filter=filter)


def drawn_blur(kind: str, size: int = 7) -> ChannelBlur:
    return build_physics("deblur", sigma=[0.05], kernel=kind, kernel_size=size)


def bayer() -> FactoryPhysics:
    return build_physics("python", sigma=[0.02], factory=BAYER)


def test_the_new_physics_are_registered():
    assert BUILTIN_PHYSICS <= set(PHYSICS)
    assert PHYSICS["sr"] is Downsample and PHYSICS["python"] is FactoryPhysics
    assert set(Downsample.options) == {"factor", "filter"}
    assert {"kernel", "kernel_size"} <= set(ChannelBlur.options)


# --------------------------------------------------------------------------- super-resolution


# Non-square images whose sides are multiples of the factor and at least the filter's side
# (bicubic: 4·factor; Gaussian: 29 for ×4, 15 for ×2).
SR_CASES = [(2, "bicubic", (16, 24)), (2, "gaussian", (16, 22)), (4, "bicubic", (16, 28)), (4, "gaussian", (32, 36))]


@pytest.mark.parametrize(("factor", "filter", "size"), SR_CASES)
def test_super_resolution_adjoint(factor, filter, size):
    physics = sr(factor, filter)
    x = randn(2, 3, *size)
    y = physics.A(x)
    assert y.shape == (2, 3, size[0] // factor, size[1] // factor)
    assert physics.image_size(y) == size
    assert_adjoint(physics, x)


@pytest.mark.parametrize(("factor", "filter", "size"), [(2, "bicubic", (8, 10)), (2, "gaussian", (16, 18)),
                                                        (4, "bicubic", (16, 20))])
def test_super_resolution_dense_adjoint_is_the_transpose(factor, filter, size):
    physics = sr(factor, filter)
    a = dense(physics.A, (3, *size))
    at = dense(physics.A_adjoint, (3, size[0] // factor, size[1] // factor))
    assert a.shape == (3 * size[0] * size[1] // factor**2, 3 * size[0] * size[1])
    assert torch.allclose(at, a.T, rtol=0, atol=1e-13)


@pytest.mark.parametrize(("factor", "filter", "size"), [(2, "bicubic", (8, 12)), (2, "gaussian", (16, 18)),
                                                        (4, "bicubic", (16, 20))])
def test_super_resolution_norm_bounds_are_the_dense_norm(factor, filter, size):
    physics = sr(factor, filter)
    exact = float(torch.linalg.matrix_norm(dense(physics.A, (3, *size)), ord=2))
    like = torch.zeros(1, 3, size[0] // factor, size[1] // factor, dtype=torch.float64)  # an observation
    bounds = physics.norm_bounds(like)
    assert bounds.sigma_min == 0.0  # A is not injective (fewer measurements than unknowns)
    assert bounds.norm == pytest.approx(exact, rel=1e-4)
    assert physics.norm_bounds(like.expand(3, -1, -1, -1)).norm == bounds.norm  # per image shape


def exact_sr_norm(physics: Downsample, size: tuple[int, int]) -> float:
    """‖A‖ of circular filtering then decimation by f, exactly: AAᵀ is diagonal in the low-resolution
    Fourier basis, with eigenvalues (1/f²) Σ over the f² aliases of |ĥ|²."""
    f, kernel = physics.factor, physics.kernel[0, 0]
    padded = F.pad(kernel, (0, size[1] - kernel.shape[-1], 0, size[0] - kernel.shape[-2]))
    power = torch.fft.fft2(padded).abs() ** 2
    return float((power.reshape(f, size[0] // f, f, size[1] // f).sum(dim=(0, 2)) / f**2).max().sqrt())


@pytest.mark.parametrize(("factor", "filter", "size"), [(2, "bicubic", (8, 12)), (4, "bicubic", (16, 20))])
def test_exact_sr_norm_formula_is_the_dense_norm(factor, filter, size):
    physics = sr(factor, filter)
    dense_norm = float(torch.linalg.matrix_norm(dense(physics.A, (3, *size)), ord=2))
    assert exact_sr_norm(physics, size) == pytest.approx(dense_norm, rel=1e-12)


@pytest.mark.parametrize(("factor", "size"), [(2, (64, 64)), (4, (64, 64))])
def test_super_resolution_norm_bounds_at_a_training_crop(factor, size):
    """At the crops training uses, not only on tiny images: ‖A‖ to 1e-4 (an underestimate makes
    τ = 1.95/L too large)."""
    physics = sr(factor)
    like = torch.zeros(1, 3, size[0] // factor, size[1] // factor, dtype=torch.float64)
    assert physics.norm_bounds(like).norm == pytest.approx(exact_sr_norm(physics, size), rel=1e-4)


def test_super_resolution_image_size_fit_and_baseline():
    physics = sr(4)
    x = torch.rand(1, 3, 43, 38, dtype=torch.float64)
    cut = physics.fit_image(x)
    assert cut.shape == (1, 3, 40, 36) and torch.equal(cut, x[..., :40, :36])
    obs = physics.simulate(cut, seed=0)
    assert obs.y.shape == (1, 3, 10, 9) and obs.y.dtype == torch.float64
    assert physics.image_size(obs.y) == (40, 36)
    baseline = physics.baseline(obs)
    assert baseline.shape == cut.shape
    assert float(baseline.min()) >= 0 and float(baseline.max()) <= 1
    expected = F.interpolate(obs.y, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    assert torch.allclose(baseline, expected)
    # the observation is noisy with the configured σ = 0.01 around A x
    assert norm(obs.y - physics.A(cut)) / obs.y.numel() ** 0.5 == pytest.approx(0.01, rel=0.3)


def test_super_resolution_refuses_what_it_cannot_observe():
    with pytest.raises(ValueError, match="factor"):
        build_physics("sr", sigma=[0.01], factor=1)
    with pytest.raises(ValueError, match="bicubic"):
        build_physics("sr", sigma=[0.01], factor=2, filter="box")
    physics = sr(4)
    with pytest.raises(ValueError, match="multiples of 4"):
        physics.check_fits((1, 3, 30, 32))
    with pytest.raises(ValueError, match="multiples of 4"):
        physics.check_fits((1, 3, 8, 8))  # smaller than the 16×16 bicubic filter
    physics.check_fits((1, 3, 16, 20))


# --------------------------------------------------------------------------- Gaussian and motion blur


@pytest.mark.parametrize("kind", ["gaussian", "motion"])
def test_drawn_kernels_come_from_the_seed_per_image(kind):
    physics = drawn_blur(kind, 9)
    shape = torch.Size((2, 3, 20, 24))
    params = physics.draw(shape, seed=3)
    kernel = params["kernel"]
    assert kernel.shape == (2, 1, 9, 9)
    assert torch.all(torch.isfinite(kernel)) and float(kernel.min()) >= 0
    assert torch.allclose(kernel.sum(dim=(-2, -1)), torch.ones(2, 1), atol=1e-5)
    assert not torch.allclose(kernel[0], kernel[1], atol=1e-4)  # one kernel per image
    assert torch.equal(physics.draw(shape, seed=3)["kernel"], kernel)  # the seed decides them
    assert torch.equal(drawn_blur(kind, 9).draw(shape, seed=3)["kernel"], kernel)  # not the instance's state
    assert not torch.allclose(physics.draw(shape, seed=4)["kernel"], kernel, atol=1e-4)
    assert torch.equal(draw_kernels(kind, 2, 9, 3), kernel)
    assert physics.draw(torch.Size((1, 3, 20, 24)), seed=3)["kernel"].shape == (1, 1, 9, 9)


@pytest.mark.parametrize("kind", ["gaussian", "motion"])
@pytest.mark.parametrize("size", [(20, 24), (17, 31)])
def test_drawn_blur_adjoint(kind, size):
    physics = drawn_blur(kind, 7)
    x = randn(2, 3, *size)
    params = physics.draw(x.shape, seed=5)
    assert_adjoint(physics, x, params)


@pytest.mark.parametrize("kind", ["gaussian", "motion"])
def test_drawn_blur_applies_each_image_its_own_kernel(kind):
    physics = drawn_blur(kind, 7)
    x = randn(2, 3, 16, 18)
    params = physics.draw(x.shape, seed=6)
    both = physics.A(x, params)
    for i in range(2):
        alone = physics.A(x[i : i + 1], {"kernel": params["kernel"][i : i + 1]})
        assert torch.allclose(both[i : i + 1], alone, rtol=0, atol=1e-13)
    swapped = physics.A(x, {"kernel": params["kernel"].flip(0)})
    assert not torch.allclose(both, swapped, atol=1e-6)
    # sharding an observation keeps each image with its kernel
    obs = physics.simulate(x, seed=6)
    assert torch.equal(obs.params["kernel"], params["kernel"])
    shard = obs.shard(1, 2)
    assert torch.equal(shard.params["kernel"], params["kernel"][1:2])


def test_drawn_blur_needs_its_kernels():
    physics = drawn_blur("gaussian", 7)
    with pytest.raises(ValueError, match="drawn per image"):
        physics.A(randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="uniform-channel"):
        build_physics("deblur", sigma=[0.05], kernel="boxcar")
    default = build_physics("deblur", sigma=[0.05], kernel="motion")
    assert default.draw(torch.Size((1, 3, 32, 32)), 0)["kernel"].shape == (1, 1, 25, 25)  # kernel_size 25


def test_fft_norm_is_the_dense_norm_for_a_random_kernel():
    shape = (3, 10, 12)
    kernel = torch.rand(1, 3, 4, 5, generator=torch.Generator().manual_seed(0))  # float32: what as_kernel keeps
    physics = ChannelBlur([0.05], kernel=kernel)
    a = dense(physics.A, shape)
    exact = float(torch.linalg.matrix_norm(a, ord=2))
    assert fft_norm(kernel, shape[-2:]) == pytest.approx(exact, rel=1e-9)
    assert physics.norm_bounds(torch.zeros(1, *shape, dtype=torch.float64)).norm == pytest.approx(exact, rel=1e-9)
    assert torch.allclose(dense(physics.A_adjoint, shape), a.T, rtol=0, atol=1e-13)


@pytest.mark.parametrize("kind", ["gaussian", "motion"])
def test_fft_norm_of_drawn_kernels_is_the_largest_dense_norm(kind):
    shape = (3, 9, 11)
    physics = drawn_blur(kind, 5)
    params = physics.draw(torch.Size((2, *shape)), seed=7)
    norms = []
    for i in range(2):
        one = {"kernel": params["kernel"][i : i + 1]}
        a = dense(physics.A, shape, one)
        assert torch.allclose(dense(physics.A_adjoint, shape, one), a.T, rtol=0, atol=1e-13)
        norms.append(float(torch.linalg.matrix_norm(a, ord=2)))
    like = torch.zeros(2, *shape, dtype=torch.float64)
    bounds = physics.norm_bounds(like, params)
    assert bounds.norm == pytest.approx(max(norms), rel=1e-9)
    assert bounds.sigma_min == 0.0
    # and power iteration agrees with it
    assert operator_norm(physics, like, params, iterations=3000, tol=1e-14) == pytest.approx(max(norms), rel=1e-6)


# --------------------------------------------------------------------------- your own physics


def test_python_physics_adjoint_and_dense_transpose():
    physics = bayer()
    assert physics.name == "python"
    x = randn(2, 3, 12, 18)
    assert_adjoint(physics, x)
    a = dense(physics.A, (3, 4, 6))
    assert torch.allclose(dense(physics.A_adjoint, (3, 4, 6)), a.T, rtol=0, atol=1e-13)
    # an RGGB mosaic: one colour kept per pixel
    kept = physics.A(torch.ones(1, 3, 4, 6, dtype=torch.float64))
    assert torch.equal(kept.sum(dim=1), torch.ones(1, 4, 6, dtype=torch.float64))


def test_python_physics_norm_by_power_iteration():
    physics = bayer()
    like = torch.zeros(2, 3, 12, 14, dtype=torch.float64)
    bounds = physics.norm_bounds(like)
    assert bounds.norm == pytest.approx(1.0, rel=1e-6) and bounds.sigma_min == 0.0


def test_python_physics_factory_by_module_name(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    assert load_factory("examples.demosaic_physics:bayer").__name__ == "bayer"
    physics = build_physics("python", sigma=[0.02], factory="examples.demosaic_physics:bayer")
    x = randn(1, 3, 8, 8)
    assert torch.equal(physics.A(x), bayer().A(x))


def test_python_physics_factory_relative_to_the_working_folder(monkeypatch):
    monkeypatch.chdir(REPO)
    physics = build_physics("python", sigma=[0.02], factory="examples/demosaic_physics.py:bayer")
    assert physics.A(randn(1, 3, 8, 8)).shape == (1, 3, 8, 8)


@pytest.mark.parametrize(("spec", "fragment"), [
    ("no_colon", "module:function"),
    ("does/not/exist.py:bayer", "not a file"),
    (f"{REPO / 'examples' / 'demosaic_physics.py'}:nothing", "no function nothing"),
    ("retune_nonexistent_module_xyz:f", "cannot import"),
])
def test_python_physics_bad_factories(spec, fragment):
    with pytest.raises(ValueError, match=fragment):
        build_physics("python", sigma=[0.02], factory=spec)


def test_python_physics_refuses_what_is_not_an_operator(tmp_path):
    path = tmp_path / "bad_physics.py"
    path.write_text("def make(shape):\n    return 42\n")
    physics = build_physics("python", sigma=[0.02], factory=f"{path}:make")
    with pytest.raises(ValueError, match="not a deepinv LinearPhysics"):
        physics.A(randn(1, 3, 8, 8))


USER_OPERATORS = """
import torch
from deepinv.physics import Blur, Downsampling
from deepinv.physics.blur import gaussian_blur


def blur(shape):
    # not decomposable: A is a convolution (circular), its prox_l2 is deepinv's iterative solver
    return Blur(filter=gaussian_blur(sigma=(1.0, 1.5)), padding="circular")


def downsample(shape):
    # maps (C, H, W) images to (C, H/2, W/2) ones
    return Downsampling(img_size=shape, factor=2, filter="bicubic", padding="circular")
"""


@pytest.fixture
def user_operators(tmp_path) -> Path:
    path = tmp_path / "user_operators.py"
    path.write_text(USER_OPERATORS)
    return path


def test_python_physics_in_float64_with_float_parameters(user_operators):
    """A user's operator with floating-point parameters (a blur filter) is cast to the data's dtype: A and
    Aᵀ run, and are adjoint, in float64 (as compare-grads runs)."""
    physics = build_physics("python", sigma=[0.02], factory=f"{user_operators}:blur")
    assert_adjoint(physics, randn(2, 3, 12, 14))


def test_python_physics_prox_of_a_non_decomposable_operator(user_operators):
    """A user's convolution has no closed-form prox: deepinv's conjugate gradient solves it, here run to
    the dtype's precision (deepinv's default stops at 1e-4); the built-in physics are exact to 1e-8."""
    physics = build_physics("python", sigma=[0.02], factory=f"{user_operators}:blur")
    z, y = randn(1, 3, 12, 14, seed=1), randn(1, 3, 12, 14, seed=2)
    x = physics.prox_data(z, y, 0.7)
    residual = optimality(physics, x, z, y, 0.7, {})
    assert residual <= 1e-6


def test_python_physics_refuses_an_operator_that_changes_the_size(user_operators):
    """physics python takes image-to-image operators: one that maps images to smaller images (e.g. a
    downsampling) is refused on first use with a message naming the factory and the shapes."""
    physics = build_physics("python", sigma=[0.02], factory=f"{user_operators}:downsample")
    x = torch.randn(1, 3, 16, 20, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="keep the image's shape"):
        physics.A(x)


# --------------------------------------------------------------------------- prox of the data term


def prox_cases() -> list[tuple[str, object, tuple[int, int], bool]]:
    """(id, physics, image size, draws parameters) for every registered physics (all kernels, factors)."""
    return [
        ("denoise", build_physics("denoise", sigma=[0.1, 0.2, 0.3]), (12, 14), False),
        ("inpaint", build_physics("inpaint", sigma=[0.05], keep=0.3), (12, 14), True),
        ("deblur-uniform", build_physics("deblur", sigma=[0.05], blur_width=5), (12, 14), False),
        ("deblur-gaussian", drawn_blur("gaussian", 7), (12, 14), True),
        ("deblur-motion", drawn_blur("motion", 7), (12, 14), True),
        ("sr2", sr(2), (16, 20), False),
        ("sr2-gaussian", sr(2, "gaussian"), (16, 20), False),
        ("sr4", sr(4), (16, 24), False),
        ("sr4-gaussian", sr(4, "gaussian"), (32, 36), False),
        ("python-demosaic", bayer(), (12, 14), False),
    ]


CASES = {case[0]: case[1:] for case in prox_cases()}


def test_prox_cases_cover_every_registered_physics():
    assert {physics.name for physics, _, _ in CASES.values()} >= BUILTIN_PHYSICS


def optimality(physics, x, z, y, tau, params) -> float:
    """‖Aᵀ(Ax − y) + (x − z)/τ‖ relative to ‖z‖/τ + ‖Aᵀy‖."""
    r = physics.A_adjoint(physics.A(x, params) - y, params) + (x - z) / tau
    return norm(r) / (norm(z) / float(tau) + norm(physics.A_adjoint(y, params)))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("tau", [0.7, "tensor", "batch"])
def test_prox_data_optimality(name, tau):
    """x = prox_{τf}(z) ⇔ Aᵀ(Ax − y) + (x − z)/τ = 0 (float64, to 1e-8), with τ a float, a 0-d tensor
    or a (1,)-tensor (what PnP-HQS passes)."""
    physics, size, draws = CASES[name]
    shape = torch.Size((2, 3, *size))
    params = physics.draw(shape, seed=2) if draws else {}
    obs = physics.simulate(randn(*shape, seed=3), seed=2, params=params)
    z = randn(*shape, seed=4)
    tau_value = {0.7: 0.7, "tensor": torch.tensor(0.7, dtype=torch.float64),
                 "batch": torch.tensor([0.7], dtype=torch.float64)}[tau]
    x = physics.prox_data(z, obs.y, tau_value, params)
    assert x.shape == z.shape and x.dtype == torch.float64
    residual = optimality(physics, x, z, obs.y, 0.7, params)
    assert residual <= 1e-8


def test_prox_data_of_a_physics_without_one_is_refused():
    from retune_cli.core.physics import Physics

    class Toy(Physics):
        name = "toy"

        def A(self, x, params=None):
            return 2 * x

        A_adjoint = A

    with pytest.raises(ValueError, match="model.scheme=fb"):
        Toy([0.1]).prox_data(randn(1, 3, 4, 4), randn(1, 3, 4, 4), 1.0)


@pytest.mark.parametrize(("name", "size"), [("inpaint", (27, 37)), ("deblur-uniform", (27, 37)),
                                            ("deblur-motion", (20, 30)), ("sr2", (22, 26)), ("sr4", (36, 44)),
                                            ("python-demosaic", (18, 21))])
def test_padded_prox_data_leaves_the_padding_unchanged(name, size):
    """On a domain padded to multiples of 16 (sides not multiples of 16), prox_data is the physics' prox
    on the image's crop and the identity on the unobserved padding (A ≠ I)."""
    physics, _, draws = CASES[name]
    config = resolve("inpaint-wavelet-drs")
    from retune_cli.core.composed import DouglasRachford
    from retune_cli.models import build_prior, physics_from

    scheme = DouglasRachford(physics, build_prior(config, physics_from(config))).double()
    assert scheme.multiple == 16
    n = 2
    params = physics.draw(torch.Size((n, 3, *size)), seed=1) if draws else {}
    obs = physics.simulate(randn(n, 3, *size, seed=2), seed=1, params=params)
    h, w = size
    padded = (-(-h // 16) * 16, -(-w // 16) * 16)
    assert padded != size
    z = randn(n, 3, *padded, seed=5)
    out = scheme.prox_data(z, obs.y, 0.6, physics.image_size(obs.y), params)
    assert out.shape == z.shape
    assert torch.equal(out[..., h:, :], z[..., h:, :]) and torch.equal(out[..., :, w:], z[..., :, w:])
    crop = out[..., :h, :w]
    residual = optimality(physics, crop, z[..., :h, :w], obs.y, 0.6, params)
    assert residual <= 1e-8
    assert not torch.allclose(crop, z[..., :h, :w])  # A ≠ I: the crop moved


def test_padded_prox_data_of_the_identity_covers_the_padding():
    """A = I: the prox acts on the whole padded domain against the reflect-padded y."""
    scheme = build_scheme(resolve("denoise-wavelet-bc", {"model.scheme": "drs"})).double()
    y = randn(1, 3, 27, 37, seed=1)
    z = randn(1, 3, 32, 48, seed=2)
    out = scheme.prox_data(z, y, 0.6, (27, 37), {})
    assert torch.allclose(out, (z + 0.6 * pad_to_multiple(y, 16)) / 1.6, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------- weighted group prox

LAYOUTS = {"bands": (2,), "bands-channels": (1, 2)}


def theta_for(dims: tuple[int, ...], seed: int = 0, channels: int = 3) -> torch.Tensor:
    """Positive weights that vary inside the groups: per band (θ_B) or per band×channel (θ_BC)."""
    shape = (1, 1, 3, 1, 1) if dims == (2,) else (1, channels, 3, 1, 1)
    return 0.3 + 1.7 * torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def mixed_groups(shape, dims, seed: int = 0, small: float = 0.1, large: float = 3.0) -> torch.Tensor:
    """Random coefficients whose groups alternate between small (zeroed) and large (kept) ones."""
    w = randn(*shape, seed=seed)
    keep = [d for d in range(len(shape)) if d not in dims]
    group_shape = [shape[d] if d in keep else 1 for d in range(len(shape))]
    count = int(np.prod(group_shape))
    scale = torch.tensor([small if i % 3 == 0 else large for i in range(count)], dtype=torch.float64)
    return w * scale.view(group_shape)


def groupwise(t: torch.Tensor, dims) -> torch.Tensor:
    return torch.sqrt(torch.sum(t * t, dim=dims, keepdim=True))


@pytest.mark.parametrize("weights", list(LAYOUTS))
def test_weighted_group_prox_optimality(weights):
    dims = LAYOUTS[weights]
    w = mixed_groups((2, 3, 3, 4, 5), dims)
    theta, tau = theta_for(dims), 0.5
    v = weighted_group_prox(w, theta, tau, dims)
    assert v.shape == w.shape and v.dtype == torch.float64
    active = (groupwise(v, dims) > 0).expand_as(v)
    zero = ~active
    assert bool(active.any()) and bool(zero.any())  # both kinds of groups are exercised
    # active groups: v − w + τ θ² v / ‖θ v‖ = 0
    residual = v - w + tau * theta**2 * v / groupwise(theta * v, dims)
    assert float(residual[active].abs().max()) <= 1e-10
    # zero groups: 0 ∈ −w + τ θ ∂‖·‖(0) ⇔ ‖w/θ‖ ≤ τ
    ratio = groupwise(w / theta, dims).expand_as(w)
    assert torch.all(ratio[zero] <= tau)
    assert torch.all(ratio[active] > tau)


@pytest.mark.parametrize("weights", list(LAYOUTS))
def test_weighted_group_prox_minimizes_its_objective(weights):
    dims = LAYOUTS[weights]
    w = mixed_groups((1, 3, 3, 3, 3), dims, seed=1)
    theta, tau = theta_for(dims, seed=1), 0.4

    def objective(v):
        return 0.5 * torch.sum((v - w) ** 2) + tau * torch.sum(groupwise(theta * v, dims))

    v = weighted_group_prox(w, theta, tau, dims)
    best = float(objective(v))
    g = torch.Generator().manual_seed(2)
    for scale in (1e-2, 1e-4):
        for _ in range(20):
            assert float(objective(v + scale * torch.randn(v.shape, generator=g, dtype=torch.float64))) >= best - 1e-14


@pytest.mark.parametrize("weights", list(LAYOUTS))
def test_weighted_group_prox_is_group_soft_thresholding_for_constant_weights(weights):
    """θ constant inside each group (varying from group to group): group soft-thresholding at τθ."""
    dims = LAYOUTS[weights]
    shape = (2, 3, 3, 4, 5)
    w = mixed_groups(shape, dims, seed=3)
    g = torch.Generator().manual_seed(4)
    theta = 0.3 + 1.7 * torch.rand((1, 1, 1, 4, 5), generator=g, dtype=torch.float64)  # per position
    if dims == (2,):  # per channel and position too
        theta = theta * (0.5 + torch.rand((1, 3, 1, 1, 1), generator=g, dtype=torch.float64))
    tau = 0.5
    expected = group_soft_threshold(w, tau * theta, dims)
    got = weighted_group_prox(w, theta, tau, dims)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    # and a scalar θ
    assert torch.allclose(weighted_group_prox(w, torch.tensor(0.8, dtype=torch.float64), tau, dims),
                          group_soft_threshold(w, tau * 0.8, dims), rtol=0, atol=1e-12)


@pytest.mark.parametrize("weights", list(LAYOUTS))
def test_weighted_group_prox_gradcheck(weights):
    """Derivatives w.r.t. w, θ and τ (the last Newton step carries the implicit derivative)."""
    dims = LAYOUTS[weights]
    w = mixed_groups((1, 2, 3, 2, 2), dims, seed=5, small=0.05).requires_grad_(True)
    theta = theta_for(dims, seed=5, channels=2).requires_grad_(True)
    tau = torch.tensor(0.45, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():  # stay away from the kink ‖w/θ‖ = τ where the prox is not differentiable
        margin = (groupwise(w / theta, dims) - tau).abs()
        assert float(margin.min()) > 1e-2
        active = groupwise(w / theta, dims) > tau
        assert bool(active.any()) and bool((~active).any())
    assert torch.autograd.gradcheck(lambda a, b, c: weighted_group_prox(a, b, c, dims), (w, theta, tau))


def test_weighted_group_prox_of_the_wavelet_weights_layout():
    """With θ from WaveletWeights.diagonal() (the shapes DRS uses) the prox is finite and has the input's shape."""
    from retune_cli.core.priors import WaveletWeights

    for weights, dims in LAYOUTS.items():
        module = WaveletWeights(2, weights, channels=3, init_lambda=0.1).double()
        with torch.no_grad():
            module.log_Lambda.add_(0.3 * randn(*module.log_Lambda.shape, seed=6))
        assert module.group_dims == dims
        for theta in (t.detach() for t in module.diagonal()):
            w = randn(2, 3, 3, 4, 4, seed=7)
            v = weighted_group_prox(w, theta, 0.5, dims)
            assert v.shape == w.shape and torch.all(torch.isfinite(v))
            active = (groupwise(v, dims) > 0).expand_as(v)
            residual = v - w + 0.5 * theta**2 * v / groupwise(theta * v, dims).clamp_min(1e-300)
            assert float(residual[active].abs().max()) <= 1e-10


def test_observation_to_keeps_the_drawn_kernels():
    physics = drawn_blur("gaussian", 5)
    obs = physics.simulate(torch.rand(2, 3, 12, 12), seed=0)
    moved = obs.to(torch.float64)
    assert isinstance(moved, Observation) and moved.params["kernel"].dtype == torch.float64
    assert torch.allclose(physics.A(moved.y, moved.params), physics.A(obs.y.double(), obs.params))
