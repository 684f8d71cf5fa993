"""The splitting schemes of issue 11: Douglas–Rachford for the weighted ℓ2,1 wavelet prior
(``model.scheme: drs``) and plug-and-play half-quadratic splitting (``model.scheme: hqs``).

DRS and forward-backward minimize the same objective, so they reach the same x̂; DRS's contraction factor
where the theory gives one (denoising: 1/2) and the measured one; and the exact (DEQ) hypergradient of
both schemes against finite differences — all in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from retune_cli.components import composed_class
from retune_cli.config import resolve
from retune_cli.core import implicit
from retune_cli.core.composed import DouglasRachford as WaveletDRS
from retune_cli.core.composed import ForwardBackward as PnPFB
from retune_cli.core.composed import HalfQuadraticSplitting as PnPHQS
from retune_cli.core.fixed_point import fixed_point
from retune_cli.core.hypergrad import SolveOptions, restore
from retune_cli.core.operators import fft_norm
from retune_cli.core.priors import weighted_group_prox
from retune_cli.core.schemes import WaveletFB
from retune_cli.core.wavelets import Coefficients
from retune_cli.gradients import mode_gradient
from retune_cli.models import build_scheme

NEW_PRESETS = {
    "sr2-wavelet": ("sr", WaveletFB), "sr4-wavelet": ("sr", WaveletFB), "sr4-pnp": ("sr", PnPFB),
    "inpaint-wavelet-drs": ("inpaint", WaveletDRS), "deblur-wavelet-drs": ("deblur", WaveletDRS),
    "inpaint-pnp-hqs": ("inpaint", PnPHQS), "deblur-pnp-hqs": ("deblur", PnPHQS), "sr4-pnp-hqs": ("sr", PnPHQS),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def clean_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth float64 ``(1, 3, h, w)`` image in [0, 1] (upsampled noise: structure, not pure noise)."""
    base = torch.rand(1, 3, h // 4 + 2, w // 4 + 2, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)
    return F.interpolate(base, scale_factor=4, mode="bilinear")[..., :h, :w].clamp(0, 1)


PAPER_START = {"model.init": "paper", "model.init_lambda": 0.3}  # uniform θ = 0.3 (perturbed below)


def perturb(scheme, scale: float = 0.3, seed: int = 1):
    """θ moved off its uniform initial value by a seeded random vector (non-uniform weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in scheme.theta.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return scheme


def scheme_pair(fb_preset: str, drs_preset: str, overrides: dict, drs_overrides: dict | None = None):
    """FB and DRS schemes in float64 with the same (perturbed) θ."""
    fb = perturb(build_scheme(resolve(fb_preset, overrides)).double())
    drs = build_scheme(resolve(drs_preset, {**overrides, **(drs_overrides or {})})).double()
    assert isinstance(fb, WaveletFB) and isinstance(drs, WaveletDRS)
    drs.theta.load_state_dict(fb.theta.state_dict())
    return fb, drs


# --------------------------------------------------------------------------- registry and presets


def test_scheme_registry_has_the_splitting_schemes():
    pairs = {("wavelet", "fb"): WaveletFB, ("wavelet", "drs"): WaveletDRS, ("pnp", "fb"): PnPFB, ("pnp", "hqs"): PnPHQS}
    for (prior, scheme), cls in pairs.items():
        assert composed_class(scheme, prior) is cls


@pytest.mark.parametrize("preset", list(NEW_PRESETS))
def test_new_presets_build_their_scheme_and_physics(preset):
    physics, cls = NEW_PRESETS[preset]
    config = resolve(preset)
    scheme = build_scheme(config)
    assert type(scheme) is cls
    assert scheme.physics.name == physics == config.physics.name
    if physics == "sr":
        assert scheme.physics.factor == config.physics.factor == int(preset[2])
        assert config.physics.sigma == [0.01]
    trainable = [p for p in scheme.parameters() if p.requires_grad]
    assert trainable and all(any(p is q for q in scheme.theta.parameters()) for p in trainable)


def test_pnp_hqs_learning_the_denoiser_freezes_sigma_and_tau():
    scheme = build_scheme(resolve("inpaint-pnp-hqs", {"model.learn": "denoiser"}))
    assert isinstance(scheme, PnPHQS)
    assert not scheme.theta.log_sigma.requires_grad and not scheme.theta.log_tau.requires_grad
    assert all(p.requires_grad for p in scheme.theta.denoiser.parameters())


# --------------------------------------------------------------------------- Douglas–Rachford


def test_drs_step_is_douglas_rachford():
    """z⁺ = z + prox_{τg}(2 prox_{τf}(z) − z) − prox_{τf}(z), prox_{τg} = Dᵀ ∘ prox_{τ‖θ⊙·‖_{1,2}} ∘ D with
    the approximation band untouched; the output is prox_{τf}(z) cropped; z_0 = Aᵀy (zero on the padding)."""
    scheme = perturb(build_scheme(resolve("deblur-wavelet-drs", {"physics.blur_width": 5})).double())
    clean = clean_image(27, 37)
    obs = scheme.physics.simulate(clean, seed=0)
    ctx = scheme.prepare(obs)
    z = scheme.init(ctx)
    assert z.shape == (1, 3, 32, 48)
    assert torch.equal(z[..., :27, :37], scheme.physics.A_adjoint(obs.y))
    assert float(z[..., 27:, :].abs().max()) == 0 and float(z[..., :, 37:].abs().max()) == 0
    z = z + 0.1 * torch.randn(z.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    x = scheme.prox_data(z, obs.y, ctx.tau, (27, 37), obs.params)
    r = 2 * x - z
    w = scheme.theta.transform.analysis(r)
    theta = scheme.theta.diagonal()
    details = tuple(weighted_group_prox(d, t, ctx.tau, scheme.theta.group_dims) for d, t in zip(w.details, theta))
    prox_g = scheme.theta.transform.synthesis(Coefficients(w.approx, details))
    assert torch.allclose(scheme.step(z, ctx), z + prox_g - x, rtol=0, atol=1e-13)
    assert torch.allclose(scheme.output(z, ctx), x[..., :27, :37], rtol=0, atol=1e-15)
    # τ = 1/‖A‖² (μ = 0), no contraction factor known
    assert ctx.tau == pytest.approx(1 / float(fft_norm(scheme.physics.kernel, (27, 37))) ** 2, rel=1e-12)
    assert math.isnan(float(scheme.contraction(ctx)))
    assert float(scheme.step_size(obs)) == pytest.approx(ctx.tau)


@pytest.mark.parametrize(("fb_preset", "drs_preset", "overrides", "size"), [
    ("inpaint-wavelet", "inpaint-wavelet-drs", {"physics.keep": 0.3, **PAPER_START}, (27, 37)),
    ("deblur-wavelet", "deblur-wavelet-drs", {"physics.blur_width": 5, **PAPER_START}, (27, 37)),
    ("sr2-wavelet", "sr2-wavelet", PAPER_START, (26, 34)),
], ids=["inpaint", "deblur", "sr2"])
def test_drs_and_fb_reach_the_same_minimizer(fb_preset, drs_preset, overrides, size):
    """Same objective ½‖Ax − y‖² + ‖θDx‖_{1,2} on the padded domain, same θ: same x̂ (≤ 1e-6, float64,
    both converged to a relative residual of 1e-13)."""
    fb, drs = scheme_pair(fb_preset, drs_preset, overrides, {"model.scheme": "drs"})
    clean = fb.physics.fit_image(clean_image(*size))
    obs = fb.physics.simulate(clean, seed=0)
    a = restore(fb, obs, 10, 5000, tol=1e-13)
    b = restore(drs, obs, 10, 5000, tol=1e-13)
    assert a.residual <= 1e-13 and b.residual <= 1e-13, (a, b)
    assert a.x.shape == b.x.shape == clean.shape
    assert rel(b.x, a.x) <= 1e-6
    assert float((a.x - b.x).abs().max()) <= 1e-6


def test_drs_and_fb_reach_the_same_minimizer_with_kernels_drawn_per_image():
    """A batch of two images, each blurred by its own Gaussian kernel (drawn from the seed): the exact
    prox of DRS uses each image's kernel."""
    overrides = {"physics.kernel": "gaussian", "physics.kernel_size": 5, **PAPER_START}
    fb, drs = scheme_pair("deblur-wavelet", "deblur-wavelet-drs", overrides)
    clean = torch.cat([clean_image(20, 22, seed=0), clean_image(20, 22, seed=1)])
    obs = fb.physics.simulate(clean, seed=0)
    assert obs.params["kernel"].shape == (2, 1, 5, 5)
    a = restore(fb, obs, 10, 5000, tol=1e-13)
    b = restore(drs, obs, 10, 5000, tol=1e-13)
    assert a.residual <= 1e-13 and b.residual <= 1e-13
    assert rel(b.x, a.x) <= 1e-6
    # τ = 1/‖A‖², ‖A‖ the largest over the batch's kernels
    ctx = drs.prepare(obs)
    assert ctx.tau == pytest.approx(1 / float(fft_norm(obs.params["kernel"], (20, 22))) ** 2, rel=1e-12)


def test_drs_and_fb_reach_the_same_minimizer_for_denoising():
    fb, drs = scheme_pair("denoise-wavelet-bc", "denoise-wavelet-bc", {"model.init_lambda": 0.3},
                          {"model.scheme": "drs"})
    clean = clean_image(27, 37)
    obs = fb.physics.simulate(clean, seed=0)
    a = restore(fb, obs, 10, 5000, tol=1e-13)
    b = restore(drs, obs, 10, 5000, tol=1e-13)
    assert a.residual <= 1e-13 and b.residual <= 1e-13
    assert rel(b.x, a.x) <= 1e-6


def test_drs_contraction_for_denoising_is_one_half():
    """A = I: μ = L = 1, τ = 1/√(μL) = 1, ρ = 0, ω = (1 + ρ)/2 = 1/2 — and one measured step is 1/2-Lipschitz
    (R_{τf} is constant, so the step is ½(z + c))."""
    drs = perturb(build_scheme(resolve("denoise-wavelet-bc", {"model.scheme": "drs", "model.init_lambda": 0.3}))
                  .double())
    clean = clean_image(27, 37)
    obs = drs.physics.simulate(clean, seed=0)
    ctx = drs.prepare(obs)
    assert (ctx.tau, ctx.strong_convexity, ctx.lipschitz) == (1.0, 1.0, 1.0)
    assert float(drs.contraction(ctx)) == pytest.approx(0.5, abs=1e-15)

    def loss(x):
        return torch.mean((x - clean) ** 2)

    z_hat = restore(drs, obs, 1, 2000, tol=1e-13)
    start = drs.init(ctx)
    ctx_fp = drs.prepare(obs)
    u_hat, stats = fixed_point(lambda u: drs.restart(u, ctx_fp, 1), start, 1e-13, 2000)
    assert stats.residual <= 1e-13 and z_hat.residual <= 1e-13
    for point in (start, u_hat):
        lin = implicit.linearize(drs, obs, point, 1, loss)
        measured = implicit.jacobian_u_norm(lin)
        assert measured <= 0.5 + 1e-6
        assert measured >= 0.5 - 1e-6
    # K steps: (1/2)^K
    lin = implicit.linearize(drs, obs, u_hat, 3, loss)
    assert implicit.jacobian_u_norm(lin) == pytest.approx(0.125, abs=1e-6)


def test_drs_without_an_exact_data_prox_is_refused():
    from retune_cli.core.physics import Physics

    class Doubling(Physics):
        name = "doubling"

        def A(self, x, params=None):
            return 2 * x

        A_adjoint = A

    drs = build_scheme(resolve("inpaint-wavelet-drs"))
    drs.physics = Doubling([0.05])
    y = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="model.scheme=fb"):
        restore(drs, y, 1, 1)


