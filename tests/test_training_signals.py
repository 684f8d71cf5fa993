"""Training signals that follow the measured numbers: the end-of-run PSNR warning, validation solved as eval
solves, restarts counted and capped steps reported, and no bar of numbers before a divergence's refusal."""

from __future__ import annotations

import csv
import io

import pytest
from reliability import invoke, ok
from rich.console import Console

from retune_cli import advice
from retune_cli.config import resolve
from retune_cli.validation import observation_psnr

TINY = ["--crop", "32", "--batch-size", "2", "--device", "cpu"]


def _log(folder) -> list[dict]:
    return list(csv.DictReader(open(folder / "log.csv")))


def test_the_psnr_warning_says_how_far_above_or_below_the_observations(image_folder):
    """sr: a run 4 dB below its observations is told so, with what to try — not "within 1 dB"."""
    config = resolve("sr4-wavelet", {"train.crop": 32, "train.batch_size": 2, "train.steps": 3})
    observed = observation_psnr(config, image_folder, 2)
    warn = lambda gap, residual=None: advice.unlearned_warning(config, image_folder, 3, observed + gap,  # noqa: E731
                                                              residual)
    assert warn(1.5) is None
    near = warn(-0.3)
    assert "0.30 dB below" in near and "within 1 dB" in near and "barely left its start" in near
    assert "0.40 dB above" in warn(0.4)
    below = warn(-4.0, residual=1e-6)
    assert f"4.00 dB below the observations' {observed:.2f} dB" in below and "within" not in below
    assert "worse than the observations" in below and "Try more --steps (now 3)" in below
    assert "more restarts" not in below  # its solve converged: restarts are not what is missing
    unconverged = warn(-4.0, residual=2e-3)
    assert "more restarts (--T, now 10: the last step's solve ended at residual 2e-3, above train.tol = 1e-4)" \
        in unconverged


def test_validation_solves_as_eval_does_accelerated(image_folder, make_png_folder, tmp_path):
    """With train.accelerate=anderson the logged val_psnr is eval's solve (restore.run) of the checkpoint on the
    validation observations, not plain restarts."""
    import torch
    from deepinv.loss.metric import PSNR

    from retune_cli.core.hypergrad import restore
    from retune_cli.restore import load_model, run
    from retune_cli.validation import Validation

    val, out = make_png_folder(tmp_path / "val", 2, 36, 44, seed=5), tmp_path / "run"
    ok(invoke("train", "--preset", "inpaint-wavelet", "--steps", 1, *TINY, "--K", 2, "--T", 3, "--data", image_folder,
              "--set", "train.accelerate=anderson", "--val", val, "--out", out))
    logged = float(_log(out)[-1]["val_psnr"])
    model = load_model(out / "theta.safetensors")
    pairs = Validation.open(val, model.config, model.scheme.physics, "cpu").pairs
    psnr = PSNR(max_pixel=1.0)
    mean = lambda solve: sum(float(psnr(solve(obs), clean)) for clean, obs in pairs) / len(pairs)  # noqa: E731
    with torch.no_grad():
        assert logged == pytest.approx(mean(lambda obs: run(model, obs).x), abs=1e-4)
        plain = mean(lambda obs: restore(model.scheme, obs, 2, 3).x)
    assert abs(plain - logged) > 1e-3  # the plain restarts the validation used to run score differently


def test_jfb_counts_its_restarts_and_reports_the_steps_at_the_cap(image_folder, tmp_path):
    """jfb with train.max_restarts = 3: 3 restarts per step (the recorded one included), and one closing line
    with the steps that stopped there and their residual; retune show says it too."""
    from retune_cli.summary import summarize

    out = tmp_path / "run"
    result = ok(invoke("train", "--preset", "inpaint-wavelet", "--steps", 2, *TINY, "--K", 2, "--data", image_folder,
                       "--set", "train.gradient=jfb", "--set", "train.max_restarts=3", "--out", out))
    rows = _log(out)
    assert [int(r["restarts"]) for r in rows] == [3, 3]
    worst = max(float(r["residual"]) for r in rows)
    assert worst > 1e-4
    lines = [line for line in result.output.splitlines() if "train.max_restarts = 3" in line]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("warning: 2 of 2 steps stopped at train.max_restarts = 3, residual up to ")
    assert "for tol 1e-4; raise train.max_restarts" in lines[0] and "--gradient retune" in lines[0]
    assert summarize(out / "theta.safetensors").facts["fixed point"].startswith("2 of 2 steps stopped")


def test_a_diverged_run_is_refused_without_a_bar_of_nan(image_folder, tmp_path, monkeypatch):
    """The refusal of a run that diverges at its first step comes alone: no bar with "loss nan", drawn or final."""
    from retune_cli.commands import train as command

    screen = io.StringIO()
    monkeypatch.setattr(command, "console", Console(file=screen, force_terminal=True, width=200))
    result = invoke("train", "--steps", 3, *TINY, "--K", 2, "--T", 2, "--lr", "1e6", "--data", image_folder,
                    "--out", tmp_path / "run")
    assert result.exit_code == 1, result.output
    assert "nan" not in screen.getvalue() and "nan" not in result.output
    assert result.stderr.strip().startswith("training diverged:") and len(result.stderr.strip().splitlines()) == 1
