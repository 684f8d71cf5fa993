"""The user's own degradation in training: mask generators (``physics.mask``), a mask folder
(``physics.masks``), kernel files (``physics.kernel: FILE``), drawn per image from the seed, their bad
inputs refused in one line, and their checkpoints re-reading the files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reliability import FAST, invoke, ok, one_line_error

from retune_cli.config import resolve
from retune_cli.core.masks import MASK_KINDS, MISSING, draw_masks
from retune_cli.degradations import degradation_key, degradation_name
from retune_cli.errors import InputError
from retune_cli.models import physics_from

SHAPE = (3, 3, 64, 64)


def write_masks(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> Path:
    """Black-and-white PNG masks ``H × W`` (white = kept, about 80 %)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(((rng.random((h, w)) < 0.8) * 255).astype(np.uint8)).save(folder / f"m{i}.png")
    return folder


def physics(preset: str, **overrides):
    return physics_from(resolve(preset, {"train.crop": 32, **overrides}))


@pytest.mark.parametrize("kind", [k for k in MASK_KINDS if k != "random"])
def test_generated_masks_are_binary_seeded_and_cover_a_sensible_fraction(kind):
    masks = draw_masks(kind, SHAPE, seed=5, keep=0.1)
    assert masks.shape == (3, 1, 64, 64) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(masks, draw_masks(kind, SHAPE, seed=5, keep=0.1))
    assert not torch.equal(masks, draw_masks(kind, SHAPE, seed=6, keep=0.1))
    assert not torch.equal(masks[0], masks[1])  # drawn per image
    for seed in range(4):
        missing = 1 - draw_masks(kind, SHAPE, seed, keep=0.1).mean(dim=(1, 2, 3))
        assert torch.all(missing >= MISSING[0]) and torch.all(missing <= MISSING[1]), (kind, missing)


def test_random_masks_are_unchanged_and_the_kind_reaches_the_physics():
    p = physics("inpaint-tv")
    generator = torch.Generator().manual_seed(3 ^ 0x5DEECE66D)  # today's draw: each pixel kept with probability keep
    expected = (torch.rand((3, 1, 64, 64), generator=generator) < 0.1).to(torch.float32)
    assert torch.equal(p.draw(torch.Size(SHAPE), 3)["mask"], expected)
    strokes = physics("inpaint-tv", **{"physics.mask": "strokes"}).draw(torch.Size(SHAPE), 3)["mask"]
    assert torch.equal(strokes, draw_masks("strokes", SHAPE, 3 ^ 0x5DEECE66D, 0.1))


def test_mask_folder_is_drawn_per_image_and_cut_to_the_crop(tmp_path):
    folder = write_masks(tmp_path / "masks", [(40, 48), (32, 32), (64, 36)])
    p = physics("inpaint-tv", **{"physics.masks": str(folder)})
    masks = p.draw(torch.Size((8, 3, 32, 32)), 1)["mask"]
    assert masks.shape == (8, 1, 32, 32) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(masks, p.draw(torch.Size((8, 3, 32, 32)), 1)["mask"])
    assert len({m.numpy().tobytes() for m in masks}) > 1
    given = [np.asarray(Image.open(folder / f"m{i}.png")) > 0 for i in range(3)]

    def cut_of_one(mask: np.ndarray) -> bool:
        return any((g[y:y + 32, x:x + 32] == mask).all() for g in given
                   for y in range(g.shape[0] - 31) for x in range(g.shape[1] - 31))

    assert all(cut_of_one(m[0].numpy() > 0) for m in masks)
    large = p.draw(torch.Size((4, 3, 80, 100)), 1)["mask"]  # an evaluation image larger than the masks
    assert large.shape == (4, 1, 80, 100) and set(large.unique().tolist()) <= {0.0, 1.0}


def test_new_options_make_degradation_groups(tmp_path):
    plain, strokes = resolve("inpaint-tv"), resolve("inpaint-tv", {"physics.mask": "strokes"})
    assert degradation_key(plain.physics) != degradation_key(strokes.physics)
    assert degradation_name(plain.physics) == "inpaint · keep = 0.1 · σ = 0.05"
    assert "mask = strokes" in degradation_name(strokes.physics)
    np.save(tmp_path / "k.npy", np.ones((5, 5), np.float32))
    blur = resolve("deblur-tv", {"physics.kernel": str(tmp_path / "k.npy")})
    assert degradation_key(blur.physics) != degradation_key(resolve("deblur-tv").physics)
    assert f"kernel = {tmp_path / 'k.npy'}" in degradation_name(blur.physics)


def adjoint_gap(p, params: dict, shape: tuple) -> float:
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.rand(shape, generator=generator, dtype=torch.float64) for _ in range(2))
    params = {k: v.double() for k, v in params.items()}
    return abs(float((p.A(x, params) * y).sum() - (x * p.A_adjoint(y, params)).sum()))


@pytest.mark.parametrize("shape, stack", [((7, 7), False), ((3, 7, 7), False), ((1, 3, 7, 7), False),
                                          ((5, 7, 7), True), ((4, 3, 7, 7), True), ((2, 1, 7, 7), True)])