# --------------------------------------------------------------------------- PnP-HQS


def test_pnp_hqs_step_is_denoiser_after_data_prox():
    scheme = build_scheme(resolve("deblur-pnp-hqs", {"physics.blur_width": 5})).double()
    clean = clean_image(20, 28)
    obs = scheme.physics.simulate(clean, seed=0)
    ctx = scheme.prepare(obs)
    x = scheme.init(ctx)
    assert x.shape == (1, 3, 24, 32)
    sigma, tau = math.exp(float(scheme.theta.log_sigma.detach())), math.exp(float(scheme.theta.log_tau.detach()))
    assert (sigma, tau) == pytest.approx((0.2, 0.5))
    with torch.no_grad():
        z = x.clone()
        z[..., :20, :28] = scheme.physics.prox_data(x[..., :20, :28], obs.y, tau, None)
        expected = scheme.theta.denoiser(z, torch.full((1,), sigma, dtype=torch.float64))
        got = scheme.step(x, ctx)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    assert math.isnan(float(scheme.contraction(ctx)))


# --------------------------------------------------------------------------- DEQ = finite differences


def deq_and_fd(scheme, clean: torch.Tensor, K: int, fd_tol: float = 1e-14):
    """(DEQ gradient from the fixed point, central finite differences of θ ↦ L(x̂_θ)), flat, float64."""
    obs = scheme.physics.simulate(clean, seed=0)

    def loss(x):
        return torch.mean((x - clean) ** 2)

    ctx = scheme.prepare(obs)
    u_hat, stats = fixed_point(lambda u: scheme.restart(u, ctx, K), scheme.init(ctx), 1e-14, 100000)
    assert stats.residual <= 1e-14
    options = SolveOptions(K, 1, tol=1e-13, max_restarts=100000, adjoint_tol=1e-12, adjoint_max_iter=1000)
    g, solution = mode_gradient(scheme, obs, options, "deq", loss, start=u_hat)
    assert solution.adjoint is not None and solution.adjoint.residual <= 1e-10
    fd = implicit.finite_difference_gradient(scheme, obs, K, loss, tol=fd_tol)
    assert g.dtype == fd.dtype == torch.float64 and g.shape == fd.shape
    assert float(fd.norm()) > 0
    return g, fd


