"""Reliability, hangs: inputs that would take forever (YAML alias bombs, deep nesting, unbounded K, T or batch
size, a FIFO where a file is expected) are refused at once, with a short line saying why."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from reliability import FAST, invoke, one_line_error, refused_training, save_checkpoint

from retune_cli.commands.common import MAX_MESSAGE

QUICK = 20  # seconds: every refusal here takes well under one

BOMB = "a: &a ['x', 'x', 'x', 'x', 'x', 'x', 'x', 'x', 'x']\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(9)
)  # the billion laughs: 9¹⁰ strings once expanded
DEEP = "train: " + "[" * 100_000 + "]" * 100_000 + "\n"

PRESET_FILES = {
    "alias bomb": (BOMB, "aliases"),
    "one alias": ("train: &t {K: 2}\nmodel: *t\n", "aliases"),
    "deep nesting": (DEEP, "nested deeper"),
    "larger than 1 MB": ("description: '" + "x" * 2**20 + "'\n", "larger than 1 MB"),
}


def _quickly(refusal) -> str:
    """``refusal()``'s error line, checked to come quickly and to be short."""
    start = time.monotonic()
    line = refusal()
    assert time.monotonic() - start < QUICK
    assert len(line) <= MAX_MESSAGE + len("error: ")
    return line


@pytest.mark.parametrize("case", PRESET_FILES)
def test_yaml_that_would_not_end_in_a_preset_file(case, image_folder, tmp_path):
    text, fragment = PRESET_FILES[case]
    preset = tmp_path / "p.yaml"
    preset.write_text(text)
    _quickly(lambda: refused_training(image_folder, tmp_path / "run", "--preset", preset,
                                      fragments=(str(preset), fragment)))


NESTED = "[" * 50_000 + "]" * 50_000
COMMAND_LINE_YAML = {
    "--set with aliases": (["--set", "physics.sigma=[&a 0.1, *a, *a]"], "aliases"),
    "--set nested 50 000 deep": (["--set", f"train.K={NESTED}"], "nested deeper"),
    "--grid with an alias": (["--grid", "K=&a 1,*a"], "--grid"),
    "--grid nested 50 000 deep": (["--grid", f"K=1,{NESTED}"], "--grid"),
}


@pytest.mark.parametrize("case", COMMAND_LINE_YAML)
def test_yaml_that_would_not_end_on_the_command_line(case, image_folder, tmp_path):
    args, fragment = COMMAND_LINE_YAML[case]
    _quickly(lambda: refused_training(image_folder, tmp_path / "run", *args, fragments=(args[0], fragment)))


# --------------------------------------------------------------------------- what fits in memory and time

TRAIN_BOUNDS = {
    "--K 10⁷": (["--K", 10**7], "time"),
    "--T 10⁹": (["--T", 10**9], "time"),
    "--batch-size 10⁹": (["--batch-size", 10**9], "memory"),
    "--crop 10⁶": (["--crop", 10**6], "memory"),
    "unrolled K·T": (["--gradient", "unrolled", "--K", 1000, "--T", 1000, "--crop", 256], "memory"),
    "train.max_restarts 10⁹": (["--set", "train.max_restarts=1000000000"], "time"),
    "train.adjoint_max_iter 10⁹": (["--set", "train.adjoint_max_iter=1000000000"], "time"),
    "max_restarts from a preset file": (["--preset", "PRESET"], "time"),
}


@pytest.mark.parametrize("case", TRAIN_BOUNDS)
def test_unbounded_work_in_training_is_refused(case, image_folder, tmp_path):
    args, reason = TRAIN_BOUNDS[case]
    (tmp_path / "big.yaml").write_text("train:\n  max_restarts: 1000000000\n")
    args = [tmp_path / "big.yaml" if a == "PRESET" else a for a in args]
    line = _quickly(lambda: refused_training(image_folder, tmp_path / "run", *args))
    assert "train." in line and f": {reason})" in line


@pytest.mark.parametrize("command", ["restore", "eval", "compare-grads"])
def test_unbounded_restarts_are_refused(command, trained_run, image_folder, tmp_path):
    args = {
        "restore": ["restore", trained_run / "theta.safetensors", image_folder / "im0.png", "--T", 10**9,
                    "-o", tmp_path / "o.png"],
        "eval": ["eval", trained_run / "theta.safetensors", "--data", image_folder, "--T", 10**9],
        "compare-grads": ["compare-grads", "--crop", 16, "--K", "1,1000", "--T", "1,100000"],
    }[command]
    line = _quickly(lambda: one_line_error(invoke(*args, "--device", "cpu"), "--T"))
    assert "time)" in line
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- FIFOs


@contextmanager
def rescued(fifo: Path, after: float = QUICK):
    """Yields a list that stays empty unless something blocked reading ``fifo`` for ``after`` seconds: it is
    then unblocked (a writer opens and closes the FIFO) so that the test fails instead of hanging."""
    done, rescues = threading.Event(), []

    def watch():
        if done.wait(after):
            return
        while not done.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                rescues.append(fifo)
            except OSError:  # no reader yet
                pass
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield rescues
    finally:
        done.set()
        watcher.join()


@pytest.fixture(scope="module")
def operator_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("operators")
    return {
        "kernel": save_checkpoint(root / "deblur" / "theta.safetensors", "deblur-wavelet", **{"physics.blur_width": 5}),
        "mask": save_checkpoint(root / "inpaint" / "theta.safetensors", "inpaint-wavelet"),
    }


FIFO_ROLES = {
    "image": lambda c, f, i, t: ["restore", c["trained"], f, "-o", t / "o.png"],
    "--mask": lambda c, f, i, t: ["restore", c["mask"], i, "--mask", f, "-o", t / "o.png"],
    "--kernel": lambda c, f, i, t: ["restore", c["kernel"], i, "--kernel", f, "-o", t / "o.png"],
    "checkpoint": lambda c, f, i, t: ["restore", f, i, "-o", t / "o.png"],
    "--preset file": lambda c, f, i, t: ["train", "--preset", f, *FAST, "--out", t / "run"],
    "--init": lambda c, f, i, t: ["train", "--init", f, *FAST, "--out", t / "run"],
    "--resume": lambda c, f, i, t: ["train", "--resume", f, "--steps", 9],
    "denoiser weights": lambda c, f, i, t: ["train", "--preset", "inpaint-pnp", *FAST, "--out", t / "run",
                                            "--set", f"model.denoiser={f}"],
    "compare-grads --image": lambda c, f, i, t: ["compare-grads", "--image", f, "--crop", 16, "--K", 1, "--T", 1],
}


@pytest.mark.parametrize("role", FIFO_ROLES)
def test_a_fifo_where_a_file_is_expected(role, operator_checkpoints, trained_run, image_folder, tmp_path):
    fifo = tmp_path / ("fifo.yaml" if role == "--preset file" else "fifo.npy" if role == "--kernel" else "fifo.png")
    os.mkfifo(fifo)
    given = operator_checkpoints | {"trained": trained_run / "theta.safetensors"}
    args = FIFO_ROLES[role](given, fifo, image_folder / "im0.png", tmp_path)
    with rescued(fifo) as rescues:
        _quickly(lambda: one_line_error(invoke(*args), str(fifo), "regular file"))
    assert not rescues, "the command blocked reading the FIFO"
    assert sorted(p.name for p in tmp_path.iterdir()) == [fifo.name]
