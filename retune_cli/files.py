"""Where data enters and leaves: the one guard for input files, output files and atomic writes.

* :func:`reading`: an input must be a regular file (never a FIFO that would block, nor a folder), and
  any failure of the decoder reading it (OSError, MemoryError, zlib, numpy, PIL, pypng, tifffile…)
  becomes one :class:`InputError` naming the file; library warnings are silenced.
* :func:`check_outputs`: before any computation, every output can be written (a regular file or a
  new name, in a writable folder) and none is an input or another output of the same command.
* :func:`atomic_write`: a temporary file beside the target, fsync, rename; an OSError names the file.

Permission bits are honoured even for root: a read-only file or folder is not written.
"""

from __future__ import annotations

import csv
import logging
import os
import stat
import struct
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

# What decoders raise on a malformed file (numpy, PIL, pypng, tifffile, csv, safetensors' Python side).
READ_ERRORS = (OSError, MemoryError, ValueError, TypeError, AttributeError, KeyError, IndexError, EOFError,
               SyntaxError, OverflowError, RecursionError, zlib.error, struct.error, csv.Error)


def reason(error: BaseException) -> str:
    """A short, one-line account of ``error``."""
    if isinstance(error, MemoryError):
        return "out of memory while decoding it"
    text = getattr(error, "strerror", None) or str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def input_file(path: Path | str, what: str, hint: str = "") -> Path:
    """``path`` if it is an existing regular file, else an :class:`InputError` (``hint`` says what to give)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path} does not exist{hint}")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a FIFO or device would block or never end)"
        raise InputError(f"{what} {path} is {kind}{hint}")
    return path


@contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """Check that ``path`` is a regular file, then run the block that decodes it: its failures become one
    :class:`InputError` naming ``what`` and ``path``; warnings and tifffile's log lines are silenced."""
    input_file(path, what)
    logger = logging.getLogger("tifffile")
    disabled, logger.disabled = logger.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except READ_ERRORS as e:
        raise InputError(f"cannot read {what} {path}: {reason(e)}") from None
    finally:
        logger.disabled = disabled


def read_safetensors(path: Path, what: str) -> tuple[dict, dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, read through Python (so that any file name works,
    even one that is not UTF-8); a malformed file is refused naming it."""
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load

    with reading(path, what):
        data = path.read_bytes()
        try:
            tensors = load(data)  # checks the whole layout, header included
        except SafetensorError as e:
            raise InputError(f"{path} is not a readable safetensors file ({reason(e)})") from None
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    return tensors, header.get("__metadata__") or {}


def writable(path: Path) -> bool:
    """Writable by this process, and not marked read-only (no write bit), which root would ignore."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def check_folder(folder: Path, what: str) -> None:
    """``folder`` exists (or can be made under an existing folder) and can be written in."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{what}: {existing} is a file, not a folder")
    if not writable(existing):
        raise InputError(f"{what}: the folder {existing} is read-only")


def check_output(path: Path, flag: str) -> None:
    """``path`` can be written: a new name in a writable folder, or a writable regular file."""
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give a file name")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise InputError(f"{flag} {path} is not a regular file; give a file name")
        if not writable(path):
            raise InputError(f"{flag} {path} is read-only")
    check_folder(path.parent, f"{flag} {path}")


def overlaps(path: Path, other: Path) -> bool:
    """``path`` is ``other`` (by resolved path, or by inode: hard links) or lies inside the folder ``other``."""
    resolved, target = path.resolve(), other.resolve()
    if resolved == target or target in resolved.parents:
        return True
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False


def check_outputs(outputs: Iterable[tuple[str, Path | None]], inputs: Iterable[tuple[str, Path | None]]) -> None:
    """Before any work: each given output (``(flag, path)``) is writable, is none of the ``inputs``
    (``(label, path)``: files, or folders that are read and never written into) and differs from the
    other outputs."""
    taken = [(label, Path(p)) for label, p in inputs if p is not None]
    for flag, path in outputs:
        if path is None:
            continue
        path = Path(path)
        for label, other in taken:
            if overlaps(path, other):
                where = "inside" if other.is_dir() else "also"
                raise InputError(f"{flag} {path} is {where} {label} {other}: an input is never overwritten; "
                                 "give another file name")
        check_output(path, flag)
        taken.append((flag, path))


def write_text(path: Path, text: str) -> None:
    """``text`` into ``path`` with :func:`atomic_write`."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary name beside ``path``, fsync it, rename it over ``path`` (the
    file's mode follows the umask); an OSError becomes an :class:`InputError` naming ``path``."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise InputError(f"cannot write {path}: {reason(e)}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
