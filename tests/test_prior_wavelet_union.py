"""The union-of-wavelet-bases prior (``model.prior: wavelet-union``, a Parseval tight frame) with the
Condat–Vũ primal–dual scheme: the frame's identities, the analysis operator's adjoint and norm bound, the
conjugate prox (Moreau), the exact hypergradient against finite differences, its presets and the CLI.
All numerics in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from reliability import invoke, ok

from retune_cli.config import resolve
from retune_cli.core import wavelet_union
from retune_cli.core.composed import CondatVu
from retune_cli.core.hypergrad import SolveOptions, restarts
from retune_cli.core.implicit import theta_parameters
from retune_cli.core.priors import WaveletWeights, group_soft_threshold
from retune_cli.core.wavelet_union import WaveletUnionPrior, parse_bases
from retune_cli.core.wavelets import WaveletTransform
from retune_cli.errors import InputError
from retune_cli.gradients import mode_gradient
from retune_cli.models import build_scheme

PRESETS = ["denoise-wavelet-union", "inpaint-wavelet-union"]
SMALL = {"model.bases": "haar,db2", "model.levels": 2, "model.weights": "bands", "model.init": "paper",
         "model.init_lambda": 0.1, "train.crop": 16}
# θ ≈ 0.1 (perturbed) at σ = 0.08 leaves a few groups zero (their duals inside the unit ball) and reaches its
# fixed point to 1e-14 in ~200 accelerated steps; θ = 0.3 zeroes a third of them and needs ~900.


def dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def perturbed(prior: WaveletUnionPrior, scale: float = 0.3, seed: int = 1) -> WaveletUnionPrior:
    """θ moved off its uniform start by a seeded random vector (weights differing across bases and bands)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return prior


