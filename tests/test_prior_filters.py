"""The learned analysis-filter prior (``model.prior: filters``, :mod:`retune_cli.core.filters`): its analysis
operator and exact adjoint, the bound on its norm, zero-mean filters, the conjugate prox, the exact (DEQ)
hypergradient of the primal–dual scheme against finite differences, its presets and the CLI — in float64
where numbers are compared."""

from __future__ import annotations

import pytest
import torch
from reliability import invoke, ok

from retune_cli.config import resolve
from retune_cli.core import implicit
from retune_cli.core.composed import CondatVu
from retune_cli.core.filters import NOISE_START, FilterPrior, dct_filters, huber
from retune_cli.core.hypergrad import SolveOptions, restarts
from retune_cli.core.operators import build_physics
from retune_cli.errors import InputError
from retune_cli.gradients import mode_gradient
from retune_cli.models import build_scheme

PRESETS = {"denoise-filters": "denoise", "deblur-filters": "deblur"}


def perturbed(seed: int = 0, channels: int = 3, **options) -> FilterPrior:
    """A float64 prior with random filters and weights (away from the DCT start)."""
    prior = FilterPrior(channels=channels, **options).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        prior.filters_raw.add_(torch.randn(prior.filters_raw.shape, generator=g, dtype=torch.float64))
        prior.log_weights.add_(0.5 * torch.randn(prior.log_weights.shape, generator=g, dtype=torch.float64))
    return prior


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------- the operator


def test_dct_start_is_orthonormal_and_zero_mean():
    atoms = dct_filters(24, 5).double().reshape(24, -1)
    assert torch.allclose(atoms @ atoms.T, torch.eye(24, dtype=torch.float64), atol=1e-6)
    assert float(atoms.sum(1).abs().max()) < 1e-6
    prior = FilterPrior(filters=8, filter_size=3)
    assert torch.allclose(prior.bank(), dct_filters(8, 3), atol=1e-6)  # normalization keeps the start


@pytest.mark.parametrize(("size", "shape"), [(3, (2, 3, 9, 11)), (5, (1, 3, 17, 23)), (7, (2, 1, 8, 13))])
def test_adjoint_is_exact(size, shape):
    """⟨L x, z⟩ = ⟨x, Lᵀ z⟩ to rounding, odd and even sides, filters larger than half the image."""
    prior = perturbed(channels=shape[1], filters=size * size - 1, filter_size=size)
    x = randn(*shape)
    (u,) = prior.analysis(x)
    assert u.shape == (shape[0], shape[1], size * size - 1, *shape[2:])
    z = randn(*u.shape, seed=2)
    lhs, rhs = float((u * z).sum()), float((x * prior.analysis_adjoint([z])).sum())
    assert lhs == pytest.approx(rhs, rel=1e-12)


@pytest.mark.parametrize(("filters", "size"), [(24, 5), (4, 3), (10, 7)])
def test_analysis_norm_bounds_power_iteration(filters, size):
    """The spectral bound is ≥ ‖L‖₂ measured by power iteration on LᵀL, and within 10 % of it."""
    prior = perturbed(seed=filters, filters=filters, filter_size=size)
    v = randn(1, 3, 40, 40, seed=3)
    for _ in range(150):
        v = prior.analysis_adjoint(prior.analysis(v))
        v = v / torch.linalg.vector_norm(v)
    measured = float(torch.linalg.vector_norm(prior.analysis(v)[0]))
    bound = float(prior.analysis_norm())
    assert measured <= bound <= 1.1 * measured, (measured, bound)


def test_analysis_norm_is_differentiable_in_theta():
    prior = perturbed()
    prior.analysis_norm().backward()
    assert bool(torch.isfinite(prior.log_weights.grad).all() and torch.isfinite(prior.filters_raw.grad).all())
    assert float(prior.log_weights.grad.abs().sum()) > 0 and float(prior.filters_raw.grad.abs().sum()) > 0


