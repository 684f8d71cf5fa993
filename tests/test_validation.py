"""Validation while training (--val DIR): val_psnr in log.csv, best.safetensors, the curves."""

from __future__ import annotations

import csv

import pytest
from typer.testing import CliRunner

from retune_cli import checkpoint as ckpt
from retune_cli.cli import app
from retune_cli.plots import moving_average

TINY = ["--crop", "32", "--batch-size", "2", "--K", "2", "--T", "2", "--device", "cpu"]
WIDE = {"COLUMNS": "300"}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


def test_validation_psnr_is_logged_and_the_best_checkpoint_kept(image_folder, make_png_folder, tmp_path):
    val = make_png_folder(tmp_path / "val", 2, 36, 44, seed=5)
    out = tmp_path / "run"
    result = invoke("train", "--steps", 5, *TINY, "--data", image_folder, "--val", val, "--val-every", 2,
                    "--out", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "log.csv")))
    scored = {int(r["step"]): float(r["val_psnr"]) for r in rows if r["val_psnr"]}
    assert sorted(scored) == [2, 4, 5]  # every 2 steps and the last
    best = ckpt.load(out / "best.safetensors")
    assert best.step == max(scored, key=scored.get)
    assert (out / "psnr.png").read_bytes()[:4] == b"\x89PNG"
    again = tmp_path / "again"
    assert invoke("train", "--steps", 5, *TINY, "--data", image_folder, "--val", val, "--val-every", 2,
                  "--out", again).exit_code == 0
    assert [r["val_psnr"] for r in csv.DictReader(open(again / "log.csv"))] == [r["val_psnr"] for r in rows]


def test_without_val_no_best_checkpoint_and_an_empty_column(trained_run):
    assert not (trained_run / "best.safetensors").exists()
    assert all(r["val_psnr"] == "" for r in csv.DictReader(open(trained_run / "log.csv")))


@pytest.mark.parametrize("args, message", [
    (["--val", "missing"], "--val"),
    (["--val-every", "0"], "train.val_every (--val-every) must be at least 1"),
])
def test_bad_validation_input_is_one_line_and_writes_nothing(image_folder, tmp_path, args, message):
    args = [tmp_path / a if a == "missing" else a for a in args]
    result = invoke("train", "--steps", 2, *TINY, "--data", image_folder, *args, "--out", tmp_path / "run")
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_moving_average_is_a_trailing_mean():
    assert moving_average([1, 2, 3, 4], window=2) == [1, 1.5, 2.5, 3.5]
    assert moving_average([5.0] * 30) == [5.0] * 30
    assert moving_average([]) == []
    assert moving_average([10.0, 20.0, 30.0], window=25, at=[5, 10, 40]) == [10.0, 15.0, 30.0]  # over steps


def test_a_run_that_barely_learned_is_warned_about(image_folder, tmp_path, monkeypatch):
    from retune_cli import advice

    args = ["train", "--steps", 2, *TINY, "--data", image_folder]
    warned = invoke(*args, "--out", tmp_path / "a")
    assert warned.exit_code == 0 and "warning: train PSNR" in warned.output and "--steps" in warned.output
    monkeypatch.setattr(advice, "NEAR_OBSERVATION_DB", -100.0)
    quiet = invoke(*args, "--out", tmp_path / "b")
    assert quiet.exit_code == 0 and "warning" not in quiet.output


def test_fit_warns_about_a_run_that_barely_learned(image_folder, tmp_path):
    import retune_cli

    overrides = {"train.steps": 2, "train.crop": 32, "train.batch_size": 2, "train.K": 1, "train.T": 1}
    with pytest.warns(UserWarning, match="barely left its start"):
        retune_cli.fit("denoise-wavelet-b", image_folder, out=tmp_path / "a", overrides=overrides)


def test_observation_psnr_is_the_batch_baseline(image_folder):
    from retune_cli.config import resolve
    from retune_cli.validation import observation_psnr

    config = resolve("denoise-wavelet-b", {"train.crop": 32, "train.batch_size": 2})
    value = observation_psnr(config, image_folder, 0)
    assert 5 < value < 15 and value == observation_psnr(config, image_folder, 0)
    assert value != observation_psnr(config, image_folder, 1)
