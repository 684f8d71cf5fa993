"""What training says: PnP's σ in log.csv, the progress line and show; config.yaml after --init; the
divergence hint and the end-of-run warning fit the problem."""

from __future__ import annotations

import csv
import dataclasses
import math

import pytest
import torch
import yaml
from conftest import TINY_FLAGS
from typer.testing import CliRunner

from retune_cli import checkpoint as ckpt
from retune_cli.advice import divergence_hint, unlearned_hint
from retune_cli.cli import app
from retune_cli.config import resolve
from retune_cli.core.operators import PHYSICS
from retune_cli.summary import summarize

WIDE = {"COLUMNS": "400"}  # one-line messages stay on one line
PNP_TINY = ["--crop", "16", "--batch-size", "1", "--K", "1", "--T", "1", "--device", "cpu", "--threads", "4"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


def log_rows(folder) -> list[dict]:
    with open(folder / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def learned(path) -> dict[str, float]:
    parameters = ckpt.load(path).parameters
    return {k: float(torch.exp(parameters[f"theta.log_{k}"])) for k in ("sigma", "tau")}


def test_pnp_logs_sigma_and_a_run_from_init_records_the_values_it_starts_from(image_folder, tmp_path):
    first, second = tmp_path / "pnp", tmp_path / "denoiser"
    result = invoke("train", "--preset", "inpaint-pnp", "--steps", 2, *PNP_TINY, "--data", image_folder,
                    "--out", first)
    assert result.exit_code == 0, result.output
    assert "σ " in result.output and "τ " in result.output  # the progress line
    rows = log_rows(first)
    assert "sigma" in rows[0] and all(float(r["sigma"]) > 0 for r in rows)
    start = learned(first / "theta.safetensors")
    assert float(rows[-1]["sigma"]) == pytest.approx(start["sigma"], rel=1e-6)
    assert not math.isclose(start["sigma"], resolve("inpaint-pnp-denoiser").model.init_sigma, rel_tol=1e-3)

    result = invoke("train", "--preset", "inpaint-pnp-denoiser", "--init", first / "theta.safetensors",
                    "--steps", 1, *PNP_TINY, "--data", image_folder, "--out", second)
    assert result.exit_code == 0, result.output
    text = (second / "config.yaml").read_text()
    assert text.startswith("# θ starts from train.init's checkpoint")
    model = yaml.safe_load(text)["model"]
    assert model["init_sigma"] == pytest.approx(start["sigma"], rel=1e-6)
    assert model["init_tau"] == pytest.approx(start["tau"], rel=1e-6)
    stored = ckpt.load(second / "theta.safetensors").config.model
    assert (stored.init_sigma, stored.init_tau) == (model["init_sigma"], model["init_tau"])
    assert learned(second / "theta.safetensors") == pytest.approx(start, rel=1e-6)  # σ, τ frozen: the init's
    shown = summarize(second / "theta.safetensors").facts["start"]
    assert shown.startswith(f"--init {(first / 'theta.safetensors').resolve()}") and "σ = " in shown


def test_wavelet_log_has_an_empty_sigma_column_and_config_and_show_name_the_start(trained_run, image_folder,
                                                                                  tmp_path):
    rows = log_rows(trained_run)
    assert rows and all(r["sigma"] == "" for r in rows)
    assert summarize(trained_run / "theta.safetensors").facts["start"] == "paper: λ_j = 0.05, Λ = 1"
    assert not (trained_run / "config.yaml").read_text().startswith("#")
    init = trained_run / "theta.safetensors"
    result = invoke("train", "--steps", 1, *TINY_FLAGS, "--init", init, "--data", image_folder, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    first = (tmp_path / "config.yaml").read_text().splitlines()[0]
    assert first == "# θ starts from train.init's checkpoint, not from model.init"
    assert summarize(tmp_path / "theta.safetensors").facts["start"] == f"--init {init.resolve()}"


def test_denoising_divergence_hint_does_not_suggest_the_safe_step_rule(image_folder, tmp_path):
    result = invoke("train", "--steps", 3, *TINY_FLAGS, "--lr", "1e5", "--data", image_folder, "--out", tmp_path)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "diverged" in lines[0], result.stderr
    assert "--lr (now 100000, e.g. 10000)" in lines[0] and "--clip-grad-norm" in lines[0]
    assert "step_rule" not in lines[0] and "safe" not in lines[0]


def test_divergence_hints_fit_the_scheme_and_gradient(monkeypatch):
    denoise = resolve("denoise-wavelet-b")
    assert "step_rule" not in divergence_hint(denoise)
    assert "--gradient retune" in divergence_hint(resolve("denoise-wavelet-b", {"train.gradient": "unrolled"}))
    assert "max_restarts" in divergence_hint(resolve("denoise-wavelet-b", {"train.gradient": "deq"}))
    assert "smaller --clip-grad-norm (now 2)" in divergence_hint(resolve("denoise-wavelet-b",
                                                                         {"train.clip_grad_norm": 2.0}))
    pnp = divergence_hint(resolve("inpaint-pnp"))
    assert "model.init_tau" in pnp and "--K" in pnp and "step_rule" not in pnp
    assert "init_tau" not in divergence_hint(resolve("inpaint-pnp-denoiser"))  # (σ, τ) are not learned there
    assert "step_rule" not in divergence_hint(resolve("inpaint-wavelet"))  # already safe
    monkeypatch.setattr(PHYSICS["denoise"], "identity", False)  # an injective A other than I: optimal may overshoot
    assert "--set model.step_rule=safe" in divergence_hint(denoise)


def test_end_of_run_warning_names_what_fits_the_run():
    paper = unlearned_hint(resolve("denoise-wavelet-b", {"train.crop": 64}))
    for text in ("--steps (now 100)", "--lr (now 0.05)", "--crop 256, now 64", "--set model.init=noise",
                 "--init a trained run"):
        assert text in paper
    noise = unlearned_hint(resolve("sr2-wavelet", {"train.crop": 256, "train.epochs": 2}))
    assert "model.init" not in noise and "--crop" not in noise and "--epochs (now 2)" in noise
    assert "model.init_sigma" in unlearned_hint(resolve("inpaint-pnp"))
    started = resolve("denoise-wavelet-b")
    started = dataclasses.replace(started, train=dataclasses.replace(started.train, init="/runs/a/theta.safetensors"))
    assert "--init" not in unlearned_hint(started) and "model.init" not in unlearned_hint(started)


def test_a_paper_start_that_barely_learned_is_pointed_to_the_noise_start(image_folder, tmp_path):
    result = invoke("train", "--steps", 1, *TINY_FLAGS, "--data", image_folder, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "warning: train PSNR" in result.output and "--set model.init=noise" in result.output