def test_zero_mean_filters_ignore_constants():
    """L(c·1) = 0 at every pixel whose k × k window lies inside the image, whatever the raw filters."""
    prior = perturbed(filters=6, filter_size=5)
    bank = prior.bank()
    assert float(bank.sum(dim=(-2, -1)).abs().max()) < 1e-12
    assert torch.allclose(torch.linalg.vector_norm(bank, dim=(-2, -1)), torch.ones(6, 1, dtype=torch.float64))
    constant = torch.full((2, 3, 12, 15), 0.7, dtype=torch.float64) * torch.tensor([1.0, 2.0, -3.0]).reshape(1, 3, 1, 1)
    (u,) = prior.analysis(constant)
    assert float(u[..., 2:-2, 2:-2].abs().max()) < 1e-12
    assert float(u.abs().max()) > 1e-3  # the borders (zero padding) do see the constant


# --------------------------------------------------------------------------- penalty and conjugate prox


def moreau_residual(prior: FilterPrior, v: torch.Tensor, sigma: float) -> float:
    """``‖prox_{σh*}(v) + σ prox_{h/σ}(v/σ) − v‖∞`` with ``prox_{h/σ}`` in closed form (soft threshold,
    or Huber's: ``t/(1 + λ/δ)`` for ``|t| ≤ δ + λ``, else ``t − λ sign t``, λ = 1/σ, δ = w δ₀ per entry)."""
    t, lam = v / sigma, 1 / sigma
    if prior.penalty == "l1":
        primal = torch.sign(t) * torch.clamp(t.abs() - lam, min=0)
    else:
        delta = prior.thresholds()
        primal = torch.where(t.abs() <= delta + lam, t / (1 + lam / delta), t - lam * torch.sign(t))
    (dual,) = prior.conjugate_prox([v], sigma)
    return float((dual + sigma * primal - v).abs().max())


@pytest.mark.parametrize("penalty", ["l1", "huber"])
@pytest.mark.parametrize("sigma", [0.3, 7.0, 400.0])
def test_conjugate_prox_satisfies_moreau(penalty, sigma):
    prior = perturbed(filters=5, filter_size=3, penalty=penalty, huber_delta=0.05)
    v = 3 * randn(2, 3, 5, 6, 7, seed=4)
    assert moreau_residual(prior, v, sigma) < 1e-12
    (p,) = prior.conjugate_prox([v], sigma)
    assert float(p.abs().max()) <= 1  # inside the dual ball
    if penalty == "l1":
        assert torch.equal(p, v.clamp(-1, 1))  # the projection onto it


def test_value_is_weighted_penalty_of_responses():
    """l1: Σ w |F * x|; huber: Σ w huber_δ(F * x) (δ on the unweighted responses)."""
    x = randn(2, 3, 9, 10)
    for penalty in ("l1", "huber"):
        prior = perturbed(filters=4, filter_size=3, penalty=penalty, huber_delta=0.3)
        r = torch.nn.functional.conv2d(x.reshape(6, 1, 9, 10), prior.bank(), padding=1).reshape(2, 3, 4, 9, 10)
        w = prior.weights().T[None, :, :, None, None]
        expected = (w * (r.abs() if penalty == "l1" else huber(r, 0.3))).sum()
        assert float(prior.value(x)) == pytest.approx(float(expected), rel=1e-12)


# --------------------------------------------------------------------------- exact hypergradient


@pytest.mark.parametrize("penalty", ["huber", "l1"])
def test_deq_hypergradient_matches_finite_differences(penalty):
    """2 filters of 3 × 3, one channel, 9 × 10 denoising: the DEQ gradient of the Condat–Vũ fixed point
    agrees with central differences of θ ↦ L(x̂_θ) on every raw parameter (d = 2·9 + 2 = 20)."""
    prior = perturbed(seed=5, channels=1, filters=2, filter_size=3, penalty=penalty, huber_delta=0.05,
                      init_lambda=0.05)
    scheme = CondatVu(build_physics("denoise", [0.1]), prior).double()
    yy, xx = torch.meshgrid(torch.arange(9.0), torch.arange(10.0), indexing="ij")
    clean = (0.5 + 0.3 * torch.sin(xx / 2) * torch.cos(yy / 3)).reshape(1, 1, 9, 10).double()
    obs = scheme.physics.simulate(clean, 0)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return torch.mean((x - clean) ** 2)

    with torch.no_grad():
        ctx = scheme.prepare(obs)
        u_hat, stats = restarts(scheme, ctx, scheme.init(ctx), 10, 1e-14, 20000, "anderson")
    assert stats.residual <= 1e-14
    options = SolveOptions(10, 1, tol=1e-14, max_restarts=20000, adjoint_tol=1e-12, adjoint_max_iter=1000)
    g_deq, _ = mode_gradient(scheme, obs, options, "deq", loss, u_hat)
    fd = implicit.finite_difference_gradient(scheme, obs, 10, loss, tol=1e-12, max_restarts=5000, start=u_hat)
    assert g_deq.shape == fd.shape == (20,)
    assert float(torch.linalg.vector_norm(g_deq - fd) / torch.linalg.vector_norm(fd)) < 1e-4


