"""``restore --sigma S`` / ``load(path, sigma=S)``: a checkpoint moved to another noise level, its
thresholds scaled by S/σ_train per channel (the wavelet weights θ), or its denoiser's σ (PnP)."""

from __future__ import annotations

import math
import re
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import retune_cli
from retune_cli import checkpoint as ckpt
from retune_cli.cli import app
from retune_cli.config import resolve
from retune_cli.core.physics import Observation
from retune_cli.core.wavelets import Coefficients
from retune_cli.errors import InputError
from retune_cli.images import read_image
from retune_cli.models import build_scheme
from retune_cli.restore import load_model, run

WIDE = {"COLUMNS": "300"}


def invoke(*args):
    return CliRunner().invoke(app, [*map(str, args)], env=WIDE)


def write_checkpoint(path: Path, preset: str, sigma: list[float], **overrides) -> Path:
    """A checkpoint of ``preset`` trained (nominally) at ``sigma``, θ drawn at random: wavelet λ_j around
    0.3 and Λ around 1, spread by e^±0.5 (so weights differ within groups); PnP's around its start."""
    config = resolve(preset, {"physics.sigma": sigma, **overrides})
    scheme = build_scheme(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in scheme.theta.named_parameters():
            start = math.log(0.3) if name == "log_lambda" else 0.0 if name == "log_Lambda" else p
            p.copy_(start + torch.rand(p.shape, generator=generator) - 0.5)
    ckpt.save(path, config, ckpt.learned_parameters(scheme), step=1, train_psnr=20.0)
    return path


def measured_thresholds(model, level: int = 1, band: int = 2, magnitude: float = 4.0) -> torch.Tensor:
    """The threshold the restoration applies to one wavelet coefficient per channel: for A = I a group
    holding a single non-zero coefficient b is soft-thresholded, ŵ = b − θ sign(b), so θ = b − ŵ."""
    transform = model.scheme.transform
    zeros = transform.analysis(torch.zeros(1, 3, 32, 32))
    details = [d.clone() for d in zeros.details]
    for c in range(3):  # channel c's coefficient at its own position: one group each (θ_B and θ_BC)
        details[level][0, c, band, c, c] = magnitude
    y = transform.synthesis(Coefficients(zeros.approx, tuple(details)))
    x = run(model, Observation(y), T=1000, tol=1e-7).x
    w = transform.analysis(x).details[level]
    return torch.stack([magnitude - w[0, c, band, c, c] for c in range(3)]).double()


@pytest.mark.parametrize("weights", ["bands", "bands-channels"])
def test_effective_threshold_scales_by_sigma_over_trained_sigma_per_channel(tmp_path, weights):
    path = write_checkpoint(tmp_path / "theta.safetensors", "denoise-wavelet-b", [0.1, 0.25, 0.5],
                            **{"model.weights": weights})
    before = measured_thresholds(load_model(path))
    sigma = (0.2, 0.2, 0.3)
    after = measured_thresholds(load_model(path, sigma=sigma))
    expected = torch.tensor([0.2 / 0.1, 0.2 / 0.25, 0.3 / 0.5], dtype=torch.float64)
    assert torch.all(before > 0.05) and torch.all(after < 4)  # thresholded, not zeroed
    torch.testing.assert_close(after / before, expected, rtol=1e-3, atol=0)


def test_one_sigma_scales_every_channel_from_its_own_training_noise(tmp_path):
    path = write_checkpoint(tmp_path / "theta.safetensors", "denoise-wavelet-b", [0.1, 0.25, 0.5])
    model = load_model(path, sigma=0.5)
    assert model.noise.factors == pytest.approx((5.0, 2.0, 1.0))
    assert model.scheme.physics.noise.sigma.tolist() == pytest.approx([0.5, 0.5, 0.5])  # --simulate adds S
    assert "θ × 5, 2, 1 per channel" in model.noise.describe()


def test_pnp_scales_the_denoiser_sigma_by_the_rms_ratio_and_keeps_tau(tmp_path):
    path = write_checkpoint(tmp_path / "theta.safetensors", "inpaint-pnp", [0.05])
    plain, moved = load_model(path), load_model(path, sigma=(0.1, 0.12, 0.09))
    ratio = math.sqrt((0.1**2 + 0.12**2 + 0.09**2) / 3) / 0.05
    factor = torch.exp(moved.scheme.theta.log_sigma - plain.scheme.theta.log_sigma).detach()
    assert float(factor) == pytest.approx(ratio)
    assert torch.equal(moved.scheme.theta.log_tau, plain.scheme.theta.log_tau)


def test_checkpoint_trained_without_noise_is_refused(tmp_path):
    path = write_checkpoint(tmp_path / "theta.safetensors", "denoise-wavelet-b", [0.1, 0.0, 0.1])
    result = invoke("restore", path, path.with_suffix(".png"), "--sigma", "0.1", "--device", "cpu")
    assert result.exit_code == 2 and "trained without noise" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["0", "-0.1", "nan", "inf", "abc", "0.1,0.2", "0.1,,0.2", ""])
