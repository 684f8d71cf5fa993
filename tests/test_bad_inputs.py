"""Reliability, bad input: every input error is one line naming the file or option, exit 2, no
traceback; a run is never overwritten without ``--force``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import png
import pytest
import torch
from conftest import smooth_image
from PIL import Image
from reliability import (
    FAST,
    WAIT,
    WIDE,
    files_of,
    invoke,
    log_rows,
    ok,
    one_line_error,
)

from retune_cli import checkpoint as ckpt
from retune_cli.config import resolve
from retune_cli.models import build_scheme

# --------------------------------------------------------------------------- bad image files


def _write_png16_gray(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        png.Writer(array.shape[1], array.shape[0], greyscale=True, bitdepth=16).write(f, array)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _write_png16_bomb(path: Path, side: int) -> None:
    """A valid 16-bit grayscale PNG of side×side black pixels, streamed: ~side²·2 bytes compress to a few hundred KB."""
    ihdr = side.to_bytes(4, "big") * 2 + bytes([16, 0, 0, 0, 0])
    compressor = zlib.compressobj()
    row = bytes(1 + 2 * side)  # filter byte 0, then zeros
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


BOMB_SIDE = 14000  # 1.96e8 pixels > 2 × PIL's default MAX_IMAGE_PIXELS (8.9e7): refused, not just warned about


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> dict[str, Path]:
    """One 48×40 (W×H) file per case, and the bombs."""
    folder = tmp_path_factory.mktemp("image_files")
    rgb = smooth_image(np.random.default_rng(3), 40, 48)
    files = {}

    def path(name):
        files[name.split(".")[0]] = folder / name
        return folder / name

    Image.fromarray(rgb).convert("P").save(path("palette.png"))
    _write_png16_gray(path("gray16.png"), rgb[..., 0].astype(np.uint16) * 257)
    Image.fromarray(rgb).convert("CMYK").save(path("cmyk.jpg"))
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(path("rgba.png"))
    Image.fromarray(rgb[..., 0]).save(path("gray.png"))

    Image.fromarray(rgb).save(path("truncated.png"))
    data = files["truncated"].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    path("text.png").write_text("these are notes, not pixels\n")
    path("zero.jpg").write_bytes(b"")
    Image.new("1", (BOMB_SIDE, BOMB_SIDE)).save(path("bomb.png"))
    assert files["bomb"].stat().st_size < 100_000  # cheap to write and to refuse

    _write_png16_gray(path("truncated16.png"), rgb[..., 0].astype(np.uint16) * 257)
    data = files["truncated16"].read_bytes()
    files["truncated16"].write_bytes(data[: len(data) // 2])
    _write_png16_gray(path("badcrc16.png"), rgb[..., 0].astype(np.uint16) * 257)
    data = bytearray(files["badcrc16"].read_bytes())
    data[-20] ^= 0xFF  # a byte of the last IDAT's payload: its CRC no longer matches
    files["badcrc16"].write_bytes(bytes(data))
    return files


CONVERTIBLE = ["palette", "gray16", "cmyk", "rgba", "gray"]
UNREADABLE = ["truncated", "text", "zero", "bomb"]
UNREADABLE_16 = ["truncated16", "badcrc16"]


@pytest.mark.parametrize("name", CONVERTIBLE)
def test_convertible_images_train_and_restore(name, image_files, trained_run, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(image_files[name], folder)
    ok(invoke("train", "--steps", 1, *FAST, "--data", folder, "--out", tmp_path / "run"))
    assert ckpt.load(tmp_path / "run" / "theta.safetensors").step == 1
    ok(invoke("restore", trained_run / "theta.safetensors", image_files[name], "-o", tmp_path / "out.npy"))
    restored = np.load(tmp_path / "out.npy")  # gray in, gray out
    assert restored.shape == ((40, 48) if "gray" in name else (40, 48, 3)) and np.isfinite(restored).all()


@pytest.mark.parametrize("name", UNREADABLE + UNREADABLE_16)
def test_unreadable_image_in_data_folder_is_named(name, image_files, make_png_folder, tmp_path):
    folder = make_png_folder(tmp_path / "data", 2)  # good images first: the bad one is found among them
    bad = folder / f"zz-{image_files[name].name}"
    shutil.copy(image_files[name], bad)
    one_line_error(invoke("train", "--steps", 1, *FAST, "--data", folder, "--out", tmp_path / "run"), str(bad))
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


@pytest.mark.parametrize("name", UNREADABLE + UNREADABLE_16)
def test_unreadable_image_to_restore_is_named(name, image_files, trained_run, tmp_path):
    result = invoke("restore", trained_run / "theta.safetensors", image_files[name], "-o", tmp_path / "out.png")
    one_line_error(result, str(image_files[name]))
    assert not (tmp_path / "out.png").exists()


def test_decompression_bomb_message(image_files, trained_run, tmp_path):
    line = one_line_error(invoke("restore", trained_run / "theta.safetensors", image_files["bomb"]))
    assert "too large" in line


def test_16bit_png_decompression_bomb_is_refused(tmp_path):
    bomb = tmp_path / "bomb16.png"
    _write_png16_bomb(bomb, BOMB_SIDE)
    assert bomb.stat().st_size < 2_000_000
    # In a child whose address space is capped at 1 GiB above its size after imports: a guard refuses at once;
    # decoding the bomb runs out of memory instead of taking the machine's.
    code = (
        "import resource, sys\n"
        "from retune_cli.errors import InputError\n"
        "from retune_cli.images import read_image\n"
        "size = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    read_image(sys.argv[1])\n"
        "except InputError as e:\n"
        "    print('refused:', e)\n"
        "    sys.exit(2)\n"
        "print('decoded')\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 2, result.stdout + result.stderr[-2000:]
    assert str(bomb) in result.stdout


def test_non_image_files_are_listed_in_a_warning(make_png_folder, tmp_path):
    folder = make_png_folder(tmp_path / "data", 2)
    (folder / "README.txt").write_text("about these images")
    result = ok(invoke("train", "--steps", 1, *FAST, "--data", folder, "--out", tmp_path / "run"))
    warnings = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert len(warnings) == 1 and "README.txt" in warnings[0], result.stderr
    assert "im0.png" not in warnings[0]


def test_the_image_smaller_than_the_crop_is_named(make_png_folder, tmp_path):
    folder = make_png_folder(tmp_path / "data", 2)  # 48×40
    Image.fromarray(smooth_image(np.random.default_rng(1), 20, 24)).save(folder / "small.png")
    line = one_line_error(invoke("train", "--steps", 1, *FAST, "--data", folder, "--out", tmp_path / "run"))
    assert str(folder / "small.png") in line and "im0.png" not in line and "--crop 20" in line


def test_bad_image_in_a_real_process_is_one_line(image_files, image_folder, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(image_folder, folder)
    shutil.copy(image_files["truncated"], folder / "truncated.png")
    result = subprocess.run(
        [sys.executable, "-m", "retune_cli", "train", *FAST, "--data", folder, "--out", tmp_path / "run"],
        capture_output=True,
        text=True,
        env=os.environ | WIDE,
        timeout=WAIT,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(folder / "truncated.png") in lines[0], result.stderr


# --------------------------------------------------------------------------- config errors


@pytest.fixture
def preset_files(tmp_path) -> dict[str, Path]:
    files = {
        "broken.yaml": "train:\n  K: [1, 2\n  T: 3\n",
        "typo.yaml": "model:\n  wavelett: db4\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "latin1.yaml").write_bytes("description: café crème\n".encode("latin-1"))
    return {name: tmp_path / name for name in (*files, "latin1.yaml")}


CONFIG_ERRORS = {
    "K not a number": (["--set", "train.K=ten"], "train.K"),
    "NaN sigma": (["--set", "physics.sigma=.nan"], "physics.sigma"),
    "NaN in a sigma list": (["--set", "physics.sigma=[0.1, .nan, 0.3]"], "physics.sigma"),
    "lr 0": (["--lr", "0"], "train.lr"),
    "lr nan": (["--lr", "nan"], "train.lr"),
    "negative clip": (["--clip-grad-norm", "-1"], "clip_grad_norm"),
    "nan clip": (["--clip-grad-norm", "nan"], "clip_grad_norm"),
    "checkpoint_every 0": (["--set", "train.checkpoint_every=0"], "train.checkpoint_every"),
    "negative gradient checks": (["--check-gradient-every", "-1"], "check_gradient_every"),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS)
def test_config_errors_on_the_command_line(case, image_folder, tmp_path):
    args, fragment = CONFIG_ERRORS[case]
    result = invoke("train", "--steps", 1, *FAST, "--data", image_folder, "--out", tmp_path / "run", *args)
    one_line_error(result, fragment)
    assert not (tmp_path / "run").exists()


def test_yaml_syntax_error_in_a_preset_file_gives_the_line(preset_files, image_folder, tmp_path):
    path = preset_files["broken.yaml"]
    result = invoke("train", "--preset", path, *FAST, "--data", image_folder, "--out", tmp_path / "run")
    one_line_error(result, str(path), "line 3")


def test_unknown_key_in_a_section_of_a_preset_file(preset_files, image_folder, tmp_path):
    path = preset_files["typo.yaml"]
    result = invoke("train", "--preset", path, *FAST, "--data", image_folder, "--out", tmp_path / "run")
    one_line_error(result, str(path), "model.wavelett")


def test_preset_file_that_is_not_utf8(preset_files, image_folder, tmp_path):
    path = preset_files["latin1.yaml"]
    result = invoke("train", "--preset", path, *FAST, "--data", image_folder, "--out", tmp_path / "run")
    one_line_error(result, str(path))


def test_seed_out_of_range(image_folder, tmp_path):
    result = invoke("train", "--steps", 1, *FAST, "--seed", 2**64, "--data", image_folder, "--out", tmp_path / "run")
    one_line_error(result, "seed")


@pytest.mark.parametrize(
    "case", ["train --out is a file", "train --out under a file", "restore -o under a file", "restore -o is a folder"]
)
def test_output_path_that_cannot_be_made(case, trained_run, image_folder, tmp_path):
    (tmp_path / "notes.txt").write_text("a file")
    (tmp_path / "folder.png").mkdir()
    target = {
        "train --out is a file": tmp_path / "notes.txt",
        "train --out under a file": tmp_path / "notes.txt" / "run",
        "restore -o under a file": tmp_path / "notes.txt" / "out.png",
        "restore -o is a folder": tmp_path / "folder.png",
    }[case]
    if case.startswith("train"):
        result = invoke("train", "--steps", 1, *FAST, "--data", image_folder, "--out", target)
    else:
        result = invoke("restore", trained_run / "theta.safetensors", image_folder / "im0.png", "-o", target)
    one_line_error(result, str(target))


# --------------------------------------------------------------------------- bad checkpoints


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A copy of the 3-step tiny run (tests write into it)."""
    return Path(shutil.copytree(trained_run, tmp_path / "copy"))