def test_deq_equals_finite_differences_for_drs_denoising():
    """θ_B (7 numbers), DRS for denoising (contracting, ω = 1/2): DEQ = FD to 1e-5."""
    scheme = perturb(build_scheme(resolve("denoise-wavelet-b", {"model.scheme": "drs", "model.init_lambda": 0.3}))
                     .double())
    g, fd = deq_and_fd(scheme, clean_image(24, 24), K=1)
    assert g.numel() == 7
    assert rel(g, fd) <= 1e-5


@pytest.mark.slow
def test_deq_equals_finite_differences_for_drs_deblurring():
    """μ = 0 (no known contraction factor): DEQ = FD still holds at the fixed point (about 20 s)."""
    scheme = perturb(build_scheme(resolve("deblur-wavelet-drs", {"physics.blur_width": 5, **PAPER_START,
                                                                 "model.weights": "bands"})).double())
    g, fd = deq_and_fd(scheme, clean_image(24, 24), K=5)
    assert rel(g, fd) <= 1e-5


def test_deq_equals_finite_differences_for_pnp_hqs():
    """θ = (log σ, log τ), builtin DRUNet, inpainting with half the pixels kept, 16×16, the preset's σ = 0.2,
    τ = 0.5 (about 200 restarts to 1e-14; a smaller τ contracts more slowly, as prox_{τf} → I)."""
    scheme = build_scheme(resolve("inpaint-pnp-hqs", {"physics.keep": 0.5})).double()
    assert [n for n, p in scheme.named_parameters() if p.requires_grad] == ["theta.log_sigma", "theta.log_tau"]
    g, fd = deq_and_fd(scheme, clean_image(16, 16), K=1, fd_tol=1e-13)
    assert rel(g, fd) <= 1e-5


