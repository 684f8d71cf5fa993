"""Restoring real files: the result stored as the input was (gray, 16 bits), the printed scores are the
written file's, a folder scored against a reference folder, masks drawn white-on-holes, noise levels on
the 0–255 scale refused."""

from __future__ import annotations

import re
import shutil

import numpy as np
import png
import pytest
from PIL import Image
from typer.testing import CliRunner

from retune_cli.cli import app
from retune_cli.images import read_image

WIDE = {"COLUMNS": "300"}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def noisy_copy(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """``clean`` (uint8) plus Gaussian noise, clipped and quantized to 8 bits, as numpy users degrade."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(clean + rng.normal(0, 255 * sigma, clean.shape)), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.fixture
def noisy_folder(image_folder, tmp_path):
    """``(noisy, clean)`` folders of the same names: σ = 0.1 noise added by numpy."""
    noisy = tmp_path / "noisy"
    noisy.mkdir()
    for i, path in enumerate(sorted(image_folder.glob("*.png"))):
        Image.fromarray(noisy_copy(np.asarray(Image.open(path)), 0.1, i)).save(noisy / path.name)
    return noisy, image_folder


def test_printed_psnr_is_the_written_images(trained_run, noisy_folder, tmp_path):
    noisy, clean = noisy_folder
    out = tmp_path / "out.png"
    result = ok(invoke("restore", trained_run / "theta.safetensors", noisy / "im0.png", "--reference",
                       clean / "im0.png", "-o", out, "--T", 3, "--device", "cpu"))
    printed = float(re.search(r"PSNR (\d+\.\d+) dB", result.output).group(1))
    written = read_image(out).numpy()
    assert printed == pytest.approx(psnr(written, read_image(clean / "im0.png").numpy()), abs=0.006)
    assert "of the written image" in result.output


def test_gray_in_gray_out_and_16_bits_kept(trained_run, noisy_folder, tmp_path):
    noisy, _ = noisy_folder
    gray = tmp_path / "gray.png"
    Image.open(noisy / "im0.png").convert("L").save(gray)
    ok(invoke("restore", trained_run / "theta.safetensors", gray, "-o", tmp_path / "g.png", "--T", 2,
              "--device", "cpu"))
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode == "L" and im.size == (48, 40)
    deep = tmp_path / "deep.png"
    values = np.asarray(Image.open(noisy / "im0.png")).astype(np.uint16) * 257
    with open(deep, "wb") as f:
        png.Writer(48, 40, greyscale=False, bitdepth=16).write(f, values.reshape(40, -1))
    ok(invoke("restore", trained_run / "theta.safetensors", deep, "-o", tmp_path / "d.png", "--T", 2,
              "--device", "cpu"))
    assert png.Reader(filename=str(tmp_path / "d.png")).read()[3]["bitdepth"] == 16
    ok(invoke("restore", trained_run / "theta.safetensors", deep, "-o", tmp_path / "d8.png", "--bits", 8,
              "--T", 2, "--device", "cpu"))
    assert png.Reader(filename=str(tmp_path / "d8.png")).read()[3]["bitdepth"] == 8


def test_folder_against_a_reference_folder_prints_a_table(trained_run, noisy_folder, tmp_path):
    noisy, clean = noisy_folder
    result = ok(invoke("restore", trained_run / "theta.safetensors", noisy, "-o", tmp_path / "out",
                       "--reference", clean, "--T", 2, "--device", "cpu"))
    table = result.output[result.output.index("observation PSNR"):]
    assert all(f"im{i}.png" in table for i in range(3)) and "mean" in table
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if line.count("│") >= 5}
    means = [float(v) for v in rows["mean"].split("│")[2:6]]
    scores = [float(rows[f"im{i}.png"].split("│")[2]) for i in range(3)]
    assert means[0] == pytest.approx(np.mean(scores), abs=0.01)
    assert means[0] > means[2]  # restored beats the noisy input
    partial = tmp_path / "partial"
    shutil.copytree(clean, partial)
    (partial / "im2.png").unlink()
    one_line_error(invoke("restore", trained_run / "theta.safetensors", noisy, "-o", tmp_path / "o2",
                          "--reference", partial, "--device", "cpu"), "im2.png")
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("sigma, hint", [("8", "0.0314"), ("25,25,25", "0.098")])
def test_sigma_on_the_0_255_scale_is_refused(trained_run, image_folder, tmp_path, sigma, hint):
    one_line_error(invoke("restore", trained_run / "theta.safetensors", image_folder / "im0.png", "--sigma", sigma,
                          "-o", tmp_path / "o.png", "--device", "cpu"), "0–255", hint)
    assert not (tmp_path / "o.png").exists()


def test_inverted_mask_is_flagged_and_invert_mask_reads_it(tmp_path, image_folder):
    from tests.conftest import TINY_FLAGS

    run = tmp_path / "inpaint"
    ok(invoke("train", "--preset", "inpaint-wavelet", "--steps", 1, *TINY_FLAGS, "--data", image_folder,
              "--out", run))
    holes = np.zeros((40, 48), np.uint8)
    holes[10:13, 5:40] = 255  # a scratch, white = hole, as drawing tools make masks
    holes[20:30, 30:33] = 255
    Image.fromarray(holes).save(tmp_path / "holes.png")
    clean = image_folder / "im0.png"
    damaged = np.asarray(Image.open(clean)).copy()
    damaged[holes > 0] = 0
    Image.fromarray(damaged).save(tmp_path / "damaged.png")
    checkpoint = run / "theta.safetensors"
    flagged = ok(invoke("restore", checkpoint, tmp_path / "damaged.png", "--mask", tmp_path / "holes.png",
                        "-o", tmp_path / "a.png", "--T", 2, "--device", "cpu"))
    assert "is it inverted" in flagged.output and "--invert-mask" in flagged.output
    fixed = ok(invoke("restore", checkpoint, tmp_path / "damaged.png", "--mask", tmp_path / "holes.png",
                      "--invert-mask", "-o", tmp_path / "b.png", "--T", 2, "--reference", clean, "--device", "cpu"))
    assert "is it inverted" not in fixed.output
    restored, truth = read_image(tmp_path / "b.png").numpy(), read_image(clean).numpy()
    kept = holes == 0
    assert np.abs(restored[:, kept] - truth[:, kept]).mean() < 0.05  # the known pixels are kept
    one_line_error(invoke("restore", checkpoint, clean, "--simulate", "--invert-mask", "-o", tmp_path / "c.png",
                          "--device", "cpu"), "--invert-mask", "--mask")


def reflect_blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``image`` (H×W×3 float) blurred as an image editor blurs: edges extended by reflection (numpy)."""
    h, w = kernel.shape
    padded = np.pad(image, ((h // 2, h // 2), (w // 2, w // 2), (0, 0)), mode="reflect")
    out = np.zeros_like(image)
    for i in range(h):
        for j in range(w):
            out += kernel[i, j] * padded[i:i + image.shape[0], j:j + image.shape[1]]
    return out


def test_a_photo_blurred_outside_retune_restores_without_border_ringing(tmp_path, image_folder):
    from tests.conftest import TINY_FLAGS

    run = tmp_path / "deblur"
    ok(invoke("train", "--preset", "deblur-wavelet", "--steps", 1, *TINY_FLAGS, "--data", image_folder, "--out", run,
              "--set", "physics.blur_width=5"))
    yy, xx = np.mgrid[-3:4, -3:4]
    kernel = np.exp(-(yy**2 + xx**2) / (2 * 1.5**2))
    kernel /= kernel.sum()
    np.save(tmp_path / "kernel.npy", kernel)
    clean = read_image(image_folder / "im1.png").numpy().transpose(1, 2, 0)
    blurred = reflect_blur(clean, kernel) + np.random.default_rng(0).normal(0, 0.01, clean.shape)
    Image.fromarray((np.clip(blurred, 0, 1) * 255).round().astype(np.uint8)).save(tmp_path / "blurred.png")
    scores = {}
    for boundary in ("reflect", "circular"):
        out = tmp_path / f"{boundary}.png"
        extra = [] if boundary == "reflect" else ["--boundary", "circular"]
        result = ok(invoke("restore", run / "theta.safetensors", tmp_path / "blurred.png", "--kernel",
                           tmp_path / "kernel.npy", "-o", out, "--T", 30, "--device", "cpu", *extra))
        assert ("physics.boundary reflect for this restore" in result.output) == (boundary == "reflect")
        restored = read_image(out).numpy().transpose(1, 2, 0)
        border = np.ones(clean.shape[:2], bool)
        border[4:-4, 4:-4] = False
        scores[boundary] = psnr(restored[border], clean[border])
    observed = read_image(tmp_path / "blurred.png").numpy().transpose(1, 2, 0)
    assert scores["reflect"] > psnr(observed[border], clean[border]), scores  # the border is restored, not rung
    assert scores["reflect"] > scores["circular"] + 3, scores
    one_line_error(invoke("restore", run / "theta.safetensors", tmp_path / "blurred.png", "--kernel",
                          tmp_path / "kernel.npy", "--boundary", "zero", "-o", tmp_path / "z.png", "--device", "cpu"),
                   "physics.boundary")


def test_boundary_on_a_denoiser_is_refused(trained_run, image_folder, tmp_path):
    one_line_error(invoke("restore", trained_run / "theta.safetensors", image_folder / "im0.png", "--boundary",
                          "reflect", "-o", tmp_path / "o.png", "--device", "cpu"), "--boundary", "denoise")


def test_models_lists_the_ready_made_ones():
    result = ok(invoke("models"))
    for name in ("denoise", "inpaint", "deblur", "scratches", "sr2", "sr4"):
        assert name in result.output
    assert "CBSD68" in result.output


def test_a_ready_made_model_restores_with_the_noise_level_estimated(tmp_path):
    """``restore IMAGE --model denoise``: no checkpoint of the user's, the noise level estimated per channel."""
    from retune_cli.data import sample_dir

    clean = np.asarray(Image.open(sorted(sample_dir().glob("*.png"))[0]).convert("RGB"))[:96, :96]
    Image.fromarray(clean).save(tmp_path / "clean.png")
    Image.fromarray(noisy_copy(clean, 0.05, 0)).save(tmp_path / "noisy.png")
    result = ok(invoke("restore", tmp_path / "noisy.png", "--model", "denoise", "-o", tmp_path / "out.png",
                       "--reference", tmp_path / "clean.png", "--device", "cpu"))
    estimated = [float(v) for v in re.search(r"estimated noise σ ([\d., ]+) \(", result.output).group(1).split(",")]
    assert all(0.04 < s < 0.06 for s in estimated), result.output
    scores = re.search(r"PSNR (\S+) dB \(observation (\S+) dB\)", result.output).groups()
    restored, observed = (float(v) for v in scores)
    assert restored > observed + 3
    one_line_error(invoke("restore", tmp_path / "noisy.png", "--model", "sharpen", "-o", tmp_path / "o.png"),
                   "sharpen", "denoise")
    one_line_error(invoke("restore", tmp_path / "noisy.png", tmp_path / "noisy.png", "--model", "denoise",
                          "-o", tmp_path / "o.png"), "replaces the checkpoint")
    one_line_error(invoke("restore", tmp_path / "noisy.png", "-o", tmp_path / "o.png"), "--model")


def test_the_scratches_model_fills_strokes_better_than_the_holes_were(tmp_path):
    """``restore --model scratches --mask holes.png --invert-mask`` on a clean photo with brush strokes painted
    black: the written image scores far above the damaged one, and the known pixels are kept."""
    from PIL import ImageDraw

    from retune_cli.data import sample_dir

    clean = np.asarray(Image.open(sorted(sample_dir().glob("*.png"))[0]).convert("RGB"))[:64, :64]
    holes = Image.new("L", (64, 64))
    ImageDraw.Draw(holes).line([(5, 10), (58, 40), (20, 60)], fill=255, width=6)
    hole = np.asarray(holes) > 127
    damaged = clean.copy()
    damaged[hole] = 0
    Image.fromarray(clean).save(tmp_path / "clean.png")
    Image.fromarray(damaged).save(tmp_path / "damaged.png")
    holes.save(tmp_path / "holes.png")
    result = ok(invoke("restore", tmp_path / "damaged.png", "--model", "scratches", "--mask", tmp_path / "holes.png",
                       "--invert-mask", "-o", tmp_path / "out.png", "--reference", tmp_path / "clean.png",
                       "--device", "cpu"))
    restored, observed = (float(v) for v in re.search(r"PSNR (\S+) dB \(observation (\S+) dB\)",
                                                       result.output).groups())
    assert restored > observed + 10, result.output
    out = np.asarray(Image.open(tmp_path / "out.png").convert("RGB")).astype(float)
    assert np.abs(out[~hole] - clean[~hole]).mean() < 3  # known pixels: σ 0.01 of smoothing at most


def test_a_psf_image_is_a_kernel_divided_by_its_sum(tmp_path, image_folder):
    """``--kernel psf.png`` (a blur kernel saved as an image, any brightness) restores as the same kernel
    given as a normalized ``.npy`` array."""
    from tests.conftest import TINY_FLAGS

    run = tmp_path / "deblur"
    ok(invoke("train", "--preset", "deblur-wavelet", "--steps", 1, *TINY_FLAGS, "--data", image_folder, "--out", run,
              "--set", "physics.blur_width=5"))
    psf = np.zeros((7, 7), np.uint8)
    psf[3, 1:6] = 200  # a horizontal motion of 5 pixels, as an editor would save it
    Image.fromarray(psf).save(tmp_path / "psf.png")
    np.save(tmp_path / "psf.npy", (psf / psf.sum()).astype(np.float32))
    for kernel in ("psf.png", "psf.npy"):
        ok(invoke("restore", run / "theta.safetensors", image_folder / "im0.png", "--kernel", tmp_path / kernel,
                  "-o", tmp_path / f"{kernel}.out.npy", "--T", 3, "--device", "cpu"))
    assert np.allclose(np.load(tmp_path / "psf.png.out.npy"), np.load(tmp_path / "psf.npy.out.npy"), atol=1e-6)