def test_bad_sigma_is_one_line_exit_2(trained_run, image_folder, tmp_path, value):
    result = invoke("restore", trained_run / "theta.safetensors", image_folder / "im0.png", "-o",
                    tmp_path / "o.png", "--sigma", value, "--device", "cpu")
    assert result.exit_code == 2 and "--sigma" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


@pytest.fixture(scope="module")
def sample_pair(tmp_path_factory):
    """A 64×64 crop of a built-in photograph, clean and with noise σ = 0.1 (float .npy, not quantized)."""
    root = tmp_path_factory.mktemp("pair")
    x = read_image(files("retune_cli") / "samples" / "astronaut.png")[:, 32:96, 64:128]
    noisy = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    for name, image in (("clean", x), ("noisy", noisy)):
        np.save(root / f"{name}.npy", image.permute(1, 2, 0).numpy().astype(np.float32))
    return root / "clean.npy", root / "noisy.npy"


@pytest.fixture(scope="module")
def trained_at_005(tmp_path_factory) -> Path:
    """θ_B trained on the built-in samples at noise σ = 0.05 (20 short steps)."""
    out = tmp_path_factory.mktemp("runs") / "b05"
    result = invoke("train", "--steps", "20", "--crop", "48", "--batch-size", "2", "--K", "5", "--T", "4",
                    "--device", "cpu", "--set", "physics.sigma=[0.05]", "--out", out)
    assert result.exit_code == 0, result.output
    return out / "theta.safetensors"


def psnr_of(output: str) -> float:
    return float(re.search(r"PSNR ([\d.]+) dB", output).group(1))


def test_twice_the_training_noise_restores_better_with_sigma(trained_at_005, sample_pair, tmp_path):
    clean, noisy = sample_pair
    common = ("restore", trained_at_005, noisy, "--reference", clean, "--device", "cpu")
    plain = invoke(*common, "-o", tmp_path / "plain.npy")
    moved = invoke(*common, "-o", tmp_path / "moved.npy", "--sigma", "0.1")
    assert plain.exit_code == 0 and moved.exit_code == 0, plain.output + moved.output
    assert "noise σ 0.1 (trained at 0.05): θ × 2" in moved.output
    assert psnr_of(moved.output) > psnr_of(plain.output) + 2  # measured: 28.4 vs 23.7 dB


def test_simulate_with_sigma_adds_that_noise(trained_at_005, sample_pair, tmp_path):
    clean, _ = sample_pair
    result = invoke("restore", trained_at_005, clean, "--simulate", "--sigma", "0.2", "-o", tmp_path / "o.npy",
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    observation = float(re.search(r"observation ([\d.]+) dB", result.output).group(1))
    assert observation == pytest.approx(-20 * math.log10(0.2), abs=0.3)


def test_folder_restore_with_sigma_equals_single_restores(trained_run, image_folder, tmp_path):
    ckpt_path = trained_run / "theta.safetensors"
    folder = invoke("restore", ckpt_path, image_folder, "-o", tmp_path / "out", "--sigma", "0.2,0.3,0.4",
                    "--T", "2", "--device", "cpu")
    assert folder.exit_code == 0, folder.output
    assert folder.output.count("noise σ 0.2, 0.3, 0.4") == 1
    one = invoke("restore", ckpt_path, image_folder / "im1.png", "-o", tmp_path / "one.png", "--sigma",
                 "0.2,0.3,0.4", "--T", "2", "--device", "cpu")
    plain = invoke("restore", ckpt_path, image_folder / "im1.png", "-o", tmp_path / "plain.png", "--T", "2",
                   "--device", "cpu")
    assert one.exit_code == 0 and plain.exit_code == 0
    restored = read_image(tmp_path / "out" / "im1.restored.png")
    assert torch.equal(read_image(tmp_path / "one.png"), restored)
    assert not torch.equal(read_image(tmp_path / "plain.png"), restored)


def test_api_load_with_sigma(trained_run):
    path = trained_run / "theta.safetensors"
    y = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(retune_cli.load(path, T=2)(y), retune_cli.load(path, T=2, sigma=0.3)(y))
    with pytest.raises(InputError, match="sigma must be one or three positive finite noise levels"):
        retune_cli.load(path, sigma=-1)