@pytest.mark.parametrize("preset", ["sr2-wavelet", "sr4-pnp-hqs", "inpaint-wavelet-drs"])
def test_retune_gradient_of_the_new_problems_is_finite_and_nonzero(preset):
    scheme = build_scheme(resolve(preset)).double()
    clean = scheme.physics.fit_image(clean_image(32, 36))
    obs = scheme.physics.simulate(clean, seed=0)
    g, solution = mode_gradient(scheme, obs, SolveOptions(2, 2), "retune", lambda x: torch.mean((x - clean) ** 2))
    assert solution.x.shape == clean.shape
    assert torch.all(torch.isfinite(g)) and float(g.abs().max()) > 0


@pytest.mark.parametrize("K, T", [(3, 2), (1, 1)])
def test_drs_inpainting_gradient_is_finite_at_small_K_T(K, T):
    """Early DRS iterates of inpainting hold all-zero wavelet groups: their prox (inactive) must not give a
    NaN gradient (a 0 · ∞ through ``where``) — the preset trains at any (K, T)."""
    scheme = build_scheme(resolve("inpaint-wavelet-drs"))
    clean = clean_image(64, 64).float()
    obs = scheme.physics.simulate(clean, seed=0)
    g, _ = mode_gradient(scheme, obs, SolveOptions(K, T), "retune", lambda x: torch.mean((x - clean) ** 2))
    assert torch.all(torch.isfinite(g)) and float(g.abs().max()) > 0


def test_weighted_group_prox_of_a_zero_group_has_a_finite_gradient():
    w = torch.zeros(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    theta = torch.full((1, 3, 1, 1), 0.5, dtype=torch.float64, requires_grad=True)
    out = weighted_group_prox(w, theta, 1.0, (1,))
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.isfinite(w.grad).all() and torch.isfinite(theta.grad).all()