# --------------------------------------------------------------------------- options, noise, presets


@pytest.mark.parametrize(("options", "key"), [
    ({"filter_size": 4}, "model.filter_size"), ({"filter_size": 1}, "model.filter_size"),
    ({"filters": 25}, "model.filters"), ({"filters": 0}, "model.filters"), ({"penalty": "l2"}, "model.penalty"),
    ({"huber_delta": 0.0}, "model.huber_delta"), ({"init_lambda": -1.0}, "model.init_lambda"),
])
def test_bad_options_name_the_key(options, key):
    with pytest.raises(ValueError, match=key):
        FilterPrior(**options)


def test_noise_start_scaling_and_describe():
    prior = FilterPrior(filters=6, filter_size=3)
    prior.init_from_noise([0.1, 0.2, 0.4], 64 * 64)
    expected = NOISE_START["huber"] * torch.tensor([[0.1, 0.2, 0.4]]).expand(6, 3)
    assert torch.allclose(prior.weights(), expected, rtol=1e-6)
    before = prior.weights().detach().clone()
    factors, what = prior.scale_noise([0.1, 0.2, 0.4], [0.2, 0.2, 0.1])
    assert factors == pytest.approx((2.0, 1.0, 0.25)) and what == "the filter weights"
    assert torch.allclose(prior.weights(), before * torch.tensor([2.0, 1.0, 0.25]), rtol=1e-6)
    described = prior.describe()
    assert described["weights"].shape == (6, 3) and described["filters"].shape == (6 * 9,)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_build_the_primal_dual_scheme(preset):
    config = resolve(preset)
    scheme = build_scheme(config)
    assert isinstance(scheme, CondatVu) and isinstance(scheme.theta, FilterPrior)
    assert scheme.physics.name == PRESETS[preset] == config.physics.name
    assert scheme.theta.bank().shape == (24, 1, 5, 5) and scheme.theta.weights().shape == (24, 3)
    assert config.model.options["penalty"] == "huber"  # the default: linear convergence of the fixed point
    trainable = [p for p in scheme.parameters() if p.requires_grad]
    assert len(trainable) == 2 and all(any(p is q for q in scheme.theta.parameters()) for p in trainable)
    y = torch.rand(1, 3, 32, 32)  # ≥ the 25 × 25 blur kernel
    x = scheme.output(scheme.restart(scheme.init(scheme.prepare(y)), scheme.prepare(y), 3), scheme.prepare(y))
    assert x.shape == y.shape and bool(torch.isfinite(x).all())


def test_forward_backward_is_refused_naming_both_keys():
    with pytest.raises(InputError) as raised:
        resolve("denoise-filters", {"model.scheme": "fb"})
    message = str(raised.value)
    assert "model.scheme" in message and "model.prior" in message and "pd" in message


# --------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("preset", [*PRESETS, "inpaint-filters"])
def test_cli_trains_one_step_and_restores(preset, image_folder, tmp_path):
    out = tmp_path / "run"
    flags = ["--steps", "1", "--crop", "32", "--batch-size", "1", "--K", "2", "--T", "2", "--device", "cpu"]
    ok(invoke("train", "--preset", preset, *flags, "--data", image_folder, "--out", out))
    checkpoint = out / "theta.safetensors"
    assert checkpoint.is_file()
    result = ok(invoke("restore", checkpoint, image_folder / "im0.png", "--simulate", "-o", tmp_path / "x.png",
                       "--device", "cpu"))
    assert "PSNR" in result.output and (tmp_path / "x.png").is_file()
