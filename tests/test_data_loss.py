"""Reliability, data loss: no command overwrites one of its inputs or a user's file, `--force` removes a run
only once everything is checked, one run at a time holds a run folder, and odd folder names are safe."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from reliability import (
    EVERY_STEP,
    FAST,
    WAIT,
    WIDE,
    assert_survived,
    complete_rows,
    invoke,
    log_rows,
    ok,
    one_line_error,
    snapshot,
)

from retune_cli import checkpoint as ckpt
from retune_cli.files import temp_name
from retune_cli.rundir import LOCK, folder_name


@pytest.fixture
def s(trained_run, image_folder, tmp_path) -> SimpleNamespace:
    """Copies of a checkpoint, an image, a data folder, a mask and a kernel, and a copy of a finished run."""
    ckpt_path = Path(shutil.copy(trained_run / "theta.safetensors", tmp_path / "theta.safetensors"))
    image = Path(shutil.copy(image_folder / "im0.png", tmp_path / "photo.png"))
    mask = Path(shutil.copy(image_folder / "im1.png", tmp_path / "mask.png"))
    np.save(tmp_path / "kernel.npy", np.full((5, 5), 1 / 25))
    data = Path(shutil.copytree(image_folder, tmp_path / "data"))
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    return SimpleNamespace(ckpt=ckpt_path, image=image, mask=mask, kernel=tmp_path / "kernel.npy", data=data, run=run,
                           tmp=tmp_path)


def _linked(s, kind: str) -> Path:
    link = s.tmp / f"{kind}.png"
    (os.link if kind == "hardlink" else os.symlink)(s.image, link)
    return link


TRAIN = ["train", "--steps", 1, *FAST]
COMPARE = ["compare-grads", "--crop", 16, "--K", 1, "--T", 1, "--device", "cpu"]

# case → (arguments, files that must survive, fragments of the message); all are refused before any work.
REFUSED = {
    "eval --json CKPT": lambda s: (["eval", s.ckpt, "--data", s.data, "--json", s.ckpt], [s.ckpt], ["--json"]),
    "eval --csv CKPT": lambda s: (["eval", s.ckpt, "--data", s.data, "--csv", s.ckpt], [s.ckpt], ["--csv"]),
    "eval --json inside --data": lambda s: (
        ["eval", s.ckpt, "--data", s.data, "--json", s.data / "im0.png"], [s.data], ["--json", "inside --data"]),
    "eval --csv = --json": lambda s: (
        ["eval", s.ckpt, "--data", s.data, "--json", s.tmp / "r.json", "--csv", s.tmp / "r.json"], [], ["--csv"]),
    "compare-grads --json CKPT": lambda s: (
        [*COMPARE, "--checkpoint", s.ckpt, "--json", s.ckpt], [s.ckpt], ["--json", str(s.ckpt)]),
    "compare-grads --plot CKPT": lambda s: (
        [*COMPARE, "--checkpoint", s.ckpt, "--plot", s.ckpt], [s.ckpt], ["--plot", str(s.ckpt)]),
    "compare-grads --plot IMAGE": lambda s: (
        [*COMPARE, "--image", s.image, "--plot", s.image], [s.image], ["--plot", "--image"]),
    "restore X -o X": lambda s: (["restore", s.ckpt, s.image, "-o", s.image], [s.image], ["--output", "the image"]),
    "restore -o X/../X": lambda s: (
        ["restore", s.ckpt, s.image, "-o", s.tmp / "data" / ".." / s.image.name], [s.image], ["--output"]),
    "restore -o hard link to X": lambda s: (
        ["restore", s.ckpt, s.image, "-o", _linked(s, "hardlink")], [s.image], ["--output"]),
    "restore -o symlink to X": lambda s: (
        ["restore", s.ckpt, s.image, "-o", _linked(s, "symlink")], [s.image], ["--output"]),
    "restore --save-observation X": lambda s: (
        ["restore", s.ckpt, s.image, "--simulate", "--save-observation", s.image], [s.image], ["--save-observation"]),
    "restore -o A --save-observation A": lambda s: (
        ["restore", s.ckpt, s.image, "-o", s.tmp / "a.png", "--save-observation", s.tmp / "a.png"], [],
        ["--save-observation", "--output"]),
    "restore -o MASK": lambda s: (
        ["restore", s.ckpt, s.image, "--mask", s.mask, "-o", s.mask], [s.mask], ["--output", "--mask"]),
    "restore -o KERNEL": lambda s: (
        ["restore", s.ckpt, s.image, "--kernel", s.kernel, "-o", s.kernel], [s.kernel], ["--output", "--kernel"]),
    "train --out = --data": lambda s: ([*TRAIN, "--data", s.data, "--out", s.data], [s.data], ["--data"]),
    "train --out inside --data": lambda s: (
        [*TRAIN, "--data", s.data, "--out", s.data / "run"], [s.data], ["inside --data"]),
    "train --force, bad --init": lambda s: (
        [*TRAIN, "--data", s.data, "--out", s.run, "--force", "--init", s.image], [s.run], [str(s.image)]),
    "train --force, bad image in --data": lambda s: (
        [*TRAIN, "--data", _with_bad_image(s), "--out", s.run, "--force"], [s.run], ["bad.png"]),
    "train --resume --force, corrupt log": lambda s: (
        ["train", "--resume", s.run / "theta.safetensors", "--steps", 9, "--force", "--out", _corrupt_log(s)],
        [s.run, s.tmp / "other"], ["log.csv"]),
}


def _with_bad_image(s) -> Path:
    (s.data / "bad.png").write_text("not an image")
    return s.data


def _corrupt_log(s) -> Path:
    other = Path(shutil.copytree(s.run, s.tmp / "other"))
    (other / "log.csv").write_bytes(b"step,loss\n\x00\x00\x01")
    return other


@pytest.mark.parametrize("case", REFUSED)
def test_refused_before_any_work_and_inputs_survive(case, s):
    args, protected, fragments = REFUSED[case](s)
    before = snapshot(*protected)
    outputs_before = sorted(s.tmp.rglob("*"))
    one_line_error(invoke(*args), *fragments)
    assert_survived(before)
    assert sorted(s.tmp.rglob("*")) == outputs_before  # nothing written, nothing removed


@pytest.mark.parametrize("name", ["config.yaml", "psnr.png", "log.csv"])
def test_run_files_never_overwrite_a_users_files(name, s):
    """A folder holding a file of a run's name (the user's, or a killed run's log) is refused without --force; a
    log without a checkpoint does not suggest a --resume file that does not exist."""
    out = s.tmp / "mine"
    out.mkdir()
    (out / name).write_bytes(b"the user's own " + name.encode())
    before = snapshot(out)
    line = one_line_error(invoke(*TRAIN, "--data", s.data, "--out", out), str(out), "--force")
    assert "--resume" not in line
    assert_survived(before)
    assert sorted(p.name for p in out.iterdir()) == [name]


def test_grid_refuses_a_folder_holding_a_users_psnr_png(s):
    out = s.tmp / "grid"
    out.mkdir()
    (out / "psnr.png").write_bytes(b"my figure")
    before = snapshot(out)
    one_line_error(invoke(*TRAIN, "--data", s.data, "--out", out, "--grid", "K=1,2"), "psnr.png", "--force")
    assert_survived(before)
    assert [p.name for p in out.iterdir()] == ["psnr.png"]


def _hold_lock(folder: Path, pid: int):
    """Hold ``folder``'s run lock as another process would (flock on its own open file)."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{pid}\n".encode())
    return fd


