"""The run folder of ``retune train``: folder policy and lock, the CSV log, plots.

Every file a run writes (checkpoint, log restart, config, figures) goes through
:func:`~.files.atomic_write`: a crash at any moment leaves either the old or the new file, never a
torn one. A run holds the folder's lock (``.retune.lock``, an ``flock`` the kernel releases when the
process dies, so a killed run leaves no stale lock) from its preparation to its end: a second run on
the same folder stops at once. No run file nor the lock may be a symbolic link (:mod:`.files`' link policy),
and the folder is kept apart from the run's inputs (:func:`check_run_folder`).
"""

from __future__ import annotations

import csv
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError
from .files import (
    NO_FOLLOW,
    atomic_write,
    check_folder,
    no_follow,
    overlaps,
    reading,
    reason,
    refuse_link,
    remove_temporaries,
    temp_pattern,
    write_text,
)

if TYPE_CHECKING:
    from .config import Config

CHECKPOINT = "theta.safetensors"
CONFIG = "config.yaml"
LOG = "log.csv"
PLOT = "psnr.png"
BEST = "best.safetensors"  # with --val: the checkpoint of the best validation PSNR
RUN_FILES = (CHECKPOINT, CONFIG, LOG, PLOT, BEST)
LOCK = ".retune.lock"
OTHER_OUT = "choose another --out"  # what to do about a run file or lock that is a link
STALE = temp_pattern(RUN_FILES)  # atomic_write's temporary files of the run files, after a kill
LOG_FIELDS = ("step", "loss", "psnr", "tau", "sigma", "seconds", "restarts", "residual", "grad_cosine", "grad_rel_err",
              "val_psnr")


def folder_name(text: str) -> str:
    """``text`` as one safe folder name: other characters than letters, digits and ``.=+-`` become
    ``-`` and leading dots go, so that no name leaves its parent folder (``..``, ``/``)."""
    return re.sub(r"[^\w.=+-]", "-", text).lstrip(".") or "run"


def default_folder(preset: str) -> Path:
    """``runs/<preset>``, always inside ``runs/``."""
    return Path("runs") / folder_name(preset)


def check_run_folder(out: Path, data: Path | None = None, val: Path | None = None,
                     init: Path | str | None = None) -> None:
    """What --force does not change: refuse a run folder ``out`` that is or lies inside ``--data`` or ``--val`` (its
    files would become images), either of them inside ``out``, ``--init`` being a file the run writes (it would
    overwrite its own start), or a run file or the lock that is a symbolic link."""
    for flag, folder, kind in (("--data", data, "training"), ("--val", val, "validation")):
        if folder is None:
            continue
        if overlaps(out, folder):
            where = "" if out.resolve() == Path(folder).resolve() else "inside "
            raise InputError(f"--out {out} is {where}{flag} {folder}: the run's files would become {kind} images; "
                             "choose a folder outside it")
        if overlaps(folder, out):
            raise InputError(f"{flag} {folder} is inside --out {out}, where the run writes its files; "
                             "keep the images outside the run folder")
    for name in (*RUN_FILES, LOCK) if init else ():
        if overlaps(out / name, Path(init)):
            raise InputError(f"--init {init} is {name} of --out {out}, which this run would overwrite; copy it "
                             "out of the run folder first, or continue that run with --resume")
    for name in RUN_FILES:
        refuse_link(out / name, "the run file", OTHER_OUT)
    refuse_link(out / LOCK, "the run folder's lock", OTHER_OUT)


def read_log(path: Path, until: int = 10**12) -> list[dict]:
    """Rows of an existing log up to step ``until`` (a resumed run continues from there); a log that
    is not one (binary, truncated header, non-numeric steps) is refused, naming it."""
    if not path.exists():
        return []
    with reading(path, "the run's log"), open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        numbers = [(int(row["step"]), float(row["psnr"]), float(row["seconds"])) for row in rows]
    return [row for row, (step, _, _) in zip(rows, numbers) if step <= until]


