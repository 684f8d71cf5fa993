"""Reliability: bad input is one line and exit 2; Ctrl-C, SIGTERM and kill -9 keep a readable checkpoint;
``--resume`` is exact; divergence stops with a message and keeps the last finite checkpoint; a run is never
overwritten without ``--force``.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import png
import pytest
import torch
from conftest import smooth_image
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from retune_cli import checkpoint as ckpt
from retune_cli.cli import app
from retune_cli.config import resolve
from retune_cli.models import build_scheme
from retune_cli.restore import load_model

WIDE = {"COLUMNS": "400"}  # Rich must not wrap the one-line messages
FAST = ["--crop", "32", "--batch-size", "1", "--K", "1", "--T", "1", "--device", "cpu"]
EVERY_STEP = ["--set", "train.checkpoint_every=1"]
WAIT = 180  # seconds: a generous bound for a loaded machine; the runs take a few seconds
# What an atomic write killed mid-way may leave: checkpoint.save's temporary file, and the one safetensors' save_file
# itself writes first (0.8 writes through a Rust NamedTempFile, ".tmpXXXXXX", then renames it).
LEFTOVER = re.compile(r"^(\.theta\.safetensors\..+\.tmp|\.tmp\w{6})$")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


def ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def one_line_error(result, *fragments: str) -> str:
    """Exit 2, no traceback, exactly one line on stderr, starting with ``error:`` and naming ``fragments``."""
    assert result.exit_code == 2, (result.output, repr(result.exception))
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an uncaught exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def log_rows(folder: Path) -> list[dict]:
    path = folder / "log.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def complete_rows(folder: Path) -> int:
    """Rows of log.csv fully written (a line ending in a newline), without the header."""
    path = folder / "log.csv"
    if not path.is_file():
        return 0
    return max(0, path.read_bytes().count(b"\n") - 1)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_tensors(a: Path, b: Path) -> None:
    """θ and every Adam state tensor bitwise equal."""
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    assert any(k.startswith("optimizer.") for k in ta)  # Adam's state is compared too
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def assert_same_log(a: Path, b: Path) -> None:
    def key(folder):
        return [(r["step"], r["loss"], r["psnr"], r["tau"]) for r in log_rows(folder)]

    assert key(a) == key(b)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_readable_checkpoint(folder: Path) -> ckpt.Checkpoint | None:
    """After a kill: the checkpoint, when there is one, loads both ways; only temporary files are left over."""
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    suspects = [n for n in names if n.startswith(".") or "theta" in n]
    assert all(n == "theta.safetensors" or LEFTOVER.match(n) for n in suspects), names
    path = folder / "theta.safetensors"
    if not path.exists():
        return None
    loaded = ckpt.load(path)
    plain = load_file(str(path))
    assert plain.keys() == {*loaded.parameters, *(f"optimizer.{k}" for k in loaded.optimizer)}
    assert all(torch.all(torch.isfinite(v)) for v in plain.values())
    load_model(path, "cpu")  # θ matches its config
    return loaded


# --------------------------------------------------------------------------- uninterrupted reference runs


@pytest.fixture(scope="module")
def reference(tmp_path_factory, image_folder):
    """``reference(n)``: the folder of an uninterrupted FAST run of ``n`` steps on ``image_folder`` (cached)."""
    root = tmp_path_factory.mktemp("reference")
    done = {}

    def run(n: int) -> Path:
        if n not in done:
            ok(invoke("train", "--steps", n, *FAST, "--data", image_folder, "--out", root / f"n{n}"))
            done[n] = root / f"n{n}"
        return done[n]

    return run


def resume_in_process(out: Path, steps: int):
    """Resume ``out``'s run to ``steps`` in this process, on the CPU (as the reference runs)."""
    return ok(invoke("train", "--resume", out / "theta.safetensors", "--steps", steps, "--device", "cpu"))


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
    restored = np.load(tmp_path / "out.npy")
    assert restored.shape == (40, 48, 3) and np.isfinite(restored).all()


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
        capture_output=True, text=True, env=os.environ | WIDE, timeout=WAIT,
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