def test_a_locked_run_folder_is_refused_at_once(s):
    fd = _hold_lock(s.run, 4242)
    try:
        before = snapshot(s.run)
        start = time.monotonic()
        one_line_error(invoke(*TRAIN, "--data", s.data, "--out", s.run, "--force"), str(s.run), "in use", "4242")
        assert time.monotonic() - start < 30
        assert_survived(before)
    finally:
        os.close(fd)


def test_a_stale_lock_and_temporary_files_of_a_killed_run_are_taken_over(s):
    """kill -9 leaves the lock file (its flock died with the process) and atomic_write's temporary files: the next
    run takes the lock, removes the temporary files of its own names (only those) and leaves no lock behind."""
    (s.run / LOCK).write_text("99999\n")
    stale = [temp_name(s.run / name) for name in ("theta.safetensors", "log.csv", "psnr.png")]
    for path in stale:
        path.write_bytes(b"torn")
    (s.run / ".notes.tmp").write_text("the user's")
    ok(invoke("train", "--resume", s.run / "theta.safetensors", "--steps", 4, "--device", "cpu"))
    assert ckpt.load(s.run / "theta.safetensors").step == 4
    assert not any(p.exists() for p in [*stale, s.run / LOCK])
    assert (s.run / ".notes.tmp").read_text() == "the user's"