@pytest.fixture
def truncated_checkpoint(run_copy) -> Path:
    path = run_copy / "theta.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def mismatched_checkpoint(tmp_path, image_folder) -> Path:
    """θ of bands-channels weights saved under a bands config."""
    bands = resolve("denoise-wavelet-b", {"train.crop": 32, "train.K": 1, "train.T": 1})
    wrong = ckpt.learned_parameters(build_scheme(resolve("denoise-wavelet-bc")))
    path = tmp_path / "mismatch" / "theta.safetensors"
    ckpt.save(path, bands, wrong, 1, 0.0, None, image_folder)
    return path


def test_truncated_checkpoint_on_the_command_line(truncated_checkpoint, image_folder, tmp_path):
    path = truncated_checkpoint
    one_line_error(invoke("restore", path, image_folder / "im0.png", "-o", tmp_path / "o.png"), str(path))
    one_line_error(invoke("train", "--resume", path, "--steps", 5, "--data", image_folder), str(path))
    one_line_error(invoke("eval", path, "--data", image_folder), str(path))


def test_checkpoint_whose_tensors_do_not_match_its_config(mismatched_checkpoint, image_folder, tmp_path):
    path = mismatched_checkpoint
    one_line_error(invoke("restore", path, image_folder / "im0.png", "-o", tmp_path / "o.png"), str(path), "match")
    one_line_error(invoke("train", "--resume", path, "--steps", 5, "--data", image_folder), str(path), "match")


