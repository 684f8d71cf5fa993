"""Shared fixtures: tiny image folders, tiny training settings, one tiny trained run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

# Tiny training settings, as config overrides and as the matching CLI flags.
TINY = {"train.K": 2, "train.T": 2, "train.steps": 3, "train.batch_size": 2, "train.crop": 32}
TINY_FLAGS = ["--crop", "32", "--batch-size", "2", "--K", "2", "--T", "2", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _deterministic_torch(monkeypatch):
    """Seeded, and one thread (the CLI's too): tiny tensors run faster on one, much faster on a busy
    machine."""
    monkeypatch.setenv("RETUNE_THREADS", "1")
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An ``H×W×3`` uint8 image with structure (blurred noise plus gradients), not pure noise."""
    base = rng.random((height // 4 + 2, width // 4 + 2, 3))
    up = np.kron(base, np.ones((4, 4, 1)))[:height, :width]
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = (xx[..., None] / width + yy[..., None] / height) / 2
    image = 0.6 * up + 0.4 * ramp + 0.05 * rng.standard_normal((height, width, 3))
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def write_png_folder(folder: Path, count: int, height: int = 40, width: int = 48, seed: int = 0) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(smooth_image(rng, height, width)).save(folder / f"im{i}.png")
    return folder


@pytest.fixture(scope="session")
def make_png_folder():
    """``make_png_folder(folder, count, height=40, width=48, seed=0)`` writes RGB PNGs and returns the folder."""
    return write_png_folder


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """Three 48×40 (W×H) RGB PNGs."""
    return write_png_folder(tmp_path_factory.mktemp("images"), 3)


@pytest.fixture
def tiny_overrides() -> dict:
    return dict(TINY)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, image_folder) -> Path:
    """A 3-step CLI training run on the tiny folder: its run folder."""
    from typer.testing import CliRunner

    from retune_cli.cli import app

    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = CliRunner().invoke(
        app, ["train", "--steps", "3", *TINY_FLAGS, "--data", str(image_folder), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, image_folder):
    """``reference(n)``: the folder of an uninterrupted FAST run of ``n`` steps on ``image_folder`` (cached)."""
    from reliability import FAST, invoke, ok

    root = tmp_path_factory.mktemp("reference")
    done = {}

    def run(n: int) -> Path:
        if n not in done:
            ok(invoke("train", "--steps", n, *FAST, "--data", image_folder, "--out", root / f"n{n}"))
            done[n] = root / f"n{n}"
        return done[n]

    return run