def test_kernel_files_single_or_stack(tmp_path, shape, stack):
    array = np.random.default_rng(0).random(shape).astype(np.float32) * 10  # not normalized
    np.save(tmp_path / "k.npy", array)
    p = physics("deblur-tv", **{"physics.kernel": str(tmp_path / "k.npy")})
    params = p.draw(torch.Size((6, 3, 32, 32)), 2)
    kernels = params["kernel"] if stack else p.kernel
    assert torch.allclose(kernels.sum(dim=(-2, -1)), torch.ones(1), atol=1e-5)
    if stack:
        assert kernels.shape == (6, 3, 7, 7) and torch.equal(kernels, p.draw(torch.Size((6, 3, 32, 32)), 2)["kernel"])
        assert len({k.numpy().tobytes() for k in kernels}) > 1  # drawn per image
    else:
        assert params == {} and p.kernel.shape == (1, 3, 7, 7)
    assert adjoint_gap(p, params, (6, 3, 32, 32)) < 1e-9


@pytest.mark.parametrize("boundary", ["reflect", "replicate"])
def test_kernel_stack_with_a_padded_boundary(tmp_path, boundary):
    np.save(tmp_path / "k.npy", np.random.default_rng(0).random((4, 3, 5, 6)).astype(np.float32))
    p = physics("deblur-tv", **{"physics.kernel": str(tmp_path / "k.npy"), "physics.boundary": boundary,
                                "model.scheme": "pd"})
    params = p.draw(torch.Size((3, 3, 32, 32)), 0)
    assert params["kernel"].shape == (3, 3, 5, 6) and adjoint_gap(p, params, (3, 3, 32, 32)) < 1e-9


@pytest.mark.parametrize("colour", [False, True])
def test_psf_image_kernel(tmp_path, colour):
    psf = np.zeros((9, 9, 3) if colour else (9, 9), np.uint8)
    psf[4, :] = 255
    if colour:
        psf[:, 4, 1] = 255
    Image.fromarray(psf).save(tmp_path / "psf.png")
    p = physics("deblur-tv", **{"physics.kernel": str(tmp_path / "psf.png")})
    assert p.kernel.shape == (1, 3, 9, 9)
    assert torch.allclose(p.kernel.sum(dim=(-2, -1)), torch.ones(1, 3))
    assert torch.equal(p.kernel[0, 0], p.kernel[0, 1]) != colour


@pytest.mark.parametrize("case", ["missing kernel", "zero kernel", "missing folder", "empty folder",
                                  "unreadable mask", "small mask", "unknown kind"])
def test_bad_inputs_are_one_line(tmp_path, image_folder, case):
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "zero.npy", np.array([[1.0, -1.0]], np.float32))
    write_masks(tmp_path / "small", [(40, 40), (20, 40)])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "m.png").write_bytes(b"not a png")
    preset, key, value, fragments = {
        "missing kernel": ("deblur-tv", "kernel", tmp_path / "gone.npy", ("physics.kernel", "gone.npy", "not exist")),
        "zero kernel": ("deblur-tv", "kernel", tmp_path / "zero.npy", ("physics.kernel", "zero.npy", "sums to 0")),
        "missing folder": ("inpaint-tv", "masks", tmp_path / "none", ("physics.masks", "none")),
        "empty folder": ("inpaint-tv", "masks", tmp_path / "empty", ("physics.masks", "empty", "no images")),
        "unreadable mask": ("inpaint-tv", "masks", tmp_path / "bad", ("physics.masks", "m.png")),
        "small mask": ("inpaint-tv", "masks", tmp_path / "small", ("m1.png", "40×20", "32×32")),
        "unknown kind": ("inpaint-tv", "mask", "scribbles", ("random, strokes, text, blocks", "scribbles")),
    }[case]
    out = tmp_path / "run"
    result = invoke("train", "--preset", preset, "--steps", 1, *FAST, "--data", image_folder, "--out", out,
                    "--set", f"physics.{key}={value}")
    one_line_error(result, *fragments)
    with pytest.raises(InputError):
        physics(preset, **{f"physics.{key}": str(value)})


def test_train_with_strokes_end_to_end(tmp_path, image_folder):
    out = tmp_path / "run"
    ok(invoke("train", "--preset", "inpaint-tv", "--set", "physics.mask=strokes", "--steps", 2, *FAST,
              "--data", image_folder, "--out", out))
    assert (out / "theta.safetensors").is_file()


def test_train_with_a_kernel_file_and_its_checkpoint_rereads_it(tmp_path, image_folder):
    kernel = tmp_path / "k.npy"
    np.save(kernel, np.random.default_rng(1).random((3, 1, 5, 5)).astype(np.float32))
    out = tmp_path / "run"
    ok(invoke("train", "--preset", "deblur-tv", "--set", f"physics.kernel={kernel}", "--steps", 2, *FAST,
              "--data", image_folder, "--out", out))
    checkpoint = out / "theta.safetensors"
    ok(invoke("eval", checkpoint, "--data", image_folder, "--T", 1, "--device", "cpu"))
    kernel.unlink()
    one_line_error(invoke("eval", checkpoint, "--data", image_folder, "--T", 1, "--device", "cpu"),
                   "physics.kernel", str(kernel))
    one_line_error(invoke("restore", checkpoint, image_folder / "im0.png", "--simulate", "-o", tmp_path / "r.png"),
                   "physics.kernel", str(kernel))