def test_resume_with_another_preset(run_copy):
    before = files_of(run_copy)
    result = invoke("train", "--resume", run_copy / "theta.safetensors", "--preset", "denoise-wavelet-bc", "--steps", 5)
    one_line_error(result, "--preset", "denoise-wavelet-b")
    assert files_of(run_copy) == before


def _resave_with_optimizer(path: Path, change) -> None:
    loaded = ckpt.load(path)
    ckpt.save(
        path,
        loaded.config,
        loaded.parameters,
        loaded.step,
        loaded.train_psnr,
        change(dict(loaded.optimizer)),
        loaded.data,
    )


def _grow_first_moment(optimizer: dict) -> dict:
    key = sorted(k for k in optimizer if k.endswith(".exp_avg"))[0]
    optimizer[key] = torch.zeros(optimizer[key].numel() + 3)
    return optimizer


def _drop_step_counts(optimizer: dict) -> dict:
    return {k: v for k, v in optimizer.items() if not k.endswith(".step")}


@pytest.mark.parametrize("change", [_grow_first_moment, _drop_step_counts], ids=["wrong shape", "no step count"])
def test_resume_refuses_optimizer_state_that_does_not_match(change, run_copy, image_folder):
    path = run_copy / "theta.safetensors"
    _resave_with_optimizer(path, change)
    one_line_error(invoke("train", "--resume", path, "--steps", 5, "--data", image_folder), str(path))


# --------------------------------------------------------------------------- never overwrite without --force


def test_refused_second_train_leaves_every_file_of_the_run_untouched(run_copy, image_folder):
    before = files_of(run_copy)
    assert {"theta.safetensors", "config.yaml", "log.csv", "psnr.png"} <= before.keys()
    one_line_error(invoke("train", "--steps", 2, *FAST, "--data", image_folder, "--out", run_copy), "--force")
    assert files_of(run_copy) == before
    ok(invoke("train", "--steps", 2, *FAST, "--data", image_folder, "--out", run_copy, "--force"))
    assert ckpt.load(run_copy / "theta.safetensors").step == 2
    assert [r["step"] for r in log_rows(run_copy)] == ["1", "2"]


def test_resume_into_another_run_folder_needs_force(trained_run, image_folder, tmp_path):
    source = Path(shutil.copytree(trained_run, tmp_path / "a"))
    other = Path(shutil.copytree(trained_run, tmp_path / "b"))
    before = files_of(other)
    result = invoke("train", "--resume", source / "theta.safetensors", "--steps", 4, "--out", other)
    assert files_of(other) == before
    one_line_error(result, "--force")
