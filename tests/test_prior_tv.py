"""The total-variation prior (``model.prior: tv``, :mod:`retune_cli.core.tv`) with the primal–dual scheme.

In float64: ∇ᵀ is the exact adjoint of ∇ (both variants, odd sizes); the norm bound holds and is nearly
tight; the conjugate prox is the projection onto the dual ball (Moreau's identity); the primal–dual
fixed point minimizes ½‖Ax − y‖² + g_θ(x); the DEQ hypergradient equals finite differences. Then the
registry (only ``pd`` composes with TV), the noise start and scaling, and the presets through the CLI."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from reliability import invoke, ok, one_line_error

from retune_cli.config import resolve
from retune_cli.core.composed import CondatVu
from retune_cli.core.hypergrad import SolveOptions, restore
from retune_cli.core.implicit import theta_parameters
from retune_cli.core.prior import Prior
from retune_cli.core.scheme import scheme_class
from retune_cli.core.tv import NOISE_FACTOR, TVPrior, gradient, gradient_adjoint
from retune_cli.errors import InputError
from retune_cli.gradients import mode_gradient
from retune_cli.models import build_scheme

VARIANTS = ["isotropic", "anisotropic"]
PRESETS = {"denoise-tv": "denoise", "deblur-tv": "deblur", "inpaint-tv": "inpaint"}
TINY = ["--steps", "1", "--crop", "32", "--batch-size", "1", "--K", "2", "--T", "1", "--device", "cpu"]


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def tv_prior(tv: str = "isotropic", channels: int = 3, seed: int = 0) -> TVPrior:
    """A float64 TV prior with weights spread over e^±0.5 around 0.1 (direction × channel)."""
    prior = TVPrior(tv, 0.1, channels).double()
    with torch.no_grad():
        prior.log_weight.add_(0.5 * torch.rand(prior.log_weight.shape, generator=torch.Generator().manual_seed(seed),
                                               dtype=torch.float64) * 2 - 0.5)
    return prior


def smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A piecewise-smooth float64 ``(1, 3, h, w)`` image in [0, 1]."""
    base = torch.rand(1, 3, h // 4 + 2, w // 4 + 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return F.interpolate(base, scale_factor=4, mode="nearest")[..., :h, :w]


def tv_scheme(preset: str, weight: float, seed: int = 0, **overrides) -> CondatVu:
    """The preset's scheme in float64, its weights spread over e^±0.5 around ``weight`` (the test problems'
    weights are chosen so that few pixels are flat at the minimizer: the fixed point is then quick to reach)."""
    scheme = build_scheme(resolve(preset, {"train.crop": 16, **overrides})).double()
    scheme.theta.load_state_dict(tv_prior(scheme.theta.tv, seed=seed).state_dict())
    with torch.no_grad():
        scheme.theta.log_weight.add_(math.log(weight / 0.1))
    return scheme


# --------------------------------------------------------------------------- the operator


@pytest.mark.parametrize("tv", VARIANTS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 1, 6), (2, 3, 7, 9), (1, 2, 16, 5), (3, 1, 11, 11)])
def test_analysis_adjoint(tv, shape):
    """⟨W∇x, z⟩ = ⟨x, (W∇)ᵀz⟩ for random x and z (z also past the last row/column, which ∇ never fills)."""
    prior = tv_prior(tv, shape[1])
    x, z = randn(*shape, seed=1), randn(shape[0], shape[1], 2, *shape[2:], seed=2)
    (lx,) = prior.analysis(x)
    assert lx.shape == z.shape
    lhs, rhs = float((lx * z).sum().detach()), float((x * prior.analysis_adjoint([z])).sum().detach())
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


def test_gradient_is_forward_differences_with_neumann_boundary():
    x = torch.arange(12, dtype=torch.float64).reshape(1, 1, 3, 4) ** 2
    g = gradient(x)
    assert torch.equal(g[0, 0, 0, :2], x[0, 0, 1:] - x[0, 0, :-1]) and torch.all(g[0, 0, 0, 2] == 0)
    assert torch.equal(g[0, 0, 1, :, :3], x[0, 0, :, 1:] - x[0, 0, :, :-1]) and torch.all(g[0, 0, 1, :, 3] == 0)
    assert torch.all(gradient(torch.ones(1, 2, 5, 6)) == 0)  # constants have no variation
    assert float(gradient_adjoint(gradient(x)).sum()) == pytest.approx(0, abs=1e-9)  # ∇ᵀ maps into 1⊥


