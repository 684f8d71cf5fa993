"""Hostile inputs: 300+ generated cases, each a CLI command (in-process, ``typer.testing.CliRunner``) or a
Python API call, checked against the one contract: success with sane output, or exit 2 with one ``error:``
line and no traceback; never a file written outside the case's outputs (``out*``) or through a link, never
a user's file changed or deleted. ``python bench/hostile_inputs.py [--quick]``: JSON and a table by class.
``tests/test_hostile_inputs.py`` runs :data:`FAST` (the first case of each kind).
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from retune_cli import checkpoint as ckpt
from retune_cli.cli import app
from retune_cli.config import resolve
from retune_cli.errors import InputError
from retune_cli.images import read_image, write_image
from retune_cli.models import build_scheme
from retune_cli.rundir import RUN_FILES

FAST_ARGS = ("--crop", "32", "--batch-size", "1", "--K", "1", "--T", "1", "--device", "cpu")
TRAIN = ("train", "--steps", "1", *FAST_ARGS, "--data", "{data}", "--out", "{w}/out")
RESTORE = ("restore", "{ckpt}", "{img}", "-o", "{w}/out.png")
GRADS = ("compare-grads", "--crop", "16", "--K", "1", "--T", "1", "--device", "cpu")
ENV = {"COLUMNS": "400", "RETUNE_THREADS": "1"}
LIMIT_S = 20.0  # a case still running then has hung (or accepted a very long run: Case.long_ok)


@dataclass(frozen=True)
class Case:
    """``args``: CLI arguments with ``{w}`` (the case's folder), ``{data}``, ``{img}``, ``{ckpt}``,
    ``{inpaint}`` placeholders; or ``call(world, w)`` returning a tensor. ``setup`` writes the case's files."""

    klass: str
    kind: str
    name: str
    args: tuple[str, ...] = ()
    call: Callable[[World, Path], object] | None = None
    setup: Callable[[Path, World], None] | None = None
    constant_ok: bool = False  # a constant output is sane (a constant input)
    long_ok: bool = False  # a long run is what was asked for (--steps 10⁹): still running at LIMIT_S passes
    must_refuse: bool = False  # a bad value: success is a failure (it was taken silently)


@dataclass
class World:
    """The files every case shares: a folder of three 32×32 images, a trained and an inpainting checkpoint."""

    root: Path
    paths: dict[str, str] = field(default_factory=dict)

    def fill(self, w: Path, text: str) -> str:
        return text.format(w=w, **self.paths)

    def __getattr__(self, name: str) -> Path:
        return Path(self.__dict__["paths"][name])


def smooth(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """A ``(3, h, w)`` image in [0, 1] with structure (a ramp plus blocky noise)."""
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.random((3, h // 4 + 1, w // 4 + 1)), np.ones((4, 4)))[:, :h, :w]
    ramp = np.add.outer(np.arange(h) / h, np.arange(w) / w) / 2
    return torch.from_numpy(0.6 * blocks + 0.4 * ramp).float()


def make_world(root: Path) -> World:
    """The shared files; the trained checkpoint comes from a 2-step ``retune train``."""
    world = World(root)
    for i in range(3):
        write_image(root / "data" / f"im{i}.png", smooth(seed=i))
    world.paths.update(data=str(root / "data"), img=str(root / "data" / "im0.png"))
    result = CliRunner().invoke(app, ["train", "--steps", "2", *FAST_ARGS, "--data", world.paths["data"],
                                      "--out", str(root / "trained")], env=ENV)
    assert result.exit_code == 0, result.output
    config = resolve("inpaint-wavelet", {"train.crop": 32, "train.K": 1, "train.T": 1})
    ckpt.save(root / "inpaint" / "theta.safetensors", config, ckpt.learned_parameters(build_scheme(config)), 1, 0.0)
    world.paths.update(ckpt=str(root / "trained" / "theta.safetensors"),
                       inpaint=str(root / "inpaint" / "theta.safetensors"))
    return world


# --------------------------------------------------------------------------- files of the cases


def image(array: np.ndarray, mode: str | None = None) -> Callable[[Path], None]:
    return lambda path: Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


def npy(array: np.ndarray) -> Callable[[Path], None]:
    return lambda path: np.save(path, array)


def raw(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width × height`` RGB pixels, with one tiny data chunk."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = chunk(b"IDAT", zlib.compress(b"\0" * 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + data + chunk(b"IEND", b"")


def npy_claiming(*shape: int) -> bytes:
    """A .npy file whose header claims float32 ``shape``, without the data."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()


# --------------------------------------------------------------------------- the contract


class Hang(BaseException):
    """Raised by the alarm at :data:`LIMIT_S` (a BaseException: no ``except Exception`` swallows it)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        raise Hang

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(*folders: Path) -> dict[Path, bytes | str]:
    """Every file under ``folders``: its bytes, or a link's target (a link is never followed)."""
    files = [p for f in folders for p in f.rglob("*") if p.is_symlink() or p.is_file()]
    return {p: os.readlink(p) if p.is_symlink() else p.read_bytes() for p in files}


def is_output(w: Path, path: Path) -> bool:
    return path.is_relative_to(w) and path.relative_to(w).parts[0].startswith("out")


def file_damage(world: World, w: Path, before: dict[Path, bytes | str]) -> str | None:
    """A user's file changed or deleted, or a file written outside the case's outputs; None if neither."""
    after = snapshot(world.root, w)
    for path, content in before.items():
        if after.get(path) != content and not (is_output(w, path) and path.name in RUN_FILES):
            return f"user's file {'changed' if path in after else 'deleted'}: {path}"
    stray = [p for p in after if p not in before and not is_output(w, p)]
    return f"file written outside the outputs: {stray[0]}" if stray else None


def garbage(x: torch.Tensor, constant_ok: bool) -> str | None:
    """Why a restored image is garbage (non-finite, constant, mostly outside [0, 1]); None if sane."""
    x = x.detach().float()
    if not bool(torch.isfinite(x).all()):
        return "non-finite output"
    if not constant_ok and float(x.max() - x.min()) < 1e-3:
        return "constant output"
    return "output outside [0, 1]" if float(((x >= -0.01) & (x <= 1.01)).float().mean()) < 0.5 else None


def output_garbage(w: Path, before: dict, constant_ok: bool) -> str | None:
    """:func:`garbage` of each new image under the case's outputs (figures aside)."""
    for path in sorted(p for p in w.rglob("*") if p not in before and is_output(w, p) and p.is_file()):
        if path.suffix in (".png", ".npy", ".tif") and path.name not in RUN_FILES and "plot" not in path.name:
            try:
                why = garbage(read_image(path, observed=True), constant_ok)
            except InputError as e:
                why = f"unreadable output: {e}"
            if why:
                return f"{path.name}: {why}"
    return None


def refusal_problem(result) -> str | None:
    """None when ``result`` is a proper refusal: exit 2, no traceback, one ``error:`` line, last on stderr."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if "Traceback" in result.output or not isinstance(result.exception, SystemExit):
        return f"uncaught {type(result.exception).__name__}: {result.exception}"
    if sum(line.startswith("error: ") for line in lines) != 1 or not lines[-1].startswith("error: "):
        return "not exactly one error line"
    return None


def run_cli(case: Case, world: World, w: Path, before: dict) -> tuple[str | None, int | None, str]:
    """``(why it failed or None, exit code, output tail)`` of a CLI case."""
    result = CliRunner().invoke(app, [world.fill(w, a) for a in case.args], env=ENV)
    tail = result.output[-400:]
    if result.exit_code == 0:
        why = "a bad value was accepted" if case.must_refuse else output_garbage(w, before, case.constant_ok)
        return why, 0, tail
    if result.exit_code == 2:
        return refusal_problem(result), 2, tail
    if result.exit_code == 1 and not case.must_refuse and diverged_properly(result):
        return None, 1, tail  # a value the run may take, whose training diverged: exit 1, one line, as documented
    return f"exit code {result.exit_code}: {type(result.exception).__name__}", result.exit_code, tail


def diverged_properly(result) -> bool:
    """A training that diverged: no traceback and its last line says so (the last good checkpoint is kept)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return "Traceback" not in result.output and bool(lines) and lines[-1].startswith("training diverged")


def run_api(case: Case, world: World, w: Path) -> tuple[str | None, int | None, str]:
    """An API case: a sane tensor, or a ``ValueError``/``InputError`` with a one-line message."""
    try:
        with warnings.catch_warnings():  # a warning is no part of the contract (and would flood the table)
            warnings.simplefilter("ignore")
            x = case.call(world, w)
    except (ValueError, InputError) as e:
        one_line = len(str(e).strip().splitlines()) == 1
        return None if one_line else "message not one line", None, f"{type(e).__name__}: {e}"[:400]
    except Exception as e:  # noqa: BLE001 — any other exception breaks the contract
        return f"{type(e).__name__} raised", None, f"{type(e).__name__}: {e}"[:400]
    if not isinstance(x, torch.Tensor):
        return f"returned {type(x).__name__}", None, ""
    return garbage(x, case.constant_ok), None, f"tensor {tuple(x.shape)}"


def run_case(case: Case, world: World, scratch: Path) -> dict:
    """Set up, run (at most :data:`LIMIT_S`) and judge one case."""
    w = Path(tempfile.mkdtemp(prefix="case-", dir=scratch))
    if case.setup:
        case.setup(w, world)
    before, start = snapshot(world.root, w), time.perf_counter()
    try:
        with time_limit(LIMIT_S):
            why, code, tail = run_api(case, world, w) if case.call else run_cli(case, world, w, before)
    except Hang:
        why, code, tail = (None if case.long_ok else f"still running after {LIMIT_S:.0f} s"), None, ""
    finally:
        torch.set_num_threads(1)  # a case's --threads must not slow the next ones
    why = file_damage(world, w, before) or why
    command = " ".join(case.args) if case.args else case.name
    return {"class": case.klass, "kind": case.kind, "name": case.name, "command": command, "passed": why is None,
            "why": why, "exit_code": code, "output": tail, "seconds": round(time.perf_counter() - start, 2)}


def run_all(cases: list[Case], scratch: Path, world: World | None = None) -> list[dict]:
    world = world or make_world(scratch / "world")
    return [run_case(case, world, scratch) for case in cases]


def counts(rows: list[dict]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for row in rows:
        entry = table.setdefault(row["class"], {"cases": 0, "passed": 0, "failed": 0})
        entry["cases"] += 1
        entry["passed" if row["passed"] else "failed"] += 1
    return table


def main() -> None:
    from common import machine_info, parse_args, write_json
    from hostile_cases import CASES, FAST

    args = parse_args(argparse.ArgumentParser(description=__doc__), "hostile_inputs.json")
    torch.set_num_threads(1)
    cases = FAST if args.quick else CASES
    with tempfile.TemporaryDirectory(prefix="retune-hostile-") as scratch:
        os.chdir(scratch)  # a command writing into ./runs writes here
        start = time.perf_counter()
        rows = run_all(cases, Path(scratch))
        seconds = time.perf_counter() - start
    table = counts(rows)
    print(f"{'class':<16}{'cases':>7}{'passed':>8}{'failed':>8}")
    for klass, c in {**table, "total": {k: sum(t[k] for t in table.values()) for k in ("cases", "passed",
                                                                                        "failed")}}.items():
        print(f"{klass:<16}{c['cases']:>7}{c['passed']:>8}{c['failed']:>8}")
    for row in rows:
        if not row["passed"]:
            print(f"FAILED [{row['class']}] {row['name']}: {row['why']}\n    {row['command']}")
    write_json(args.json, {"machine": machine_info(torch.device("cpu")), "seconds": round(seconds, 1),
                           "counts": table, "cases": rows})


if __name__ == "__main__":
    main()
