"""Reliability, silent garbage: non-finite or degenerate inputs are refused (exit 2, one line saying what was
found), never turned into NaN images or a 'diverged' run."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability import (
    FAST,
    assert_survived,
    invoke,
    ok,
    one_line_error,
    refused_training,
    save_checkpoint,
    snapshot,
)

from retune_cli import checkpoint as ckpt


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "deblur": save_checkpoint(root / "deblur" / "theta.safetensors", "deblur-wavelet", **{"physics.blur_width": 5}),
        "inpaint": save_checkpoint(root / "inpaint" / "theta.safetensors", "inpaint-wavelet"),
        "tiny θ": save_checkpoint(root / "tiny-theta" / "theta.safetensors", theta=-1000.0),
    }


BOX = np.full((5, 5), 1 / 25)
KERNELS = {
    "all zero": (np.zeros((5, 5)), "all zero"),
    "empty": (np.zeros((0, 0)), "empty"),
    "NaN": (np.where(np.eye(5) > 0, np.nan, 1 / 20), "non-finite"),
    "+inf": (np.full((5, 5), np.inf), "non-finite"),
    "beyond float32": (np.full((5, 5), 1e300), "non-finite"),
    "sums to 0.5": (BOX / 2, "sums to 0.5"),
    "one channel sums to 2": (np.stack([BOX, 2 * BOX, BOX]), "sums to 1, 2, 1"),
    "sums to 0 with taps": (np.array([[1.0, -1.0]]), "sums to 0"),
}


@pytest.mark.parametrize("case", KERNELS)
def test_degenerate_kernels_are_refused_saying_what_was_found(case, checkpoints, image_folder, tmp_path):
    array, found = KERNELS[case]
    np.save(tmp_path / "k.npy", array)
    result = invoke("restore", checkpoints["deblur"], image_folder / "im0.png", "--kernel", tmp_path / "k.npy",
                    "-o", tmp_path / "o.png")
    line = one_line_error(result, "--kernel", "k.npy", found)
    assert ("--normalize-kernel" in line) == (case in ("sums to 0.5", "one channel sums to 2"))
    assert not (tmp_path / "o.png").exists()


def test_normalize_kernel_divides_by_the_sum(checkpoints, image_folder, tmp_path):
    np.save(tmp_path / "box.npy", BOX)
    np.save(tmp_path / "scaled.npy", np.stack([4 * BOX, 0.5 * BOX, BOX]))
    restore = ["restore", checkpoints["deblur"], image_folder / "im0.png", "--device", "cpu"]
    ok(invoke(*restore, "--kernel", tmp_path / "box.npy", "-o", tmp_path / "a.npy"))
    ok(invoke(*restore, "--kernel", tmp_path / "scaled.npy", "--normalize-kernel", "-o", tmp_path / "b.npy"))
    assert np.allclose(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"), atol=1e-6)
    one_line_error(invoke(*restore, "--normalize-kernel", "-o", tmp_path / "c.npy"), "--normalize-kernel", "--kernel")


def _float_image(path: Path, value: float, dtype=np.float32) -> Path:
    """A 48×40 float image (.npy, or a float TIFF, which a data folder takes) with one bad value."""
    import tifffile

    array = np.full((40, 48, 3), 0.5, dtype=dtype)
    array[3, 4, 1] = value
    if path.suffix == ".npy":
        np.save(path, array)
    else:
        tifffile.imwrite(path, array, photometric="rgb")
    return path


NON_FINITE = {"NaN": (np.nan, np.float32), "-inf": (-np.inf, np.float32), "1e39 in float64": (1e39, np.float64)}


@pytest.mark.parametrize("case", NON_FINITE)
@pytest.mark.parametrize("role", ["image", "mask", "training image"])
def test_non_finite_images_are_refused(case, role, checkpoints, trained_run, image_folder, tmp_path):
    bad = _float_image(tmp_path / ("bad.tif" if role == "training image" else "bad.npy"), *NON_FINITE[case])
    if role == "image":
        args = ["restore", trained_run / "theta.safetensors", bad, "-o", tmp_path / "o.png"]
    elif role == "mask":
        args = ["restore", checkpoints["inpaint"], image_folder / "im0.png", "--mask", bad, "-o", tmp_path / "o.png"]
    else:
        data = Path(shutil.copytree(image_folder, tmp_path / "data"))
        bad = Path(shutil.move(bad, data / "bad.tif"))
        args = ["train", "--steps", 1, *FAST, "--data", data, "--out", tmp_path / "run"]
    one_line_error(invoke(*args), str(bad), "non-finite")
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "run").exists()


COMPARE = ["compare-grads", "--crop", 16, "--K", 1, "--T", 1, "--device", "cpu"]


@pytest.mark.parametrize("command", ["restore", "compare-grads"])
def test_tol_nan(command, trained_run, image_folder, tmp_path):
    if command == "restore":
        args = ["restore", trained_run / "theta.safetensors", image_folder / "im0.png", "-o", tmp_path / "o.png"]
    else:
        args = [*COMPARE, "--json", tmp_path / "g.json"]
    one_line_error(invoke(*args, "--tol", "nan"), "--tol")
    assert list(tmp_path.iterdir()) == []


FLOATS = {
    "σ beyond float32": (["--set", "physics.sigma=1e39"], "physics.sigma"),
    "one σ beyond float32": (["--set", "physics.sigma=[0.1, -3.5e38, 0.1]"], "physics.sigma"),
    "σ an integer beyond any float": (["--set", f"physics.sigma={10**400}"], "physics.sigma"),
    "lr beyond float32": (["--lr", "1e39"], "train.lr"),
    "init_lambda beyond float32": (["--set", "model.init_lambda=4e38"], "model.init_lambda"),
    "clip beyond float32": (["--clip-grad-norm", "1e39"], "train.clip_grad_norm"),
    "tol beyond float32": (["--set", "train.tol=1e39"], "train.tol"),
}


@pytest.mark.parametrize("case", FLOATS)
def test_floats_beyond_float32_are_refused(case, image_folder, tmp_path):
    args, key = FLOATS[case]
    assert "float32" in refused_training(image_folder, tmp_path / "run", *args, fragments=(key,))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_init_with_non_finite_theta_is_a_bad_input(value, trained_run, image_folder, tmp_path):
    loaded = ckpt.load(trained_run / "theta.safetensors")
    first = sorted(loaded.parameters)[0]
    bad = tmp_path / "init" / "theta.safetensors"
    ckpt.save(bad, loaded.config, loaded.parameters | {first: torch.full_like(loaded.parameters[first], value)},
              loaded.step, loaded.train_psnr)
    before = snapshot(bad)
    refused_training(image_folder, tmp_path / "run", "--init", bad, fragments=("--init", str(bad), "non-finite"))
    assert_survived(before)


@pytest.mark.parametrize("command", ["restore", "eval"])
def test_a_theta_that_restores_non_finite_values(command, checkpoints, image_folder, tmp_path):
    path = checkpoints["tiny θ"]
    if command == "restore":
        args = ["restore", path, image_folder / "im0.png", "-o", tmp_path / "o.png"]
    else:
        args = ["eval", path, "--data", image_folder, "--json", tmp_path / "r.json"]
    one_line_error(invoke(*args, "--device", "cpu"), str(path), "non-finite")
    assert list(tmp_path.iterdir()) == []
