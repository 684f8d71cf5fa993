"""End-to-end command line: train, resume, restore, eval, and the refusal of bad input."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import png
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.main import get_command
from typer.testing import CliRunner

import retune_cli
from retune_cli import checkpoint as ckpt
from retune_cli.cli import app
from retune_cli.config import from_yaml, resolve
from retune_cli.images import read_image
from retune_cli.models import build_scheme

TINY_FLAGS = ["--crop", "32", "--batch-size", "2", "--K", "2", "--T", "2", "--device", "cpu"]  # as conftest's run
# A wide console, so that messages are not wrapped by Rich; the 80-column case has its own test.
WIDE = {"COLUMNS": "400"}
SIGMA = (0.10, 0.25, 0.50)
RESIDUAL = re.compile(r"(\d+) restarts of Φ_(\d+), residual ([0-9.eE+-]+)")
PSNR_LINE = re.compile(r"PSNR ([0-9.]+) dB \(observation ([0-9.]+) dB\)")


def invoke(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE | (env or {}))


def ok(result):
    assert result.exit_code == 0, result.output
    assert result.exception is None
    return result


def python(*args, env=None):
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=os.environ | WIDE | (env or {}), timeout=120
    )


def train(data, out, steps, *extra):
    return invoke("train", "--steps", steps, *TINY_FLAGS, "--data", data, "--out", out, *extra)


# --------------------------------------------------------------------------- start-up, help, version


def test_cli_module_does_not_import_torch():
    result = python("-c", "import retune_cli.cli, sys; assert 'torch' not in sys.modules, 'torch imported'")
    assert result.returncode == 0, result.stderr


def test_help_runs_without_importing_torch():
    result = python("-X", "importtime", "-m", "retune_cli", "--help")
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "restore" in result.stdout and "eval" in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time")]
    imported = [line.rsplit("|", 1)[-1].strip() for line in lines]
    assert "retune_cli.cli" in imported  # the check sees our imports
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]


def test_version_in_a_subprocess():
    result = python("-m", "retune_cli", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"retune {retune_cli.__version__}"


def test_every_command_help_shows_examples():
    commands = sorted(get_command(app).commands)
    assert {"train", "restore", "eval"} <= set(commands)
    for name in commands:
        result = ok(invoke(name, "--help"))
        assert "Example" in result.output, name


# --------------------------------------------------------------------------- train


def test_train_writes_the_run_folder(trained_run):
    assert {p.name for p in trained_run.iterdir()} >= {"theta.safetensors", "config.yaml", "log.csv", "psnr.png"}
    loaded = ckpt.load(trained_run / "theta.safetensors")
    assert loaded.step == 3
    assert from_yaml((trained_run / "config.yaml").read_text(), "config.yaml") == loaded.config
    t = loaded.config.train
    assert (t.K, t.T, t.steps, t.batch_size, t.crop) == (2, 2, 3, 2, 32)
    with open(trained_run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(math.isfinite(float(r["loss"])) and float(r["loss"]) > 0 for r in rows)
    assert float(rows[-1]["psnr"]) == pytest.approx(loaded.train_psnr, abs=1e-4)
    with Image.open(trained_run / "psnr.png") as im:
        assert im.format == "PNG" and min(im.size) > 100
    initial = ckpt.learned_parameters(build_scheme(loaded.config))
    assert any(not torch.equal(loaded.parameters[k], v) for k, v in initial.items())  # θ moved
    assert loaded.optimizer  # Adam's state is kept for --resume


def test_second_train_needs_force(trained_run, image_folder, tmp_path):
    before = (trained_run / "theta.safetensors").read_bytes()
    result = train(image_folder, trained_run, 3)
    assert result.exit_code == 2
    assert "--force" in result.stderr and str(trained_run) in result.stderr
    assert (trained_run / "theta.safetensors").read_bytes() == before
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    ok(train(image_folder, copy, 1, "--force"))
    assert ckpt.load(copy / "theta.safetensors").step == 1


def test_resume_equals_an_uninterrupted_run(image_folder, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    ok(train(image_folder, full, 5))
    ok(train(image_folder, part, 3))
    result = ok(invoke("train", "--resume", part / "theta.safetensors", "--steps", 5, "--data", image_folder))
    assert "5/5" in result.output
    a, b = load_file(str(full / "theta.safetensors")), load_file(str(part / "theta.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # θ and Adam's moments, bitwise
    assert ckpt.load(part / "theta.safetensors").step == 5

    def log(folder):
        with open(folder / "log.csv", newline="") as f:
            return [(r["step"], r["loss"], r["psnr"], r["tau"]) for r in csv.DictReader(f)]

    assert log(part) == log(full)
    assert [int(r[0]) for r in log(part)] == [1, 2, 3, 4, 5]


def test_train_workflow_reports_steps_and_stops_gracefully(image_folder, tiny_overrides, tmp_path):
    """Workflow level: on_step reports every step; should_stop saves the checkpoint, then interrupts."""
    from retune_cli.train import train as run_training

    config = resolve("denoise-wavelet-b", tiny_overrides)
    reports = []
    with pytest.raises(KeyboardInterrupt):
        run_training(config, tmp_path / "run", data=image_folder, device="cpu", on_step=reports.append,
                     should_stop=lambda: len(reports) == 2)
    assert [r.step for r in reports] == [1, 2] and all(r.total == 3 for r in reports)
    assert all(math.isfinite(r.loss) and r.tau > 0 for r in reports)
    assert ckpt.load(tmp_path / "run" / "theta.safetensors").step == 2
    resumed = run_training(config, tmp_path / "run", data=image_folder, device="cpu",
                           resume=ckpt.load(tmp_path / "run" / "theta.safetensors"))
    full = run_training(config, tmp_path / "full", data=image_folder, device="cpu")
    assert resumed.steps == full.steps == 3
    a, b = load_file(str(resumed.checkpoint)), load_file(str(full.checkpoint))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_repeating_data_uses_the_runs_data(image_folder, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    ok(train(image_folder, full, 4))
    ok(train(image_folder, part, 3))
    ok(invoke("train", "--resume", part / "theta.safetensors", "--steps", 4))
    a, b = load_file(str(full / "theta.safetensors")), load_file(str(part / "theta.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_on_builtin_samples_does_not_warn(tmp_path):
    """Regression: the samples folder's LICENSES.md used to be reported as a skipped non-image file."""
    result = ok(invoke("train", "--steps", 1, "--K", 1, "--T", 1, "--crop", 32, "--batch-size", 1,
                       "--device", "cpu", "--out", tmp_path / "run"))
    assert "skipped" not in result.output


