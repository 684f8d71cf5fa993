"""The run folder of ``retune train``: folder policy, the CSV log, plots, and the one atomic-write helper.

Every file a run writes (checkpoint, log restart, config, figures) goes through :func:`atomic_write`:
a temporary file in the same folder, flushed to disk, then renamed over the target, so a crash at
any moment leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import InputError

CHECKPOINT = "theta.safetensors"
LOG = "log.csv"
LOG_FIELDS = ("step", "loss", "psnr", "tau", "seconds", "restarts", "residual", "grad_cosine", "grad_rel_err")


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary name beside ``path``, fsync it, rename it over ``path``;
    the file's mode follows the umask like an ordinary file's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_log(path: Path, until: int = 10**12) -> list[dict]:
    """Rows of an existing log up to step ``until`` (a resumed run continues from there)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= until]


class RunDir:
    """A run folder: ``theta.safetensors``, ``config.yaml``, ``log.csv``, ``psnr.png``."""

    def __init__(self, path: Path):
        self.path = path
        self._log = None
        self._writer = None

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def holds_run(self) -> bool:
        return self.checkpoint.exists() or (self.path / LOG).exists()

    def prepare(self, force: bool, resuming_from: Path | None) -> None:
        """Refuse to overwrite an existing run unless ``force`` or resuming it in place; ``force``
        removes the old run's checkpoint, so that no stale one is left beside the new run's files."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} is a file; give a folder for the run")
        in_place = resuming_from is not None and resuming_from.resolve().parent == out.resolve()
        if self.holds_run() and not (force or in_place):
            raise InputError(f"{out} already holds a run; pass --force to overwrite it or --resume {self.checkpoint}")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create the run folder {out}: {e.strerror}") from None
        if force and not in_place and self.checkpoint.exists():
            self.checkpoint.unlink()

    def write_config(self, text: str) -> None:
        atomic_write(self.path / "config.yaml", lambda tmp: Path(tmp).write_text(text))

    def read_log(self, until: int) -> list[dict]:
        return read_log(self.path / LOG, until)

    def open_log(self, rows: list[dict]) -> None:
        """Rewrite ``log.csv`` with the rows kept so far (atomically), then append to it."""

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.path / LOG, write)
        self._log = open(self.path / LOG, "a", newline="")
        self._writer = csv.DictWriter(self._log, LOG_FIELDS, extrasaction="ignore")

    def append(self, row: dict) -> None:
        self._writer.writerow(row)
        self._log.flush()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def plot(self, label: str, rows: list[dict]) -> None:
        from .plots import plot_curves

        steps = [int(r["step"]) for r in rows]
        plot_curves(self.path / "psnr.png", {label: (steps, [float(r["psnr"]) for r in rows])}, title=label)


def plot_runs(path: Path, runs: dict[str, Path]) -> None:
    """One figure of several run folders (label → folder): train PSNR against steps and against
    wall-clock seconds, side by side."""
    from .plots import plot_curve_panels

    curves = {label: read_log(folder / LOG) for label, folder in runs.items()}
    plot_curve_panels(path, {
        label: {"step": [int(r["step"]) for r in rows], "seconds": [float(r["seconds"]) for r in rows],
                "psnr": [float(r["psnr"]) for r in rows]}
        for label, rows in curves.items()
    })