@pytest.mark.parametrize("case", ["train --out is a file", "train --out under a file", "restore -o under a file",
                                  "restore -o is a folder"])
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
    result = invoke("train", "--resume", run_copy / "theta.safetensors", "--preset", "denoise-wavelet-bc",
                    "--steps", 5)
    one_line_error(result, "--preset", "denoise-wavelet-b")
    assert files_of(run_copy) == before


def _resave_with_optimizer(path: Path, change) -> None:
    loaded = ckpt.load(path)
    ckpt.save(path, loaded.config, loaded.parameters, loaded.step, loaded.train_psnr, change(dict(loaded.optimizer)),
              loaded.data)


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


# --------------------------------------------------------------------------- divergence

SAFE_STEP = ["--set", "model.step_rule=safe"]  # τ = 1.95/L stays defined however large θ gets


def test_divergence_stops_with_a_message_and_keeps_the_last_finite_checkpoint(image_folder, tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--steps", 5, *FAST, *SAFE_STEP, *EVERY_STEP, "--lr", "1e5", "--data", image_folder,
                    "--out", out)
    assert result.exit_code == 1, (result.output, repr(result.exception))
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "diverged" in lines[0], result.stderr
    assert "--lr" in lines[0]  # says what to do
    loaded = assert_readable_checkpoint(out)
    assert loaded is not None and 1 <= loaded.step < 5
    assert f"(step {loaded.step})" in lines[0] and str(out / "theta.safetensors") in lines[0]
    assert [int(r["step"]) for r in log_rows(out)] == list(range(1, loaded.step + 1))  # no row for the bad step


