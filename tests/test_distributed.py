"""Data-parallel training: 2 CPU processes (gloo on loopback, started by torchrun) must reach the θ
of one process with the same global batch and seed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from retune_cli.checkpoint import load

COMMON = ["--steps", "4", "--crop", "32", "--batch-size", "4", "--K", "3", "--T", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path / f"im{i}.png")
    return path


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def retune(*args, processes: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = (launcher if processes > 1 else [sys.executable]) + ["-m", "retune_cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env())


def theta(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(run / "theta.safetensors")).items() if k.startswith("theta.")}


def assert_close(a: dict, b: dict, rtol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.linalg.vector_norm(a[k] - b[k]) <= rtol * torch.linalg.vector_norm(a[k]), k


@pytest.mark.parametrize("preset", ["denoise-wavelet-b", "inpaint-wavelet"])
def test_two_processes_reach_the_single_process_theta(folder, tmp_path, preset):
    one, two = tmp_path / "one", tmp_path / "two"
    single = retune("train", "--preset", preset, "--data", folder, "--out", one, *COMMON)
    assert single.returncode == 0, single.stderr
    double = retune("train", "--preset", preset, "--data", folder, "--out", two, *COMMON, processes=2)
    assert double.returncode == 0, double.stderr
    assert_close(theta(one), theta(two))
    assert load(two / "theta.safetensors").step == 4
    assert (two / "log.csv").read_text().count("\n") == 5  # header + 4 steps, written once (rank 0)


def test_resume_with_another_number_of_processes(folder, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert retune("train", "--data", folder, "--out", full, *COMMON).returncode == 0
    args = [a if a != "4" else "2" for a in COMMON[:2]] + COMMON[2:]
    assert retune("train", "--data", folder, "--out", part, *args, processes=2).returncode == 0
    resumed = retune("train", "--resume", part / "theta.safetensors", "--steps", 4)
    assert resumed.returncode == 0, resumed.stderr
    assert_close(theta(full), theta(part))


def test_batch_not_divisible_by_processes_is_refused_on_every_rank(folder, tmp_path):
    args = ["--steps", "2", "--crop", "32", "--batch-size", "3", "--device", "cpu"]
    result = retune("train", "--data", folder, "--out", tmp_path / "r", *args, processes=2)
    assert result.returncode != 0
    assert result.stderr.count("not a multiple of the 2 processes") == 1  # rank 0's line only
    assert "exitcode  : 2" in result.stderr or "exitcode: 2" in result.stderr.replace(" ", "")
