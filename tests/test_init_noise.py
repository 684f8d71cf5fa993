"""model.init: the noise start (universal thresholds from physics.sigma) against the paper's start."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from retune_cli.cli import app
from retune_cli.config import from_yaml, resolve
from retune_cli.core.hypergrad import restore
from retune_cli.core.priors import WaveletWeights, group_soft_threshold
from retune_cli.core.wavelets import Coefficients
from retune_cli.errors import InputError
from retune_cli.models import QUANTIZATION_NOISE, build_scheme, physics_from, prior_noise
from retune_cli.train import train

PRESETS = Path(__file__).resolve().parents[1] / "presets"
PAPER_PRESETS = {"denoise-wavelet-b", "denoise-wavelet-bc", "inpaint-wavelet", "deblur-wavelet", "inpaint-pnp",
                 "deblur-pnp", "inpaint-pnp-denoiser", "deblur-pnp-denoiser"}


def theta_per_level(scheme) -> torch.Tensor:
    """θ ``(levels, 3 bands, C)``, finest level first."""
    return torch.stack([d[0, :, :, 0, 0].t() for d in scheme.theta.diagonal()][::-1]).detach().double()


def universal(sigma: float, pixels: int) -> float:
    return sigma * math.sqrt(2 * math.log(pixels))


def test_noise_start_is_the_universal_threshold_per_channel_and_level():
    """θ_BC: θ_{j,b,c} = σ_c √(2 log(n/4^(j−1))), n = crop² (A = I, so h = 1): σ_c √(2 log n) on the finest
    scale, the universal threshold of the coarser images below it, the same for the three bands."""
    sigma, crop = (0.10, 0.25, 0.50), 64
    config = resolve("denoise-wavelet-bc", {"model.init": "noise", "train.crop": crop, "model.levels": 3})
    theta = theta_per_level(build_scheme(config))
    for j in range(3):
        expected = torch.tensor([universal(s, crop**2 // 4**j) for s in sigma], dtype=torch.float64)
        torch.testing.assert_close(theta[j], expected.expand(3, 3), rtol=1e-6, atol=0)
    assert theta[0, 0, 2] == pytest.approx(0.5 * math.sqrt(2 * math.log(crop**2)), rel=1e-6)


def test_theta_b_takes_the_rms_noise_level_and_bands_channels_keeps_the_ratios():
    """θ_B has one weight for all channels: s̄ = √(mean σ_c²); θ_BC keeps σ_c / s̄ in Λ."""
    weights_b = WaveletWeights.universal(2, "bands", [0.1, 0.25, 0.5], 32**2)
    rms = math.sqrt((0.1**2 + 0.25**2 + 0.5**2) / 3)
    finest = weights_b.diagonal()[-1].flatten()
    torch.testing.assert_close(finest, torch.full((3,), universal(rms, 32**2)))
    weights_bc = WaveletWeights.universal(2, "bands-channels", [0.1, 0.25, 0.5], 32**2)
    torch.testing.assert_close(torch.exp(weights_bc.log_lambda), torch.exp(weights_b.log_lambda))
    torch.testing.assert_close(torch.exp(weights_bc.log_Lambda[0]).sqrt(), torch.tensor([0.1, 0.25, 0.5]) / rms)
    with pytest.raises(ValueError, match="positive"):
        WaveletWeights.universal(2, "bands", [0.1, 0.0, 0.1], 32**2)


def test_the_effective_threshold_at_the_fixed_point_is_theta():
    """A = I, θ constant in each group: forward-backward's fixed point is ``x̂ = Dᵀ soft_θ(D y)`` — the
    coefficients are thresholded at θ = σ √(2 log n) on the finest scale, whatever the step τ."""
    config = resolve("denoise-wavelet-b", {"model.init": "noise", "physics.sigma": [0.1], "model.levels": 2,
                                           "train.crop": 32})
    scheme = build_scheme(config).double()
    clean = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    obs = scheme.physics.simulate(clean, seed=0)
    solution = restore(scheme, obs, 10, 2000, tol=1e-13)
    assert solution.residual <= 1e-13
    theta = [t.detach()[0, 0, 0, 0, 0] for t in scheme.theta.diagonal()]  # coarsest first, constant over bands
    assert float(theta[-1]) == pytest.approx(universal(0.1, 32**2), rel=1e-6)
    w = scheme.transform.analysis(obs.y)
    shrunk = Coefficients(w.approx, tuple(group_soft_threshold(d, t, (2,)) for d, t in zip(w.details, theta)))
    expected = scheme.transform.synthesis(shrunk)
    torch.testing.assert_close(solution.x, expected, rtol=0, atol=1e-9)
    assert float((solution.x - obs.y).abs().max()) > 0.05  # the threshold did act


def test_noise_level_scales_with_the_data_term_curvature_and_has_a_floor():
    """s_c = √h · max(σ_c, q), h = ‖A z‖²/‖z‖²: 1 for A = I, the fraction kept for inpainting; a noise-free
    physics still gets a positive θ (8-bit rounding noise q)."""
    denoise = resolve("denoise-wavelet-bc", {"model.init": "noise"})
    assert prior_noise(denoise, physics_from(denoise)) == pytest.approx([0.10, 0.25, 0.50], rel=1e-6)
    inpaint = resolve("inpaint-wavelet", {"model.init": "noise", "physics.keep": 0.3})
    assert prior_noise(inpaint, physics_from(inpaint)) == pytest.approx([0.05 * math.sqrt(0.3)] * 3, rel=0.05)
    clean = resolve("denoise-wavelet-b", {"model.init": "noise", "physics.sigma": [0.0], "train.crop": 32})
    assert prior_noise(clean, physics_from(clean)) == pytest.approx([QUANTIZATION_NOISE] * 3)
    theta = theta_per_level(build_scheme(clean))
    assert float(theta[0, 0, 0]) == pytest.approx(universal(QUANTIZATION_NOISE, 32**2), rel=1e-6)


@pytest.mark.parametrize(("preset", "margin"), [("denoise-wavelet-b", 10.0), ("inpaint-wavelet", 0.5),
                                                ("deblur-wavelet", 1.0)])  # inpainting starts from filled holes
def test_noise_start_beats_the_paper_start_at_step_0(preset, margin, tmp_path):
    """Step 1's train PSNR (θ at its start) on the built-in photographs, the preset's crop, two images."""
    def first_psnr(init: str) -> float:
        config = resolve(preset, {"model.init": init, "train.steps": 1, "train.batch_size": 2})
        return train(config, tmp_path / init).psnr

    paper, noise = first_psnr("paper"), first_psnr("noise")
    assert noise > paper + margin, (paper, noise)


def test_paper_presets_keep_the_paper_start_and_the_others_start_from_the_noise():
    for path in sorted(PRESETS.glob("*.yaml")):
        config = resolve(path.stem)
        assert config.model.init == ("paper" if path.stem in PAPER_PRESETS else "noise"), path.stem
        model = yaml.safe_load(path.read_text())["model"]
        assert config.model.init == "paper" or "init_lambda" not in model, f"{path.stem}: init_lambda is unused"


def test_init_lambda_without_the_paper_start_is_refused_naming_the_keys():
    with pytest.raises(InputError, match=r"model\.init_lambda .*model\.init=paper"):
        resolve("sr2-wavelet", {"model.init_lambda": 0.1})
    assert resolve("sr2-wavelet", {"model.init_lambda": 0.1, "model.init": "paper"}).model.init_lambda == 0.1
    assert resolve("denoise-wavelet-b", {"model.init_lambda": 0.1}).model.init_lambda == 0.1  # a paper preset
    result = CliRunner().invoke(app, ["train", "--preset", "sr2-wavelet", "--set", "model.init=universal"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert result.output.strip() == "error: model.init must be one of noise, paper, not 'universal'"


def test_a_stored_config_from_before_model_init_started_the_papers_way():
    data = yaml.safe_load(resolve("sr2-wavelet").to_yaml())
    assert data["model"].pop("init") == "noise"
    assert from_yaml(yaml.safe_dump(data), "old checkpoint").model.init == "paper"
    assert from_yaml(resolve("sr2-wavelet").to_yaml(), "new checkpoint").model.init == "noise"