# --------------------------------------------------------------------------- restore


@pytest.fixture
def noisy_image(tmp_path, image_folder) -> Path:
    path = tmp_path / "in" / "noisy.png"
    path.parent.mkdir()
    shutil.copy(image_folder / "im0.png", path)
    return path


def test_restore_writes_png_npy_and_16bit_png(trained_run, noisy_image, tmp_path):
    checkpoint = trained_run / "theta.safetensors"
    result = ok(invoke("restore", checkpoint, noisy_image, "-o", tmp_path / "out.npy", "--device", "cpu"))
    match = RESIDUAL.search(result.output)
    assert match and int(match[1]) == 2 and int(match[2]) == 2  # the checkpoint's T and K
    restored = np.load(tmp_path / "out.npy")
    assert restored.dtype == np.float32 and restored.shape == (40, 48, 3)
    observed = read_image(noisy_image).numpy().transpose(1, 2, 0)
    assert not np.allclose(restored, observed, atol=1e-3)  # it did something
    clipped = np.clip(restored, 0, 1)
    ok(invoke("restore", checkpoint, noisy_image, "-o", tmp_path / "out.png"))
    assert np.abs(read_image(tmp_path / "out.png").numpy().transpose(1, 2, 0) - clipped).max() <= 0.5 / 255 + 1e-6
    ok(invoke("restore", checkpoint, noisy_image, "-o", tmp_path / "out16.png", "--bits", 16))
    _, _, _, info = png.Reader(filename=str(tmp_path / "out16.png")).read()
    assert info["bitdepth"] == 16
    assert np.abs(read_image(tmp_path / "out16.png").numpy().transpose(1, 2, 0) - clipped).max() <= 1 / 65535
    ok(invoke("restore", checkpoint, noisy_image))  # default output name, next to the input
    assert (noisy_image.parent / "noisy.restored.png").is_file()