def test_divergence_before_the_first_checkpoint_says_so(image_folder, tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--steps", 5, *FAST, *SAFE_STEP, "--lr", "1e5", "--data", image_folder, "--out", out)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert "diverged" in result.stderr and "no checkpoint" in result.stderr
    assert not (out / "theta.safetensors").exists()


def test_divergence_with_the_optimal_step_rule_is_reported(image_folder, tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--steps", 5, *FAST, *EVERY_STEP, "--lr", "100", "--data", image_folder, "--out", out)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), repr(result.exception)
    assert "diverged" in result.stderr


def test_clip_grad_norm_bounds_what_adam_sees(image_folder, tmp_path):
    """After one step Adam's first moment is (1 − β₁)·g: with clipping, ‖g‖ ≤ the clip."""
    clip = 1e-6

    def first_moment_norm(out, *extra):
        ok(invoke("train", "--steps", 1, *FAST, "--data", image_folder, "--out", out, *extra))
        moments = [v for k, v in ckpt.load(out / "theta.safetensors").optimizer.items() if k.endswith(".exp_avg")]
        assert moments
        return float(torch.cat([m.flatten() for m in moments]).norm())

    assert first_moment_norm(tmp_path / "free") > 0.1 * clip * 10
    assert first_moment_norm(tmp_path / "clipped", "--clip-grad-norm", clip) <= 0.1 * clip * (1 + 1e-4)


# --------------------------------------------------------------------------- interruption in process


class _SecondStepInterrupted(torch.optim.Adam):
    """Adam whose second step is followed by a KeyboardInterrupt: a second Ctrl-C landing just after the update."""

    def step(self, closure=None):
        loss = super().step(closure)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return loss


def test_interrupt_just_after_the_update_saves_the_completed_step(image_folder, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(torch.optim, "Adam", _SecondStepInterrupted)
        result = invoke("train", "--steps", 3, *FAST, "--data", image_folder, "--out", out)
    assert result.exit_code == 130, (result.output, repr(result.exception))
    assert ckpt.load(out / "theta.safetensors").step == 2  # the update was applied: its θ is labelled step 2
    resume_in_process(out, 3)
    assert_same_tensors(out / "theta.safetensors", reference(3) / "theta.safetensors")


# --------------------------------------------------------------------------- signals, in real processes


def _start(out: Path, data: Path, *extra: str, steps: int = 400, resume: bool = False) -> subprocess.Popen:
    """``retune train`` in a child process (``resume``: of ``out``'s checkpoint); stdout/stderr go to files."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if resume:
        argv = ["--resume", str(out / "theta.safetensors"), "--device", "cpu", "--steps", str(steps), *extra]
    else:
        argv = [*FAST, "--data", str(data), "--out", str(out), "--steps", str(steps), *extra]
    with open(f"{out}.stdout", "w") as stdout, open(f"{out}.stderr", "w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "retune_cli", "train", *argv], stdout=stdout, stderr=stderr,
                                env=os.environ | WIDE)


def _stderr(out: Path) -> str:
    return Path(f"{out}.stderr").read_text()


def _wait(condition, process: subprocess.Popen, out: Path, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert process.poll() is None, f"the run ended (rc {process.returncode}) before {what}: {_stderr(out)[-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _finish(process: subprocess.Popen) -> int:
    try:
        return process.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


@pytest.fixture(scope="module")
def signalled_runs(tmp_path_factory, image_folder):
    """Three runs started together; once each has logged 3 steps: SIGTERM, SIGINT, and SIGKILL (a little later,
    checkpointing every step). Yields name → (folder, return code)."""
    root = tmp_path_factory.mktemp("signalled")
    plan = {"term": (signal.SIGTERM, []), "int": (signal.SIGINT, []), "kill": (signal.SIGKILL, EVERY_STEP)}
    processes = {name: _start(root / name, image_folder, *extra) for name, (_, extra) in plan.items()}
    try:
        pending = dict(processes)
        deadline = time.monotonic() + WAIT
        while pending:
            for name, process in list(pending.items()):
                assert process.poll() is None, f"{name} ended early: {_stderr(root / name)[-2000:]}"
                if complete_rows(root / name) >= 3:
                    if name == "kill":
                        time.sleep(random.uniform(0, 0.3))
                    process.send_signal(plan[name][0])
                    del pending[name]
            assert time.monotonic() < deadline, "timed out waiting for the runs to log 3 steps"
            time.sleep(0.01)
        yield {name: (root / name, _finish(process)) for name, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def _assert_stopped_cleanly(out: Path, code: int) -> ckpt.Checkpoint:
    stderr = _stderr(out)
    assert code == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "interrupted" in stderr
    loaded = assert_readable_checkpoint(out)
    assert loaded is not None
    assert loaded.step == complete_rows(out) >= 3  # saved at the step it stopped after
    assert [int(r["step"]) for r in log_rows(out)] == list(range(1, loaded.step + 1))
    return loaded


def test_sigterm_saves_a_checkpoint_and_exits_130(signalled_runs):
    out, code = signalled_runs["term"]
    loaded = _assert_stopped_cleanly(out, code)
    resume_in_process(out, loaded.step + 2)
    assert ckpt.load(out / "theta.safetensors").step == loaded.step + 2
    assert [int(r["step"]) for r in log_rows(out)] == list(range(1, loaded.step + 3))


def test_sigint_then_resume_equals_an_uninterrupted_run(signalled_runs, reference):
    out, code = signalled_runs["int"]
    loaded = _assert_stopped_cleanly(out, code)
    n = loaded.step + 2
    resume_in_process(out, n)
    assert_same_tensors(out / "theta.safetensors", reference(n) / "theta.safetensors")
    assert_same_log(out, reference(n))


def test_kill_9_mid_training_keeps_a_readable_checkpoint_and_resume_is_exact(signalled_runs, reference):
    out, code = signalled_runs["kill"]
    assert code == -signal.SIGKILL
    loaded = assert_readable_checkpoint(out)
    assert loaded is not None and 1 <= loaded.step <= complete_rows(out)
    n = loaded.step + 2
    resume_in_process(out, n)
    assert_same_tensors(out / "theta.safetensors", reference(n) / "theta.safetensors")
    assert_same_log(out, reference(n))  # rows logged after the checkpoint were dropped and redone


def test_kill_9_during_checkpoint_writes_never_leaves_a_torn_file(tmp_path):
    """Children save checkpoints in a loop and are killed at random moments: the file under the checkpoint's name
    is always one complete checkpoint (its tensors all carry the value of its step), never a mix or a torn file."""
    config = resolve("denoise-wavelet-b", {"train.crop": 32})
    shapes = {k: v.shape for k, v in ckpt.learned_parameters(build_scheme(config)).items()}
    path = tmp_path / "theta.safetensors"

    first = next(iter(shapes))

    def save(i: int) -> None:
        params = {k: torch.full(s, float(i)) for k, s in shapes.items()}
        optimizer = {f"{first}.exp_avg": torch.full(shapes[first], float(i)), f"{first}.step": torch.tensor(float(i))}
        ckpt.save(path, config, params, i, float(i), optimizer)

    save(0)
    rng = random.Random(0)
    leftovers, steps = 0, set()
    for round_ in range(30):
        pid = os.fork()
        if pid == 0:  # the child: save until killed
            try:
                i = (round_ + 1) * 100_000
                while True:
                    save(i)
                    i += 1
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.002, 0.05))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        loaded = ckpt.load(path)
        values = {float(x) for v in load_file(str(path)).values() for x in (v.min(), v.max())}
        assert values == {float(loaded.step)}, (loaded.step, values)
        steps.add(loaded.step)
        names = [p.name for p in tmp_path.iterdir() if p.name != "theta.safetensors"]
        assert all(LEFTOVER.match(n) for n in names), names
        leftovers += len(names)
        for name in names:
            (tmp_path / name).unlink()
    assert len(steps) > 10  # the children did write
    assert leftovers > 0  # and some were killed in the middle of a write


def test_kill_9_in_the_first_step_after_resume_keeps_the_log(image_folder, tmp_path):
    out = tmp_path / "run"
    ok(invoke("train", "--steps", 2, *FAST, "--data", image_folder, "--out", out))
    loaded = ckpt.load(out / "theta.safetensors")
    slow = dataclasses.replace(loaded.config, train=dataclasses.replace(loaded.config.train, K=200))  # a long step
    ckpt.save(out / "theta.safetensors", slow, loaded.parameters, loaded.step, loaded.train_psnr, loaded.optimizer,
              loaded.data)
    before = os.stat(out / "log.csv")
    process = _start(out, image_folder, steps=3, resume=True)
    try:
        def touched():
            now = os.stat(out / "log.csv")
            return (now.st_ino, now.st_mtime_ns, now.st_size) != (before.st_ino, before.st_mtime_ns, before.st_size)

        _wait(touched, process, out, "the resumed run to rewrite log.csv")
        process.send_signal(signal.SIGKILL)
        _finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert [r["step"] for r in log_rows(out)] == ["1", "2"]


@pytest.mark.slow
def test_kill_9_at_several_moments_then_resume(image_folder, tmp_path):
    """kill -9 during start-up, as training starts, and later into it; each time the checkpoint (if any) is
    readable and the next run resumes from it; the last one finishes."""
    out = tmp_path / "run"
    moments = [("start-up", 0.5, False), ("first step", 0.0, True), ("1 s in", 1.0, True), ("2 s in", 2.0, True),
               ("3 s in", 3.0, True)]
    for what, delay, after_training_starts in moments:
        resuming = (out / "theta.safetensors").exists()
        log = out / "log.csv"
        before = os.stat(log) if log.exists() else None
        process = _start(out, image_folder, *([] if resuming else EVERY_STEP), resume=resuming)
        try:
            if after_training_starts:
                def started(before=before, log=log):
                    if not log.exists():
                        return False
                    now = os.stat(log)
                    return before is None or (now.st_ino, now.st_mtime_ns) != (before.st_ino, before.st_mtime_ns)

                _wait(started, process, out, f"training to start ({what})")
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            assert _finish(process) == -signal.SIGKILL, what
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert_readable_checkpoint(out)
    loaded = assert_readable_checkpoint(out)
    assert loaded is not None
    resume_in_process(out, loaded.step + 1)
    assert ckpt.load(out / "theta.safetensors").step == loaded.step + 1
