"""retune show: a checkpoint's parameters in natural units, its settings, --plot."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

import retune_cli
from retune_cli import checkpoint as ckpt
from retune_cli.cli import app
from retune_cli.config import resolve
from retune_cli.models import build_scheme
from retune_cli.summary import summarize

WIDE = {"COLUMNS": "200"}


def invoke(*args):
    return CliRunner().invoke(app, ["show", *map(str, args)], env=WIDE)


def test_show_wavelet_b_names_parameters_in_natural_units(trained_run):
    path = trained_run / "theta.safetensors"
    result = invoke(path)
    assert result.exit_code == 0, result.output
    for text in ("preset", "denoise-wavelet-b", "K, T", "2, 2", "step", "3", "train PSNR", "λ_j", "Λ_b", "scale j"):
        assert text in result.output
    summary = summarize(path)
    lam, big = summary.values["λ_j (j = 1 … J, finest first)"], summary.values["Λ_b"]
    raw = ckpt.load(path).parameters
    torch.testing.assert_close(lam, torch.exp(raw["theta.log_lambda"].double()).flip(0))
    assert summary.theta.shape == (4, 3, 1)
    torch.testing.assert_close(summary.theta[0, :, 0], lam[0] * big.sqrt())  # θ_{1,b} = λ_1 √Λ_b
    assert f"{summary.theta[0, 0, 0]:.4g}" in result.output
    assert len(summary.log) == 3


def test_show_plot_bands_channels_with_the_psnr_curve(image_folder, tiny_overrides, tmp_path):
    restorer = retune_cli.fit("denoise-wavelet-bc", image_folder, out=tmp_path / "bc", overrides=tiny_overrides)
    path = tmp_path / "bc" / "theta.safetensors"
    assert summarize(path).theta.shape == (4, 3, 3)
    result = invoke(path, "--plot", tmp_path / "theta.png")
    assert result.exit_code == 0, result.output
    assert "channel" in result.output and "R: " in result.output
    assert (tmp_path / "theta.png").read_bytes()[:4] == b"\x89PNG"
    assert restorer.checkpoint.step == 3


@pytest.mark.slow  # builds DRUNet twice: seconds each on a busy machine
def test_show_pnp_gives_sigma_and_tau(tmp_path):
    torch.set_num_threads(4)  # DRUNet's initialisation is slow on one thread (conftest restores the count)
    config = resolve("inpaint-pnp")
    scheme = build_scheme(config)
    path = tmp_path / "pnp.safetensors"
    ckpt.save(path, config, ckpt.learned_parameters(scheme), 0, float("nan"))
    result = invoke(path)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1] for line in result.output.splitlines() if line.strip()}
    assert math.isclose(float(rows["σ"]), config.model.init_sigma, rel_tol=1e-3)
    assert math.isclose(float(rows["τ"]), config.model.init_tau, rel_tol=1e-3)
    bad = invoke(path, "--plot", tmp_path / "x.png")
    assert bad.exit_code == 2 and "learned σ, τ" in bad.output and "no log.csv" in bad.output
    assert len(bad.output.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


def test_show_plot_pnp_draws_sigma_and_tau_against_the_steps(image_folder, tmp_path):
    """A PnP run logs σ and τ per step; show --plot draws them (and the PSNR curve)."""
    overrides = {"train.steps": 3, "train.crop": 32, "train.K": 1, "train.T": 1, "train.batch_size": 1}
    retune_cli.fit("inpaint-pnp", image_folder, out=tmp_path / "pnp", overrides=overrides)
    path = tmp_path / "pnp" / "theta.safetensors"
    summary = summarize(path)
    assert [float(r["sigma"]) > 0 for r in summary.log] == [True] * 3  # σ logged at every step
    result = invoke(path, "--plot", tmp_path / "pnp.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pnp.png").read_bytes()[:4] == b"\x89PNG"


def test_show_refuses_bad_input_in_one_line(trained_run, tmp_path):
    missing = invoke(tmp_path / "none.safetensors")
    assert missing.exit_code == 2 and len(missing.output.strip().splitlines()) == 1
    path = trained_run / "theta.safetensors"
    same = invoke(path, "--plot", path)
    assert same.exit_code == 2 and "--plot" in same.output


def test_show_reads_a_checkpoint_without_torch(trained_run):
    """What needs the engine is stored in the checkpoint: ``show`` answers without importing torch, with
    the same lines as the engine's path (an older checkpoint, without it, falls back to that path)."""
    import subprocess
    import sys

    from retune_cli.summary import summarize_stored

    path = trained_run / "theta.safetensors"
    code = ("import sys; from retune_cli.cli import app; app(['show', sys.argv[1]], standalone_mode=False); "
            "print('torch imported:', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    assert "torch imported: False" in out and "λ_j" in out
    fast, slow = summarize_stored(path), summarize(path)
    assert fast.facts == slow.facts and fast.values.keys() == slow.values.keys()
    for key, values in slow.values.items():
        assert torch.allclose(torch.tensor(fast.values[key], dtype=values.dtype), values)
    assert torch.allclose(torch.tensor(fast.theta, dtype=slow.theta.dtype), slow.theta)