class RunDir:
    """A run folder: ``theta.safetensors``, ``config.yaml``, ``log.csv``, ``psnr.png``."""

    def __init__(self, path: Path):
        self.path = path
        self._log = None
        self._writer = None
        self._lock: int | None = None

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def best(self) -> Path:
        return self.path / BEST

    def holds_run(self) -> bool:
        return self.checkpoint.exists() or (self.path / LOG).exists()

    def check(self, overwrite: bool, data: Path | None = None, val: Path | None = None,
              init: Path | str | None = None) -> None:
        """Refuse, before anything is made: a file, a read-only folder, what :func:`check_run_folder` refuses, a
        folder holding files of the run's names (an earlier run's or the user's) unless ``overwrite``."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} is a file; give a folder for the run")
        check_run_folder(out, data, val, init)
        check_folder(out, f"--out {out}")
        self._claim(overwrite)

    def prepare(self, force: bool, resuming_from: Path | None = None, data: Path | None = None,
                val: Path | None = None, init: Path | str | None = None) -> None:
        """:meth:`check` (``force`` or resuming in place may overwrite), then make and lock the folder.
        Removes temporary files a killed run left (retune's own only), and with ``force`` the old
        checkpoint, so that no stale one is left beside the new run's files."""
        out = self.path
        in_place = resuming_from is not None and resuming_from.resolve().parent == out.resolve()
        self.check(force or in_place, data, val, init)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create the run folder {out}: {reason(e)}") from None
        self._acquire()
        try:
            self._claim(force or in_place)  # again under the lock: a run may have ended in between
        except InputError:
            self.release()
            raise
        remove_temporaries(out, STALE)
        for old in (self.checkpoint, self.best) if force and not in_place else ():
            old.unlink(missing_ok=True)

    def _claim(self, overwrite: bool) -> None:
        found = [name for name in RUN_FILES if (self.path / name).exists()] if self.path.is_dir() else []
        if not found or overwrite:
            return
        if self.holds_run():
            resume = f" or --resume {self.checkpoint}" if self.checkpoint.exists() else ""
            raise InputError(f"{self.path} already holds a run; pass --force to overwrite it{resume}")
        raise InputError(f"{self.path} already holds {found[0]}, which the run would overwrite; "
                         "pass --force to overwrite it or choose another --out")

    def _acquire(self) -> None:
        """Hold the folder's lock, or stop at once naming the process that holds it."""
        import fcntl

        path = self.path / LOCK
        while True:
            fd = self._open_lock(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                raise InputError(f"{self.path} is in use by another retune train (pid {owner or '?'}); "
                                 "wait for it to end or choose another --out") from None
            if self._holds(fd):
                break
            os.close(fd)  # the previous holder removed the file as we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock = fd

    def _open_lock(self, path: Path) -> int:
        """The lock file, opened (made if missing) without following a link; a link or another kind of file is
        refused, naming it."""
        refuse_link(path, "the run folder's lock", OTHER_OUT)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | NO_FOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as e:
            raise InputError(f"cannot write the run folder's lock {path}: {reason(e)}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InputError(f"the run folder's lock {path} is not a regular file; remove it")
        return fd

    def _holds(self, fd: int) -> bool:
        """The lock file's name still leads to the file open as ``fd`` (not removed, not replaced)."""
        try:
            now, held = os.lstat(self.path / LOCK), os.fstat(fd)
        except OSError:
            return False
        return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        """Remove the lock file (only the one this run made or took over) and release the lock (a no-op when
        not held)."""
        if self._lock is not None:
            if self._holds(self._lock):
                (self.path / LOCK).unlink(missing_ok=True)
            os.close(self._lock)
            self._lock = None

    def write_config(self, config: Config) -> None:
        """``config.yaml``: the resolved config, headed by a comment when θ starts from ``train.init``."""
        from .components import prior_class

        learned_step = prior_class(config.model.prior).learns_step
        pnp = " (model.init_sigma and model.init_tau are its σ and τ)" if learned_step else ""
        note = f"# θ starts from train.init's checkpoint{pnp}, not from model.init\n" if config.train.init else ""
        write_text(self.path / CONFIG, note + config.to_yaml())

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
        try:
            refuse_link(self.path / LOG, "the run file", OTHER_OUT)
            self._log = open(self.path / LOG, "a", newline="", opener=no_follow)
        except OSError as e:
            raise self._write_error(e) from None
        self._writer = csv.DictWriter(self._log, LOG_FIELDS, extrasaction="ignore")

    def append(self, row: dict) -> None:
        try:
            self._writer.writerow(row)
            self._log.flush()
        except OSError as e:
            raise self._write_error(e) from None

    def _write_error(self, error: OSError) -> InputError:
        return InputError(f"cannot write {self.path / LOG}: {reason(error)}")

    def close(self) -> None:
        """Close the log and release the folder."""
        if self._log is not None:
            try:
                self._log.close()
            except OSError:
                pass  # a full disk: the write that failed already said so
            self._log = None
        self.release()

    def plot(self, label: str, rows: list[dict]) -> None:
        from .plots import plot_curves

        curves = {}
        for key, name in (("psnr", "train"), ("val_psnr", "validation")):
            kept = [r for r in rows if r.get(key) not in (None, "")]
            if kept:
                curves[name] = ([int(r["step"]) for r in kept], [float(r[key]) for r in kept])
        if len(curves) > 1:
            plot_curves(self.path / PLOT, curves, ylabel="PSNR (dB)", title=label)
        else:
            plot_curves(self.path / PLOT, {label: curves["train"]}, title=label)


def config_values(folder: Path) -> dict[str, object]:
    """A run folder's config values by dotted key (``train.K``, ``model.weights``…); {} if unreadable."""
    from .yamlfiles import read_yaml

    try:
        data = read_yaml(folder / CONFIG)
    except InputError:
        return {}
    sections = {s: data.get(s) for s in ("physics", "model", "train")} if isinstance(data, dict) else {}
    return {f"{s}.{k}": v for s, values in sections.items() if isinstance(values, dict) for k, v in values.items()}


def plot_runs(path: Path, runs: dict[str, Path]) -> None:
    """One figure of several run folders (label → folder): train PSNR against steps and against
    wall-clock seconds, side by side; a colour per combination of K, T (whatever differs), solid θ_B and
    dashed θ_BC lines when the runs differ in ``model.weights`` (:func:`~.plots.run_styles`)."""
    from .plots import plot_curve_panels, run_styles

    curves = {label: read_log(folder / LOG) for label, folder in runs.items()}
    plot_curve_panels(path, {
        label: {"step": [int(r["step"]) for r in rows], "seconds": [float(r["seconds"]) for r in rows],
                "psnr": [float(r["psnr"]) for r in rows]}
        for label, rows in curves.items()
    }, styles=run_styles({label: config_values(folder) for label, folder in runs.items()}))