def test_two_concurrent_forced_runs_never_mix_their_files(s):
    """While a run trains, a second `train --force` on its folder stops at once; the first run's checkpoint,
    log and config stay in agreement."""
    out = s.tmp / "busy"
    first = subprocess.Popen(
        [sys.executable, "-m", "retune_cli", "train", *map(str, FAST), "--steps", "100000", "--data", str(s.data),
         "--out", str(out), *EVERY_STEP],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ | WIDE,
    )
    try:
        deadline = time.monotonic() + WAIT
        while complete_rows(out) < 2:
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        one_line_error(invoke(*TRAIN, "--data", s.data, "--out", out, "--force"), "in use",
                       str(first.pid))
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=WAIT) == 130
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    loaded = ckpt.load(out / "theta.safetensors")
    assert loaded.step == int(log_rows(out)[-1]["step"])
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["steps"] == 100000 == loaded.config.train.steps
    assert not (out / LOCK).exists()



def test_non_utf8_folder_names_train_save_and_resume(image_folder, tmp_path):
    """A data folder, an image and a run folder whose names are not UTF-8: the checkpoint stores the data folder
    as bytes-safe text, resuming finds it again, restore writes there, eval prints and writes the image's name."""
    data = tmp_path / os.fsdecode(b"d\xe9j\xe0-vu")
    shutil.copytree(image_folder, data)
    shutil.copy(data / "im0.png", data / os.fsdecode(b"caf\xe9.png"))
    out = tmp_path / os.fsdecode(b"run-\xff")
    ok(invoke("train", "--steps", 2, *FAST, "--data", data, "--out", out))
    loaded = ckpt.load(out / "theta.safetensors")
    assert loaded.data == data and loaded.step == 2
    ok(invoke("train", "--resume", out / "theta.safetensors", "--steps", 3, "--device", "cpu"))
    assert ckpt.load(out / "theta.safetensors").step == 3
    ok(invoke("restore", out / "theta.safetensors", data / "im0.png", "-o", out / os.fsdecode(b"\xfe.png")))
    assert (out / os.fsdecode(b"\xfe.png")).is_file()
    printed = ok(invoke("eval", out / "theta.safetensors", "--data", data, "--csv", out / "r.csv", "--device", "cpu"))
    assert "caf\ufffd.png" in printed.output and b"caf\xe9.png," in (out / "r.csv").read_bytes()


@pytest.mark.parametrize("preset", ["../../escaped", "/tmp/escaped", "a/../../b", "..", "."])
def test_a_preset_name_never_places_the_run_outside_runs(preset):
    folder = Path("runs") / folder_name(preset)
    assert folder.parent == Path("runs") and folder.name not in ("", ".", "..") and "/" not in folder.name


def test_a_preset_file_naming_itself_upwards_trains_inside_runs(image_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "up.yaml").write_text("preset: ../../escaped\n")
    ok(invoke("train", "--preset", "up.yaml", "--steps", 1, *FAST, "--data", image_folder))
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "theta.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "up.yaml"]


def test_a_grid_value_with_slashes_stays_inside_out(image_folder, tmp_path):
    out = tmp_path / "grid"
    ok(invoke(*TRAIN, "--data", image_folder, "--out", out, "--grid", "model.denoiser=../a,/b"))
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["-a", "-b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid"]