@torch.no_grad()
def power_norm(prior: TVPrior, shape: tuple[int, ...], iterations: int = 300) -> float:
    """‖W∇‖₂ by power iteration on (W∇)ᵀW∇."""
    x = randn(*shape, seed=3)
    for _ in range(iterations):
        x = prior.analysis_adjoint(prior.analysis(x))
        x = x / torch.linalg.vector_norm(x)
    return math.sqrt(float(torch.linalg.vector_norm(prior.analysis_adjoint(prior.analysis(x)))))


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (1, 3, 5, 40)])
def test_analysis_norm_bounds_the_operator_norm(shape):
    """The bound 2 max_c √(w₁² + w₂²) is ≥ the power-iteration norm, and within 5 % of it on a 32×32 image
    (the bound is the infinite image's norm); it is differentiable in θ."""
    prior = tv_prior()
    bound, measured = prior.analysis_norm(), power_norm(prior, shape)
    assert float(bound.detach()) >= measured
    if shape[-1] == shape[-2]:
        assert float(bound.detach()) <= 1.05 * measured
    bound.backward()
    grad = prior.log_weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# --------------------------------------------------------------------------- the conjugate prox


@pytest.mark.parametrize("tv", VARIANTS)
@pytest.mark.parametrize("sigma", [0.3, 2.0])
def test_conjugate_prox_satisfies_moreau_identity(tv, sigma):
    """prox_{σh*}(z) + σ prox_{h/σ}(z/σ) = z, with prox_{h/σ} the (group) soft threshold at 1/σ."""
    prior = tv_prior(tv)
    z = 2 * randn(2, 3, 2, 5, 6, seed=4)
    (p,) = prior.conjugate_prox([z], sigma)
    v = z / sigma
    size = v.pow(2).sum(2, keepdim=True).sqrt() if tv == "isotropic" else v.abs()
    shrunk = v * (1 - 1 / (sigma * size)).clamp_min(0)  # (group) soft threshold of v at 1/σ
    assert torch.allclose(p + sigma * shrunk, z, rtol=0, atol=1e-12)


@pytest.mark.parametrize("tv", VARIANTS)
def test_conjugate_prox_is_the_projection_onto_the_dual_ball(tv):
    """Inside the ball (‖p_{c,·,i,j}‖₂ ≤ 1 or |p| ≤ 1), the identity there, idempotent, and the obtuse-angle
    property ⟨z − Pz, q − Pz⟩ ≤ 0 for points q of the ball."""
    prior = tv_prior(tv)
    z = 2 * randn(1, 3, 2, 6, 7, seed=5)
    (p,) = prior.conjugate_prox([z], 1.0)
    size = p.pow(2).sum(2).sqrt() if tv == "isotropic" else p.abs()
    assert float(size.max()) <= 1 + 1e-12
    assert (size < 1 - 1e-9).any() and (size > 1 - 1e-9).any()  # both kinds of points
    assert torch.allclose(prior.conjugate_prox([p], 5.0)[0], p, rtol=0, atol=1e-14)
    for seed in range(5):
        (q,) = prior.conjugate_prox([3 * randn(*z.shape, seed=10 + seed)], 1.0)
        assert float(((z - p) * (q - p)).sum()) <= 1e-10