def smooth(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A float64 ``(1, 3, h, w)`` image in [0, 1] with structure (upsampled noise)."""
    base = torch.rand(1, 3, h // 4 + 2, w // 4 + 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return F.interpolate(base, scale_factor=4, mode="bilinear")[..., :h, :w].clamp(0, 1)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("bases", ["db4,bior2.2", "db4,morl", "db4,nope", "db4,,haar", "", "haar,db2,haar"])
def test_bad_bases_are_refused_naming_the_option(bases):
    with pytest.raises(ValueError, match="model.bases"):
        parse_bases(bases)


def test_bad_bases_in_a_config_are_refused_naming_the_option():
    with pytest.raises((InputError, ValueError), match="model.bases"):
        build_scheme(resolve("denoise-wavelet-union", {"model.bases": "db4,bior2.2"}))


def test_forward_backward_is_refused_naming_both_keys():
    with pytest.raises(InputError) as refused:
        resolve("denoise-wavelet-union", {"model.scheme": "fb"})
    message = str(refused.value)
    assert "model.scheme" in message and "model.prior" in message and "wavelet-union" in message
    assert "pd" in message


# --------------------------------------------------------------------------- the frame and its operators


@pytest.mark.parametrize("levels", [1, 2])
def test_the_union_of_bases_is_a_parseval_frame(levels):
    """``Σ_m D_mᵀ D_m x / M = x`` and ``Σ_m ‖D_m x‖² / M = ‖x‖²`` (approximations included); with θ = 1 the
    prior's L takes the details: ``‖L x‖² + Σ_m ‖a_m‖²/M = ‖x‖²``."""
    names = ["haar", "db2", "sym3", "coif1"]
    x = randn(2, 3, 16, 12)
    transforms = [WaveletTransform(n, levels) for n in names]
    coeffs = [t.analysis(x) for t in transforms]
    back = sum(t.synthesis(c) for t, c in zip(transforms, coeffs)) / len(names)
    assert torch.allclose(back, x, atol=1e-10)  # PyWavelets' filters are orthogonal to ~1e-12
    energy = sum(c.approx.pow(2).sum() + sum(d.pow(2).sum() for d in c.details) for c in coeffs) / len(names)
    assert float(energy) == pytest.approx(float(x.pow(2).sum()), rel=1e-10)

    prior = WaveletUnionPrior(",".join(names), levels, init_lambda=1.0).double().requires_grad_(False)
    approx = sum(c.approx.pow(2).sum() for c in coeffs) / len(names)
    assert float(dot(prior.analysis(x), prior.analysis(x)) + approx) == pytest.approx(float(x.pow(2).sum()), rel=1e-10)


@pytest.mark.parametrize("weights", ["bands", "bands-channels"])
def test_analysis_adjoint_is_the_exact_adjoint(weights):
    """``⟨L_θ x, z⟩ = ⟨x, L_θᵀ z⟩`` for random θ (and per-channel noise factors)."""
    prior = perturbed(WaveletUnionPrior("haar,db3,sym4", 2, weights).double()).requires_grad_(False)
    prior.scale_noise([1.0, 1.0, 1.0], [1.0, 2.0, 0.5])
    x = randn(2, 3, 12, 16)
    lx = prior.analysis(x)
    assert len(lx) == 3 * 2 and lx[0].shape == (2, 3, 3, 3, 4) and lx[1].shape == (2, 3, 3, 6, 8)
    z = [randn(*b.shape, seed=i + 1) for i, b in enumerate(lx)]
    assert float(dot(lx, z)) == pytest.approx(float((x * prior.analysis_adjoint(z)).sum()), rel=1e-12)


def power_norm(prior: WaveletUnionPrior, shape: tuple[int, ...], iterations: int = 150) -> float:
    """``‖L_θ‖`` by power iteration on ``L_θᵀ L_θ``."""
    x = randn(*shape, seed=7)
    with torch.no_grad():
        for _ in range(iterations):
            x = prior.analysis_adjoint(prior.analysis(x))
            x = x / x.norm()
        return math.sqrt(float(dot(prior.analysis(x), prior.analysis(x))))


@pytest.mark.parametrize("weights", ["bands", "bands-channels"])
def test_analysis_norm_bounds_the_operator_norm(weights):
    prior = perturbed(WaveletUnionPrior("haar,db2,sym3", 2, weights).double(), scale=0.5)
    bound = prior.analysis_norm()
    assert bound.requires_grad  # σ depends on θ through it
    measured = power_norm(prior, (1, 3, 16, 16))
    assert measured <= float(bound.detach()) * (1 + 1e-9)
    assert measured >= 0.3 * float(bound.detach())  # not uselessly loose


def test_analysis_norm_is_tight_for_constant_weights():
    """θ constant: a checkerboard has no approximation in any orthogonal basis (H(π) = 0), so ‖L‖ = θ."""
    prior = WaveletUnionPrior("haar,db4,coif2", 2, init_lambda=0.7).double().requires_grad_(False)
    board = (-1.0) ** (torch.arange(16)[:, None] + torch.arange(16)[None, :])
    x = board.to(torch.float64).expand(1, 3, 16, 16)
    ratio = math.sqrt(float(dot(prior.analysis(x), prior.analysis(x)) / x.pow(2).sum()))
    theta = float(prior.analysis_norm())  # 0.7 as θ's float32 start holds it
    assert theta == pytest.approx(0.7, rel=1e-7)
    assert ratio == pytest.approx(theta, rel=1e-8)  # coif2's low-pass filter vanishes at π to ~1e-9 only


@pytest.mark.parametrize("weights", ["bands", "bands-channels"])
def test_conjugate_prox_is_the_projection_moreau(weights):
    """Moreau: ``prox_{σh*}(z) + σ prox_{h/σ}(z/σ) = z`` with ``prox_{h/σ}`` group soft-thresholding at
    1/σ; the result lies in the unit ball, is left unchanged there, and ``h(Lx) = ⟨Lx, P(Lx/ε)⟩``."""
    prior = perturbed(WaveletUnionPrior("haar,db2", 2, weights).double()).requires_grad_(False)
    dims = prior.group_dims
    x = randn(1, 3, 8, 8)
    z = [3 * randn(*b.shape, seed=i + 2) for i, b in enumerate(prior.analysis(x))]
    for sigma in (0.1, 1.0, 7.0):
        projected = prior.conjugate_prox(z, sigma)
        for p, b in zip(projected, z):
            moreau = p + sigma * group_soft_threshold(b / sigma, 1 / sigma, dims)
            assert torch.allclose(moreau, b, atol=1e-12)
            assert float(torch.sqrt((p * p).sum(dim=dims)).max()) <= 1 + 1e-12
    inside = [0.1 * b for b in z]
    inside = [b / torch.clamp(torch.sqrt((b * b).sum(dim=dims, keepdim=True)), min=1) for b in inside]
    assert all(torch.allclose(p, b, atol=1e-15) for p, b in zip(prior.conjugate_prox(inside, 1.0), inside))
    lx = prior.analysis(x)
    support = prior.conjugate_prox([b / 1e-9 for b in lx], 1.0)
    assert float(prior.value(x)) == pytest.approx(float(dot(lx, support)), rel=1e-9)


def test_noise_start_scale_noise_and_describe():
    prior = WaveletUnionPrior("haar,db2,sym3", 3, "bands-channels").double().requires_grad_(False)
    prior.init_from_noise([0.1, 0.2, 0.3], 32 * 32)
    single = WaveletWeights.universal(3, "bands-channels", [0.1, 0.2, 0.3], 32 * 32).double()
    factor = wavelet_union.NOISE_START / math.sqrt(3)
    for weights in prior.basis_weights:
        assert torch.allclose(weights.log_lambda, single.log_lambda + math.log(factor))
        assert torch.allclose(weights.log_Lambda, single.log_Lambda)
    described = prior.describe()
    assert list(described) == [f"{b} {k}" for b in ("haar", "db2", "sym3") for k in ("lambda", "Lambda")]
    assert described["db2 Lambda"].shape == (3, 3)
    x = randn(1, 3, 16, 16)
    before = prior.analysis(x)
    factors, what = prior.scale_noise([0.1, 0.2, 0.3], [0.2, 0.2, 0.15])
    assert factors == pytest.approx((2.0, 1.0, 0.5)) and what == "θ"
    after = prior.analysis(x)
    scale = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64).view(1, 3, 1, 1, 1)
    assert all(torch.allclose(a, b * scale) for a, b in zip(after, before))


