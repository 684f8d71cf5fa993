"""A training step's graph is measured before the first step and refused, saying what fits, when it does
not fit in the memory available."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from retune_cli import memory_check
from retune_cli.cli import app
from retune_cli.config import resolve
from retune_cli.models import build_scheme
from tests.conftest import TINY_FLAGS


def test_the_measured_graph_grows_with_the_steps_kept():
    """Unrolled keeps K·T steps, ReTune K: the measured bytes per image follow, exactly linear in the steps."""
    sizes = {}
    for gradient, K, T in (("unrolled", 4, 3), ("unrolled", 4, 6), ("retune", 4, 6)):
        config = resolve("denoise-wavelet-bc", {"train.K": K, "train.T": T, "train.gradient": gradient,
                                                "train.crop": 32})
        sizes[gradient, T] = memory_check.step_bytes(config, build_scheme(config), "cpu")
    (a, steps_a), (b, steps_b), (c, steps_c) = sizes.values()
    assert (steps_a, steps_b, steps_c) == (12, 24, 4)
    per_step = (b - a) / 12
    assert per_step >= 3 * 32 * 32 * 4  # at least one image-sized float32 tensor per step
    assert c == pytest.approx(a - 8 * per_step, rel=1e-9)


def test_a_step_that_does_not_fit_is_refused_before_the_run(monkeypatch, image_folder, tmp_path):
    monkeypatch.setattr(memory_check, "available_memory", lambda device: 2_000_000)  # 2 MB
    result = CliRunner().invoke(app, ["train", "--data", str(image_folder), "--out", str(tmp_path / "run"),
                                      *TINY_FLAGS, "--gradient", "unrolled", "--T", "20"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert "backpropagating" in line and "GiB" in line and "--batch-size" in line and "fits" in line, line
    assert not (tmp_path / "run" / "theta.safetensors").exists()


def test_compare_grads_unrolled_row_that_does_not_fit_is_refused(monkeypatch):
    monkeypatch.setattr(memory_check, "available_memory", lambda device: 2_000_000)  # 2 MB
    result = CliRunner().invoke(app, ["compare-grads", "--K", "5", "--T", "40", "--crop", "32"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert "--K 5 × --T 40" in line and "backpropagating" in line and "GiB" in line and "lower --K" in line, line


def test_peak_bytes_counts_what_is_alive_at_once():
    """Two 1 MB tensors alive together, then one freed before a third: the peak is 2 MB, not 3."""
    import torch

    from retune_cli.op_counts import peak_bytes

    def work():
        a = torch.ones(2**18)  # 1 MiB of float32
        b = a * 2
        del a
        c = b + 1
        return c.sum()

    assert peak_bytes(work) == pytest.approx(2 * 2**20, abs=64)


def test_a_restoration_that_does_not_fit_is_refused_saying_what_fits(monkeypatch, tmp_path):
    """The solve's peak is measured on a 64² probe and scaled to the image: with 2 MB free, a 128² photo does
    not fit, and the message names a crop that does."""
    from PIL import Image

    monkeypatch.setattr(memory_check, "LARGE", 0)
    monkeypatch.setattr(memory_check, "available_memory", lambda device: 2_000_000)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (128, 128), (90, 120, 150)).save(photo)
    result = CliRunner().invoke(app, ["restore", str(photo), "--model", "denoise", "--sigma", "0.05",
                                      "-o", str(tmp_path / "out.png")], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert "restoring" in line and "128×128" in line and "GiB" in line and "restore a crop of about" in line, line
    assert not (tmp_path / "out.png").exists()
    monkeypatch.setattr(memory_check, "available_memory", lambda device: 2**34)
    assert CliRunner().invoke(app, ["restore", str(photo), "--model", "denoise", "--sigma", "0.05",
                                    "-o", str(tmp_path / "out.png")]).exit_code == 0