def test_value_is_the_weighted_total_variation():
    """g(x) = Σ √((w₁ D_v x)² + (w₂ D_h x)²) (isotropic), Σ |w₁ D_v x| + |w₂ D_h x| (anisotropic), by hand."""
    x = randn(2, 3, 5, 4, seed=6)
    for tv in VARIANTS:
        prior = tv_prior(tv)
        w = torch.exp(prior.log_weight)
        dv = torch.zeros_like(x)
        dh = torch.zeros_like(x)
        dv[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
        dh[..., :-1] = x[..., 1:] - x[..., :-1]
        a, b = w[0].view(1, 3, 1, 1) * dv, w[1].view(1, 3, 1, 1) * dh
        expected = (a**2 + b**2).sqrt().sum() if tv == "isotropic" else (a.abs() + b.abs()).sum()
        assert float(prior.value(x)) == pytest.approx(float(expected), rel=1e-12)


def test_options_are_checked():
    with pytest.raises(ValueError, match="model.tv"):
        TVPrior("bogus")
    with pytest.raises(ValueError, match="model.init_lambda"):
        TVPrior("isotropic", 0.0)
    assert TVPrior.capabilities() == {"analysis", "noise start"}
    assert TVPrior.options == {"tv": "isotropic", "init_lambda": 0.05, "colour": "rgb"}


# --------------------------------------------------------------------------- the primal–dual scheme


def objective(scheme: CondatVu, obs, x: torch.Tensor) -> float:
    """½‖A x − y‖² + g_θ(x)."""
    return float(0.5 * (scheme.physics.A(x, obs.params) - obs.y).pow(2).sum() + scheme.theta.value(x))


def fgp_denoise(prior: TVPrior, y: torch.Tensor, iterations: int = 3000) -> torch.Tensor:
    """argmin ½‖x − y‖² + g(x) by FISTA on the dual (Beck–Teboulle's FGP), written here: x = y − Lᵀp with
    p = argmin_{p ∈ dual ball} ½‖y − Lᵀp‖², step 1/‖L‖²."""
    step = 1 / float(prior.analysis_norm()) ** 2
    p = q = prior.analysis(torch.zeros_like(y))[0]
    t = 1.0
    for _ in range(iterations):
        (new,) = prior.conjugate_prox([q + step * prior.analysis(y - prior.analysis_adjoint([q]))[0]], 1.0)
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        p, q, t = new, new + (t - 1) / t_new * (new - p), t_new
    return y - prior.analysis_adjoint([p])


@pytest.mark.parametrize("tv", VARIANTS)
def test_primal_dual_denoising_reaches_the_tv_minimizer(tv):
    """Denoising: the Condat–Vũ fixed point is the minimizer that an independent dual solver (FGP) finds."""
    scheme = tv_scheme("denoise-tv", 0.02, **{"model.tv": tv})
    clean = smooth_image(8, 9)
    obs = scheme.physics.simulate(clean, seed=0)
    solution = restore(scheme, obs, 10, 3000, tol=1e-13, accelerate="anderson")
    assert solution.residual <= 1e-13
    reference = fgp_denoise(scheme.theta, obs.y)
    assert float((solution.x - reference).abs().max()) <= 1e-6
    assert objective(scheme, obs, solution.x) <= objective(scheme, obs, reference) + 1e-10


@pytest.mark.parametrize("tv", VARIANTS)
def test_primal_dual_fixed_point_minimizes_the_deblurring_objective(tv):
    """Deblurring (μ = 0): no perturbation of the fixed point x̂ — random, or along sign patterns that keep
    flat parts flat — lowers ½‖Ax − y‖² + g_θ(x); x̂ beats the observation's Aᵀy by far."""
    scheme = tv_scheme("deblur-tv", 0.01, **{"physics.blur_width": 3, "model.tv": tv})
    clean = smooth_image(8, 8)
    obs = scheme.physics.simulate(clean, seed=0)
    solution = restore(scheme, obs, 10, 3000, tol=1e-13, accelerate="anderson")
    assert solution.residual <= 1e-13
    x = solution.x
    best = objective(scheme, obs, x)
    assert best < objective(scheme, obs, scheme.physics.A_adjoint(obs.y, obs.params)) - 1e-3
    generator = torch.Generator().manual_seed(7)
    directions = [torch.randn(x.shape, generator=generator, dtype=torch.float64) for _ in range(8)]
    directions += [torch.sign(torch.randn(1, 3, 1, 1, generator=generator, dtype=torch.float64)) * (x > x.mean())]
    for d in directions:
        for eps in (1e-2, 1e-4, 1e-6):
            assert objective(scheme, obs, x + eps * d) >= best - 1e-12
            assert objective(scheme, obs, x - eps * d) >= best - 1e-12


DEQ_CASES = {  # preset, overrides, weight: problems whose fixed point converges fast (few flat groups)
    "denoise-isotropic": ("denoise-tv", {}, 0.02),
    "denoise-anisotropic": ("denoise-tv", {"model.tv": "anisotropic"}, 0.02),
    "deblur-isotropic": ("deblur-tv", {"physics.blur_width": 3}, 0.01),
}


@pytest.mark.parametrize("case", list(DEQ_CASES))
def test_deq_hypergradient_equals_finite_differences(case):
    """d/dh L(x̂(θ + h d)) by central differences (x̂ to a residual of 1e-13) = ⟨g_DEQ, d⟩ for a random
    direction d of the 6 weights (2 fixed points instead of 12), to 1e-6; ReTune at K = 40, T = 5 is
    within a few degrees of it."""
    preset, overrides, weight = DEQ_CASES[case]
    scheme = tv_scheme(preset, weight, **overrides)
    clean = smooth_image(8, 8)
    obs = scheme.physics.simulate(clean, seed=0)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return torch.mean((x - clean) ** 2)

    exact = SolveOptions(10, 1, tol=1e-13, max_restarts=3000, adjoint_tol=1e-12, adjoint_max_iter=1000,
                         accelerate="anderson")
    g_deq, solution = mode_gradient(scheme, obs, exact, "deq", loss)
    assert solution.residual <= 1e-13 and solution.adjoint.residual <= 1e-12
    (weights,) = theta_parameters(scheme)
    d = randn(*weights.shape, seed=8)
    h, values = 1e-5, []
    for shift in (h, -h):
        with torch.no_grad():
            weights.add_(shift * d)
        values.append(float(loss(restore(scheme, obs, 10, 3000, tol=1e-13, accelerate="anderson").x)))
        with torch.no_grad():
            weights.sub_(shift * d)
    fd = (values[0] - values[1]) / (2 * h)
    assert abs(fd) > 1e-6  # a derivative worth comparing
    assert float(g_deq @ d.view(-1)) == pytest.approx(fd, rel=1e-6)
    g_retune, _ = mode_gradient(scheme, obs, SolveOptions(40, 5), "retune", loss)
    assert float(g_retune @ g_deq / (g_retune.norm() * g_deq.norm())) >= 0.99


# --------------------------------------------------------------------------- registry, starts, presets


def test_only_the_primal_dual_scheme_composes_with_tv():
    assert scheme_class("pd", TVPrior) is CondatVu
    for scheme in ("fb", "drs", "hqs"):
        with pytest.raises(ValueError, match=f"model.scheme {scheme}.*model.prior tv.*use model.scheme pd"):
            scheme_class(scheme, TVPrior)
    with pytest.raises(InputError, match="model.scheme fb.*model.prior tv"):
        resolve("denoise-tv", {"model.scheme": "fb"})


def test_noise_start_and_noise_scaling():
    """The noise start puts w_{d,c} = κ s_c in both directions; scale_noise multiplies channel c by s'_c/s_c."""
    prior = TVPrior(channels=3)
    prior.init_from_noise([0.1, 0.2, 0.05], 128 * 128)
    expected = NOISE_FACTOR * torch.tensor([0.1, 0.2, 0.05], dtype=torch.float64)
    assert torch.allclose(prior.describe()["weight"], expected.expand(2, 3), rtol=1e-6)
    factors, what = prior.scale_noise([0.1, 0.2, 0.05], [0.2, 0.2, 0.025])
    assert factors == (2.0, 1.0, 0.5) and what == "the TV weights"
    assert torch.allclose(prior.describe()["weight"], torch.tensor([0.2, 0.2, 0.025]).double() * NOISE_FACTOR,
                          rtol=1e-6)
    with pytest.raises(ValueError):
        prior.init_from_noise([0.1, 0.0, 0.1], 100)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_build_the_primal_dual_scheme(preset):
    config = resolve(preset)
    scheme = build_scheme(config)
    assert type(scheme) is CondatVu and isinstance(scheme.theta, TVPrior)
    assert scheme.physics.name == PRESETS[preset] and scheme.theta.tv == "isotropic"
    assert config.model.init == "noise"
    assert [p for p in scheme.parameters() if p.requires_grad] == [scheme.theta.log_weight]
    assert scheme.theta.log_weight.shape == (2, 3)
    noise = max(config.physics.sigma)
    assert 0 < float(scheme.theta.describe()["weight"].max()) <= NOISE_FACTOR * noise  # κσ√h, h ≤ 1
    assert isinstance(scheme.theta, Prior)
    anisotropic = build_scheme(resolve(preset, {"model.tv": "anisotropic"}))
    assert anisotropic.theta.tv == "anisotropic"


# --------------------------------------------------------------------------- through the CLI


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("RETUNE_THREADS", "1")


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_trains_one_step_and_restores(preset, image_folder, tmp_path):
    out = tmp_path / "run"
    ok(invoke("train", "--preset", preset, *TINY, "--data", image_folder, "--out", out))
    assert (out / "theta.safetensors").is_file()
    result = ok(invoke("restore", out / "theta.safetensors", image_folder / "im0.png", "--simulate", "-o",
                       tmp_path / "restored.png", "--device", "cpu"))
    assert "PSNR" in result.output and (tmp_path / "restored.png").is_file()
    if preset == "denoise-tv":  # trained at σ = 0.08: restore --sigma scales the weights
        result = ok(invoke("restore", out / "theta.safetensors", image_folder / "im0.png", "--simulate", "--sigma",
                           "0.12", "-o", tmp_path / "scaled.png", "--device", "cpu"))
        assert "the TV weights × 1.5" in result.output


def test_train_refuses_tv_with_forward_backward(image_folder, tmp_path):
    line = one_line_error(invoke("train", "--preset", "denoise-tv", "--set", "model.scheme=fb", *TINY, "--data",
                                 image_folder, "--out", tmp_path / "run"), "model.scheme", "model.prior")
    assert "pd" in line
    assert not (tmp_path / "run").exists()
