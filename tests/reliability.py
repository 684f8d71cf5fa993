"""Helpers shared by the reliability tests (test_bad_inputs.py, test_interruptions.py, and one module per class of
failure: test_data_loss.py, test_tracebacks.py, test_silent_garbage.py, test_hangs.py, test_messages.py)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from retune_cli import checkpoint as ckpt
from retune_cli.cli import app
from retune_cli.config import resolve
from retune_cli.models import build_scheme
from retune_cli.restore import load_model
from retune_cli.rundir import LOCK, STALE

WIDE = {"COLUMNS": "400"}  # Rich must not wrap the one-line messages
FAST = ["--crop", "32", "--batch-size", "1", "--K", "1", "--T", "1", "--device", "cpu"]
EVERY_STEP = ["--set", "train.checkpoint_every=1"]
WAIT = 180  # seconds: a generous bound for a loaded machine; the runs take a few seconds
# What a kill -9 may leave: atomic_write's temporary files of the run's files (the next run removes them), and the run
# folder's lock file (its flock dies with the process: the next run takes it over).
LEFTOVER = re.compile(rf"{STALE.pattern}|^{re.escape(LOCK)}$")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


def ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def refused_training(data: Path, out: Path, *args, fragments: tuple[str, ...] = ()) -> str:
    """A one-step training run on ``data`` refused (see :func:`one_line_error`) before ``out`` is made: its line."""
    line = one_line_error(invoke("train", "--steps", 1, *FAST, "--data", data, "--out", out, *args), *fragments)
    assert not out.exists()
    return line


def save_checkpoint(path: Path, preset: str = "denoise-wavelet-b", theta: float | None = None, **overrides) -> Path:
    """A checkpoint of ``preset`` at its initial θ (tiny crop), or with every log-domain θ set to ``theta``."""
    config = resolve(preset, {"train.crop": 32, "train.K": 2, "train.T": 2, **overrides})
    parameters = ckpt.learned_parameters(build_scheme(config))
    if theta is not None:
        parameters = {k: torch.full_like(v, theta) for k, v in parameters.items()}
    ckpt.save(path, config, parameters, 1, 0.0)
    return path


def snapshot(*paths: Path) -> dict[Path, bytes]:
    """The bytes of every file given, and of every file inside each folder given."""
    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p])]
    return {f: f.read_bytes() for f in files if f.is_file()}


def assert_survived(before: dict[Path, bytes]) -> None:
    """Every file of a :func:`snapshot` is still there, byte for byte."""
    assert {f: f.read_bytes() if f.is_file() else None for f in before} == before


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


def resume_in_process(out: Path, steps: int):
    """Resume ``out``'s run to ``steps`` in this process, on the CPU (as the reference runs)."""
    return ok(invoke("train", "--resume", out / "theta.safetensors", "--steps", steps, "--device", "cpu"))
