"""Reliability, silent garbage: one policy for image values where images enter (files, arrays, tensors).

Integers are scaled by their range (uint8 / 255, uint16 / 65535); floats are in [0, 1] (a clean image within
±0.01, clipped; an observation keeps its noise), 0–255 floats and NaN/inf are refused; a mask is binary (0/1 or
0/255) and keeps a pixel, and one keeping far fewer pixels than training did warns (probably inverted); the API's
T and tol are checked. A refusal is exit 2 and one line (CLI), or an error naming the argument (API).
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from reliability import invoke, ok, one_line_error, refused_training, save_checkpoint

import retune_cli
from retune_cli.data import TensorImages
from retune_cli.errors import InputError
from retune_cli.images import read_image, read_mask
from retune_cli.values import unit_range

H, W = 40, 48


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints at their initial θ (no training): denoising, and inpainting trained with keep = 0.1."""
    root = tmp_path_factory.mktemp("value-policy")
    return {"denoise": save_checkpoint(root / "dn" / "theta.safetensors"),
            "inpaint": save_checkpoint(root / "ip" / "theta.safetensors", "inpaint-wavelet")}


@pytest.fixture(scope="module")
def pixels(image_folder) -> np.ndarray:
    """The uint8 ``H×W×3`` pixels of im0.png."""
    return np.asarray(Image.open(image_folder / "im0.png").convert("RGB"))


def restore(ckpt: Path, image: Path, out: Path, *args):
    return invoke("restore", ckpt, image, "-o", out, "--device", "cpu", *args)


# --------------------------------------------------------------------------- images through the CLI


@pytest.mark.parametrize("suffix", [".npy", ".tif"])
@pytest.mark.parametrize("simulate", [False, True], ids=["observation", "--simulate"])
def test_floats_in_0_255_are_refused_saying_divide_by_255(suffix, simulate, ckpts, pixels, tmp_path):
    path = tmp_path / f"big{suffix}"
    array = pixels.astype(np.float32)
    np.save(path, array) if suffix == ".npy" else tifffile.imwrite(path, array, photometric="rgb")
    result = restore(ckpts["denoise"], path, tmp_path / "o.png", *(["--simulate"] if simulate else []))
    one_line_error(result, str(path), "0–255", "divide it by 255")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("bits", [8, 16])
def test_integer_arrays_are_scaled_by_their_range(bits, ckpts, image_folder, pixels, tmp_path):
    """A uint8 (or uint16) .npy restores exactly as the PNG of the same image, silently."""
    array = pixels if bits == 8 else pixels.astype(np.uint16) * 257  # v/255 == 257 v/65535
    np.save(tmp_path / "im.npy", array)
    ok(restore(ckpts["denoise"], image_folder / "im0.png", tmp_path / "png.npy"))
    result = ok(restore(ckpts["denoise"], tmp_path / "im.npy", tmp_path / "npy.npy"))
    assert "warning" not in result.stderr
    assert np.array_equal(np.load(tmp_path / "png.npy"), np.load(tmp_path / "npy.npy"))


def test_other_integer_types_are_refused_naming_the_dtype(ckpts, pixels, tmp_path):
    np.save(tmp_path / "im.npy", pixels.astype(np.int64))
    one_line_error(restore(ckpts["denoise"], tmp_path / "im.npy", tmp_path / "o.png"), "im.npy", "int64", "uint8")


def test_clean_floats_within_the_tolerance_are_clipped_beyond_it_refused(ckpts, pixels, tmp_path):
    array = pixels / np.float32(255)
    array[0, 0] = [1.005, -0.005, 0.5]
    np.save(tmp_path / "near.npy", array)
    assert read_image(tmp_path / "near.npy")[:, 0, 0].tolist() == [1.0, 0.0, 0.5]
    ok(restore(ckpts["denoise"], tmp_path / "near.npy", tmp_path / "a.png", "--simulate"))
    array[0, 0] = [1.2, -0.3, 0.5]
    np.save(tmp_path / "far.npy", array)
    one_line_error(restore(ckpts["denoise"], tmp_path / "far.npy", tmp_path / "b.png", "--simulate"),
                   "far.npy", "-0.3 to 1.2", "clip")


def test_a_noisy_observation_keeps_its_noise(ckpts, pixels, tmp_path):
    """Noise (σ = 0.3 here) puts an observation beyond [0, 1]: restored as stored, not refused nor clipped."""
    noisy = pixels / np.float32(255) + 0.3 * np.random.default_rng(0).standard_normal(pixels.shape, np.float32)
    assert noisy.min() < -0.5 and noisy.max() > 1.5
    np.save(tmp_path / "noisy.npy", noisy)
    assert torch.equal(read_image(tmp_path / "noisy.npy", observed=True), torch.from_numpy(noisy).permute(2, 0, 1))
    ok(restore(ckpts["denoise"], tmp_path / "noisy.npy", tmp_path / "o.npy"))