def test_restore_non_multiple_size(trained_run, tmp_path):
    path = tmp_path / "odd.npy"
    np.save(path, np.random.default_rng(0).random((37, 50, 3)).astype(np.float32))
    ok(invoke("restore", trained_run / "theta.safetensors", path, "-o", tmp_path / "odd.out.npy"))
    assert np.load(tmp_path / "odd.out.npy").shape == (37, 50, 3)


def test_restore_simulate_reports_psnr(trained_run, image_folder, tmp_path):
    checkpoint, clean_path = trained_run / "theta.safetensors", image_folder / "im1.png"

    def simulate(seed, name):
        result = ok(invoke("restore", checkpoint, clean_path, "--simulate", "--seed", seed,
                           "-o", tmp_path / f"{name}.npy", "--save-observation", tmp_path / f"{name}.obs.npy"))
        match = PSNR_LINE.search(result.output)
        assert match, result.output
        arrays = np.load(tmp_path / f"{name}.npy"), np.load(tmp_path / f"{name}.obs.npy")
        return float(match[1]), float(match[2]), *arrays

    psnr, psnr_obs, restored, observation = simulate(1, "a")
    clean = read_image(clean_path).numpy().transpose(1, 2, 0)
    noise_std = (observation - clean).reshape(-1, 3).std(axis=0)
    assert np.allclose(noise_std, SIGMA, rtol=0.1)  # the checkpoint's per-channel σ
    assert psnr_obs == pytest.approx(-10 * math.log10(np.mean((observation - clean) ** 2)), abs=0.006)
    assert psnr == pytest.approx(-10 * math.log10(np.mean((restored - clean) ** 2)), abs=0.006)
    assert psnr > psnr_obs
    _, _, _, again = simulate(1, "b")
    assert np.array_equal(again, observation)  # seeded
    _, _, _, other = simulate(2, "c")
    assert not np.allclose(other, observation)


def test_restore_tol_prints_the_residual_reached(trained_run, noisy_image, tmp_path):
    result = ok(invoke("restore", trained_run / "theta.safetensors", noisy_image, "-o", tmp_path / "o.npy",
                       "--tol", "1e-5"))
    match = RESIDUAL.search(result.output)
    assert match, result.output
    assert float(match[3]) <= 1e-5 and int(match[1]) >= 1
    result = ok(invoke("restore", trained_run / "theta.safetensors", noisy_image, "-o", tmp_path / "o.npy",
                       "--T", 1))
    assert RESIDUAL.search(result.output)[1] == "1"


# --------------------------------------------------------------------------- eval


@pytest.fixture
def two_checkpoints(trained_run, tmp_path) -> list[Path]:
    """The trained run and a copy with other weights, in folders named 'tiny' and 'other'."""
    loaded = ckpt.load(trained_run / "theta.safetensors")
    params = {k: v + 0.7 for k, v in loaded.parameters.items()}
    other = tmp_path / "other" / "theta.safetensors"
    ckpt.save(other, loaded.config, params, loaded.step, loaded.train_psnr)
    return [trained_run / "theta.safetensors", other]