# --------------------------------------------------------------------------- the scheme and its hypergradient


def small_problem(preset: str = "denoise-wavelet-union", **overrides):
    scheme = build_scheme(resolve(preset, {**SMALL, **overrides})).double()
    perturbed(scheme.theta)
    clean = smooth(16, 16)
    return scheme, scheme.physics.simulate(clean, seed=0), clean


def equilibrium_loss(scheme, obs, loss, start) -> float:
    """``L(x̂_θ)``, x̂ from ``start`` by Anderson-accelerated steps to a relative residual of 1e-14."""
    with torch.no_grad():
        ctx = scheme.prepare(obs)
        u, stats = restarts(scheme, ctx, start, 1, 1e-14, 20000, "anderson")
        assert stats.residual <= 1e-14
        return float(loss(scheme.output(u, ctx)))


def test_deq_hypergradient_equals_finite_differences_and_retune_agrees():
    """2 bases × 2 levels, θ_B (d = 10), denoising: the exact DEQ gradient from the fixed point equals central
    differences of θ ↦ L(x̂_θ) (each from û, Anderson-accelerated to 1e-14) to 1e-6 along two directions, g's
    own and a random one (all 10 coordinates cost 20 fixed points: ~20 s); ReTune at the denoising preset's K and
    T points the same way (cosine ≥ 0.99)."""
    scheme, obs, clean = small_problem()
    assert isinstance(scheme, CondatVu)

    def loss(x):
        return torch.mean((x - clean) ** 2)

    with torch.no_grad():
        ctx = scheme.prepare(obs)
        u_hat, stats = restarts(scheme, ctx, scheme.init(ctx), 1, 1e-14, 20000, "anderson")
    assert stats.residual <= 1e-14
    options = SolveOptions(1, 1, tol=1e-14, max_restarts=20000, adjoint_tol=1e-12, adjoint_max_iter=1000)
    g, solution = mode_gradient(scheme, obs, options, "deq", loss, start=u_hat)
    assert solution.adjoint is not None and solution.adjoint.residual <= 1e-10
    assert g.numel() == 10 and float(g.norm()) > 1e-6
    params = theta_parameters(scheme)
    random = randn(g.numel(), seed=5)
    for direction in (g / g.norm(), random / random.norm()):  # g's own (its norm) and a random one
        h, values = 1e-5, []
        for shift in (h, -h):
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(torch.nn.utils.parameters_to_vector(params) + shift * direction,
                                                    params)
            values.append(equilibrium_loss(scheme, obs, loss, u_hat))
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(torch.nn.utils.parameters_to_vector(params) - shift * direction,
                                                    params)
        fd = (values[0] - values[1]) / (2 * h)
        assert abs(fd) > 1e-9 and float(g @ direction) == pytest.approx(fd, rel=1e-6)
    train = resolve("denoise-wavelet-union").train
    retune, _ = mode_gradient(scheme, obs, SolveOptions(train.K, train.T, accelerate=train.accelerate), "retune", loss)
    assert float(F.cosine_similarity(retune, g, dim=0)) >= 0.99


def test_retune_gradient_on_inpainting_is_finite_and_nonzero():
    scheme, obs, clean = small_problem("inpaint-wavelet-union", **{"physics.keep": 0.5})
    g, solution = mode_gradient(scheme, obs, SolveOptions(2, 2), "retune", lambda x: torch.mean((x - clean) ** 2))
    assert solution.x.shape == clean.shape
    assert torch.all(torch.isfinite(g)) and float(g.abs().max()) > 0


# --------------------------------------------------------------------------- presets and CLI


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_builds_the_primal_dual_scheme(preset):
    config = resolve(preset)
    scheme = build_scheme(config)
    assert isinstance(scheme, CondatVu) and isinstance(scheme.theta, WaveletUnionPrior)
    assert scheme.theta.bases == ["db4", "db8", "sym5", "coif3", "haar"]
    assert scheme.multiple == 16
    names = [n for n, _ in scheme.named_parameters()]
    assert len(names) == 10 and all(n.startswith("theta.basis_weights.") for n in names)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_trains_one_step_and_restores(preset, image_folder, tmp_path):
    out = tmp_path / "run"
    ok(invoke("train", "--preset", preset, "--steps", "1", "--crop", "32", "--batch-size", "1", "--K", "1",
              "--T", "1", "--device", "cpu", "--data", image_folder, "--out", out))
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["prior"] == "wavelet-union" and config["model"]["scheme"] == "pd"
    restored = tmp_path / "restored.png"
    result = ok(invoke("restore", out / "theta.safetensors", image_folder / "im0.png", "--simulate", "-o", restored,
                       "--device", "cpu"))
    assert "PSNR" in result.output and restored.is_file()
