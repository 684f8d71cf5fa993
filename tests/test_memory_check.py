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
    assert "GiB for backpropagation" in line and "--batch-size" in line and "fits" in line, line
    assert not (tmp_path / "run" / "theta.safetensors").exists()


def test_compare_grads_unrolled_row_that_does_not_fit_is_refused(monkeypatch):
    monkeypatch.setattr(memory_check, "available_memory", lambda device: 2_000_000)  # 2 MB
    result = CliRunner().invoke(app, ["compare-grads", "--K", "5", "--T", "40", "--crop", "32"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert "--K 5 × --T 40" in line and "GiB for backpropagation" in line and "lower --K" in line, line