def test_a_0_255_training_image_is_refused_before_the_run(image_folder, pixels, tmp_path):
    data = Path(shutil.copytree(image_folder, tmp_path / "data"))
    tifffile.imwrite(data / "big.tif", pixels.astype(np.float32), photometric="rgb")
    refused_training(data, tmp_path / "run", fragments=("big.tif", "divide it by 255"))


# --------------------------------------------------------------------------- masks through the CLI


def _mask(path: Path, value) -> Path:
    """A mask file of ``value`` (an ``H×W`` array or one value): PNG for uint8, else .npy."""
    array = np.broadcast_to(np.asarray(value), (H, W))
    if array.dtype == np.uint8 and path.suffix == ".png":
        Image.fromarray(np.ascontiguousarray(array)).save(path)
    else:
        np.save(path, array)
    return path


def _sparse(fraction: float, white=255, dtype=np.uint8) -> np.ndarray:
    mask = np.zeros((H, W), dtype)
    mask.flat[:: round(1 / fraction)] = white
    return mask


BAD_MASKS = {
    "all black": ("m.png", np.uint8(0), "keeps no pixel"),
    "all 127": ("m.png", np.uint8(127), f"{H * W} of its {H * W} pixels are neither black nor white"),
    "soft 0.5": ("m.npy", np.float32(0.5), f"{H * W} of its {H * W} pixels are neither black nor white"),
    "7 gray pixels": ("m.png", np.where(np.arange(H * W).reshape(H, W) < 7, 128, 255).astype(np.uint8),
                      "7 of its"),
    "NaN": ("m.npy", np.where(np.eye(H, W) > 0, np.nan, 1.0).astype(np.float32), "non-finite"),
}


@pytest.mark.parametrize("case", BAD_MASKS)
@pytest.mark.parametrize("simulate", [False, True], ids=["observation", "--simulate"])
def test_masks_that_are_not_binary_or_keep_nothing_are_refused(case, simulate, ckpts, image_folder, tmp_path):
    name, value, found = BAD_MASKS[case]
    mask = _mask(tmp_path / name, value)
    result = restore(ckpts["inpaint"], image_folder / "im0.png", tmp_path / "o.png", "--mask", mask,
                     *(["--simulate"] if simulate else []))
    one_line_error(result, "--mask", str(mask), found)
    assert not (tmp_path / "o.png").exists()


def test_binary_masks_0_1_and_0_255_agree(ckpts, image_folder, tmp_path):
    outputs = []
    for i, (name, mask) in enumerate([("a.png", _sparse(0.5)), ("b.npy", _sparse(0.5, 1)),
                                      ("c.npy", _sparse(0.5, True, bool)), ("d.npy", _sparse(0.5, 1.0, np.float64))]):
        result = ok(restore(ckpts["inpaint"], image_folder / "im0.png", tmp_path / f"{i}.npy", "--mask",
                            _mask(tmp_path / name, mask)))
        assert "warning" not in result.stderr
        outputs.append(np.load(tmp_path / f"{i}.npy"))
    assert all(np.array_equal(outputs[0], o) for o in outputs[1:])


def test_a_mask_keeping_far_fewer_pixels_than_training_warns_it_may_be_inverted(ckpts, image_folder, tmp_path):
    mask = _mask(tmp_path / "m.png", _sparse(0.01))  # 1% kept; the checkpoint was trained with keep = 0.1
    result = ok(restore(ckpts["inpaint"], image_folder / "im0.png", tmp_path / "o.png", "--mask", mask))
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning:"), result.stderr
    assert all(f in lines[0] for f in ("--mask", "m.png", "1.0%", "10%", "inverted", "white")), lines[0]
    assert (tmp_path / "o.png").is_file()


def test_read_mask_reads_0_1_and_0_65535(tmp_path):
    np.save(tmp_path / "m.npy", _sparse(0.5, 65535, np.uint16))
    mask = read_mask(tmp_path / "m.npy")
    assert mask.shape == (3, H, W) and set(mask.unique().tolist()) == {0.0, 1.0}


# --------------------------------------------------------------------------- the Python API