def test_eval_json_schema_and_seeding(two_checkpoints, image_folder, tmp_path):
    def run(seed, name):
        ok(invoke("eval", *two_checkpoints, "--data", image_folder, "--seed", seed, "--device", "cpu",
                  "--json", tmp_path / f"{name}.json", "--csv", tmp_path / f"{name}.csv"))
        return json.loads((tmp_path / f"{name}.json").read_text())

    first = run(0, "a")
    assert set(first) == {"checkpoints", "rows", "mean"}
    assert first["checkpoints"] == ["tiny", "other"]
    columns = {"tiny", "other", "observation"}
    assert [r["image"] for r in first["rows"]] == ["im0.png", "im1.png", "im2.png"]
    for row in first["rows"]:
        assert set(row) == {"image", "psnr", "ssim"}
        for metric in ("psnr", "ssim"):
            assert set(row[metric]) == columns
            assert all(isinstance(v, float) and math.isfinite(v) for v in row[metric].values())
        assert 0 < row["ssim"]["observation"] <= 1
        assert row["psnr"]["tiny"] != row["psnr"]["other"]
    assert set(first["mean"]) == {"psnr", "ssim"}
    for metric in ("psnr", "ssim"):
        assert set(first["mean"][metric]) == columns
        for c in columns:
            expected = sum(r[metric][c] for r in first["rows"]) / len(first["rows"])
            assert first["mean"][metric][c] == pytest.approx(expected, rel=1e-12)

    second, third = run(0, "b"), run(1, "c")
    assert second == first  # same seed, same observations and results
    for r1, r3 in zip(first["rows"], third["rows"]):
        assert r1["psnr"]["observation"] != r3["psnr"]["observation"]

    with open(tmp_path / "a.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["image"] + [f"{m}:{c}" for m in ("psnr", "ssim") for c in ("observation", "tiny", "other")]
    assert [r[0] for r in table[1:]] == ["im0.png", "im1.png", "im2.png", "mean"]
    assert float(table[1][1]) == pytest.approx(first["rows"][0]["psnr"]["observation"], abs=1e-4)


# --------------------------------------------------------------------------- bad input


def _bad_inputs(trained_run: Path, image_folder: Path, tmp: Path) -> dict[str, tuple[list, str]]:
    """name → (argv, a fragment the one-line message must contain)."""
    text = tmp / "notes.safetensors"
    text.write_text("not a checkpoint\n")
    empty = tmp / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("no images here")
    checkpoint = trained_run / "theta.safetensors"
    image = image_folder / "im0.png"
    out = tmp / "out"
    return {
        "missing checkpoint": (["restore", tmp / "nope.safetensors", image], "nope.safetensors"),
        "text file as checkpoint": (["restore", text, image], "notes.safetensors"),
        "eval missing checkpoint": (["eval", tmp / "nope.safetensors", "--data", image_folder], "nope.safetensors"),
        "unknown preset": (["train", "--preset", "no-such-preset", "--data", image_folder, "--out", out], "no-such"),
        "K 0": (["train", "--K", "0", "--data", image_folder, "--out", out], "train.K"),
        "set bad": (["train", "--set", "bad", "--data", image_folder, "--out", out], "--set"),
        "set unknown key": (["train", "--set", "train.Q=1", "--data", image_folder, "--out", out], "train.Q"),
        "missing data folder": (["train", "--data", tmp / "nowhere", "--out", out], "nowhere"),
        "empty data folder": (["train", "--data", empty, "--out", out], "holds no images"),
        "images smaller than crop": (["train", "--crop", "64", "--data", image_folder, "--out", out], "crop 64"),
        "restore to gif": (["restore", checkpoint, image, "-o", tmp / "x.gif"], "x.gif"),
        "restore missing image": (["restore", checkpoint, tmp / "nope.png"], "nope.png"),
        "resume and change K": (["train", "--resume", checkpoint, "--K", "3", "--out", out], "train.K"),
    }


BAD = [
    "missing checkpoint", "text file as checkpoint", "eval missing checkpoint", "unknown preset", "K 0", "set bad",
    "set unknown key", "missing data folder", "empty data folder", "images smaller than crop", "restore to gif",
    "restore missing image", "resume and change K",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exits_2_with_one_line(case, trained_run, image_folder, tmp_path):
    args, fragment = _bad_inputs(trained_run, image_folder, tmp_path)[case]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not an uncaught exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "theta.safetensors").exists()


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path, image_folder):
    result = python("-m", "retune_cli", "restore", tmp_path / "nope.safetensors", image_folder / "im0.png")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.safetensors" in lines[0]


def test_long_error_message_stays_on_one_line_at_80_columns(tmp_path):
    deep = tmp_path / ("a-rather-long-folder-name-" * 3) / "theta.safetensors"
    result = invoke("restore", deep, tmp_path / "x.png", env={"COLUMNS": "80"})
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_sigma_count_mismatch_is_bad_input(image_folder, tmp_path):
    """Regression: two σ for three channels used to pass validation and fail mid-run with a ValueError."""
    result = train(image_folder, tmp_path / "out", 1, "--set", "physics.sigma=[0.1,0.2]")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "physics.sigma" in result.stderr