@pytest.mark.parametrize(("option", "value"), [("T", 0), ("T", -1), ("T", 2.5), ("T", True), ("tol", float("nan")),
                                               ("tol", -1.0), ("tol", float("inf")), ("tol", "1e-3")])
def test_load_refuses_bad_T_and_tol_by_name(option, value, ckpts):
    with pytest.raises(ValueError, match=rf"^{option} must be"):
        retune_cli.load(ckpts["denoise"], **{option: value})


def test_restorer_scales_integer_tensors_and_refuses_0_255_floats(ckpts, pixels):
    restorer = retune_cli.load(ckpts["denoise"])
    y8 = torch.from_numpy(pixels.copy()).permute(2, 0, 1)
    expected = restorer(y8.float() / 255)
    assert torch.equal(restorer(y8), expected) and restorer(y8).dtype == torch.float32
    assert torch.equal(restorer(y8.to(torch.int32).mul(257).to(torch.uint16)), expected)
    with pytest.raises(ValueError, match="y holds values up to 255.*divide it by 255"):
        restorer(y8.float())
    with pytest.raises(ValueError, match="y has non-finite values"):
        restorer(torch.where(y8 > 128, torch.nan, 0.5))
    with pytest.raises(ValueError, match="int64 integers"):
        restorer(y8.long())
    with pytest.raises(ValueError, match=r"params\['mask'\] is no parameter of this checkpoint's physics denoise"):
        restorer(y8, {"mask": torch.ones(1, 1, H, W)})


def test_restorer_masks_are_binary_known_and_checked(ckpts, pixels):
    restorer = retune_cli.load(ckpts["inpaint"])
    y = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255
    half = torch.from_numpy(_sparse(0.5, 1.0, np.float32))[None, None]
    expected = restorer(y * half[0], {"mask": half})
    assert torch.equal(restorer(y * half[0], {"mask": half.bool()}), expected)
    assert torch.equal(restorer(y * half[0], {"mask": (half * 255).to(torch.uint8)}), expected)
    refusals = {"soft": (torch.full((1, 1, H, W), 0.5), "neither black nor white"),
                "all zero": (torch.zeros(1, 1, H, W), "keeps no pixel"),
                "wrong size": (torch.ones(1, 1, 8, 8), "of y's H, W")}
    for mask, message in refusals.values():
        with pytest.raises(ValueError, match=rf"params\['mask'\].*{message}"):
            restorer(y, {"mask": mask})
    with pytest.raises(ValueError, match=r"params\['kernel'\] is no parameter.*inpaint.*'mask'"):
        restorer(y, {"mask": half, "kernel": torch.ones(5, 5)})
    with pytest.warns(UserWarning, match="inverted"):
        restorer(y, {"mask": torch.from_numpy(_sparse(0.01, 1.0, np.float32))[None, None]})


def test_fit_data_follows_the_policy(tiny_overrides, tmp_path):
    images = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    assert torch.equal(TensorImages(images)[1], images[1].float() / 255)
    assert torch.equal(TensorImages(images.float() / 255 + 0.005)[0], (images[0].float() / 255 + 0.005).clamp(0, 1))
    for bad, found in ((images.float(), "divide it by 255"), (images.float() / 255 - 0.2, "clip it to [0, 1]")):
        with pytest.raises(InputError, match=rf"dataset item 0 holds values .*{re.escape(found)}"):
            retune_cli.fit("denoise-wavelet-b", bad, out=tmp_path / "run", overrides=tiny_overrides)
        assert not (tmp_path / "run").exists()


def test_unit_range_names_what_it_refuses():
    with pytest.raises(InputError, match="^x holds values up to 2: it is in 0–255"):
        unit_range(np.full((2, 2), 2.0), "x")
    assert unit_range(np.full((2, 2), 2.0), "x", observed=True).max() == 2.0  # as noise puts a few values
    with pytest.raises(InputError, match="^x holds values up to 200"):
        unit_range(np.where(np.eye(8) > 0, 200.0, 0.0), "x", observed=True)  # an inpainting observation in 0–255
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert unit_range(np.array([[True, False]]), "x").tolist() == [[1.0, 0.0]]


def test_a_keep_fraction_leaving_no_pixels_to_learn_from_is_refused(tmp_path):
    from typer.testing import CliRunner

    from retune_cli.cli import app

    result = CliRunner().invoke(app, ["train", "--preset", "inpaint-wavelet", "--set", "physics.keep=1e-9", "--out",
                                      str(tmp_path / "run"),
                                      "--steps", "1"])
    assert result.exit_code == 2 and "physics.keep" in result.stderr and "too few" in result.stderr
    assert not (tmp_path / "run").exists()
