"""Where data enters and leaves: the one guard for input files, output files and atomic writes.

* :func:`reading`: an input must be a regular file (never a FIFO that would block, nor a folder), and
  any failure of the decoder reading it (OSError, MemoryError, zlib, numpy, PIL, pypng, tifffile…)
  becomes one :class:`InputError` naming the file; library warnings are silenced.
* :func:`check_outputs`: before any computation, every output can be written (a regular file or a
  new name, in a writable folder) and none is an input or another output of the same command.
* :func:`atomic_write`: a temporary file beside the target, fsync, rename; an OSError names the file.

Links, one policy for every writer: a file retune writes, appends to, locks or removes is never a symbolic
link (:func:`refuse_link`, checked before any work and again at the write; files are opened with
``O_NOFOLLOW``), else one :class:`InputError` naming it. Folders above it may be links: where a folder
lives is the user's choice. Temporary files are created with ``O_EXCL`` under names no user file has
(:data:`TEMP_TAG`), and only a regular file retune itself created is ever removed as one.

Permission bits are honoured even for root: a read-only file or folder is not written.
"""

from __future__ import annotations

import csv
import errno
import io
import logging
import os
import re
import secrets
import stat
import struct
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import InputError

# What decoders raise on a malformed file (numpy, PIL, pypng, tifffile, csv, safetensors' Python side).
READ_ERRORS = (OSError, MemoryError, ValueError, TypeError, AttributeError, KeyError, IndexError, EOFError,
               SyntaxError, OverflowError, RecursionError, zlib.error, struct.error, csv.Error)
# atomic_write's temporary file of ``name``: ``.<name>.retune-<12 hex digits>.tmp`` (TEMP_TAG: the pattern after
# the name), created exclusively; a killed run may leave one, which the next run of that folder removes.
TEMP_TAG = r"\.retune-[0-9a-f]{12}\.tmp"
NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def reason(error: BaseException) -> str:
    """A short, one-line account of ``error``."""
    if isinstance(error, MemoryError):
        return "out of memory while decoding it"
    if getattr(error, "errno", None) == errno.ELOOP:
        return "it is a symbolic link, which retune never writes through"
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


def _safetensors_header(stream: BinaryIO) -> dict:
    """The JSON header at the start of a safetensors ``stream`` (its length in 8 little-endian bytes, then the
    JSON: tensor entries and ``__metadata__``); ValueError when malformed."""
    import json

    size = int.from_bytes(stream.read(8), "little")
    if not 2 <= size <= 100_000_000:
        raise ValueError(f"a header of {size} bytes")
    header = json.loads(stream.read(size))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header


def read_safetensors(path: Path, what: str) -> tuple[dict, dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, read through Python (so that any file name works,
    even one that is not UTF-8); a malformed file is refused naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    with reading(path, what):
        data = path.read_bytes()
        try:
            tensors = load(data)  # checks the whole layout, header included
        except SafetensorError as e:
            raise InputError(f"{path} is not a readable safetensors file ({reason(e)})") from None
        header = _safetensors_header(io.BytesIO(data))
    return tensors, header.get("__metadata__") or {}


def read_header(path: Path) -> dict | None:
    """The header of a safetensors file (:func:`_safetensors_header`), read without torch; None when
    ``path`` is not a readable regular file with a well-formed header."""
    try:
        with open(path, "rb") as f:
            return _safetensors_header(f) if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else None
    except (OSError, ValueError):
        return None


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


def refuse_link(path: Path, what: str, hint: str = "give another name") -> None:
    """An :class:`InputError` naming ``what`` and ``path`` when ``path`` is a symbolic link (dangling or not);
    ``hint``: what to do besides removing the link."""
    if os.path.islink(path):
        try:
            target = f" (to {os.readlink(path)})"
        except OSError:
            target = ""
        raise InputError(f"{what} {path} is a symbolic link{target}: retune never writes through a link; "
                         f"remove the link or {hint}")


def check_output(path: Path, flag: str) -> None:
    """``path`` can be written: a new name in a writable folder, or a writable regular file (not a link)."""
    refuse_link(path, flag)
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give a file name")
    if path.exists():
        if not path.is_file():
            raise InputError(f"{flag} {path} is not a regular file; give a file name")
        if not writable(path):
            raise InputError(f"{flag} {path} is read-only")
    check_folder(path.parent, f"{flag} {path}")


def resolved(path: Path) -> Path:
    """``path`` made absolute with its links followed; a loop of links is refused naming it."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # Python < 3.13 raises RuntimeError on a loop, later versions OSError
        raise InputError(f"{path} is a loop of symbolic links; give the file itself") from None


def overlaps(path: Path, other: Path) -> bool:
    """``path`` is ``other`` (by resolved path, or by inode: hard links) or lies inside the folder ``other``."""
    resolved_path, target = resolved(path), resolved(other)
    if resolved_path == target or target in resolved_path.parents:
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
    """Call ``write(tmp)`` on a new temporary name beside ``path``, fsync it, rename it over ``path`` (the
    file's mode follows the umask); ``path`` a link is refused (:func:`refuse_link`), an OSError becomes an
    :class:`InputError` naming ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        refuse_link(path, "the file")
        with _temporary(path) as (tmp, fd):
            write(str(tmp))
            if not _same_file(tmp, os.fstat(fd)):
                raise InputError(f"cannot write {path}: its temporary file {tmp} was replaced while being written")
            os.fsync(fd)
            refuse_link(path, "the file")
            os.replace(tmp, path)
    except OSError as e:
        raise InputError(f"cannot write {path}: {reason(e)}") from None


def temp_name(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (see :data:`TEMP_TAG`)."""
    return path.with_name(f".{path.name}.retune-{secrets.token_hex(6)}.tmp")


@contextmanager
def _temporary(path: Path) -> Iterator[tuple[Path, int]]:
    """``(tmp, fd)``: a new empty file beside ``path``, made with ``O_EXCL | O_NOFOLLOW`` (never a user's file nor
    through a link); removed on the way out unless renamed, and only while it is still the file made here."""
    for _ in range(100):
        tmp = temp_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW, 0o666)  # mode: 0666 & ~umask
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))
    made = os.fstat(fd)
    try:
        yield tmp, fd
    finally:
        os.close(fd)
        if _same_file(tmp, made):
            os.unlink(tmp)


def _same_file(path: Path, made: os.stat_result) -> bool:
    """``path`` is still the regular file ``made`` (not removed, renamed, nor replaced by a link)."""
    try:
        now = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(now.st_mode) and (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino)


def no_follow(path: str, flags: int) -> int:
    """An ``opener`` for :func:`open` that never follows a link at ``path`` (``ELOOP`` instead)."""
    return os.open(path, flags | NO_FOLLOW, 0o666)


def temp_pattern(names: Iterable[str]) -> re.Pattern:
    """The names :func:`atomic_write` gives the temporary files of ``names`` (see :data:`TEMP_TAG`)."""
    return re.compile(rf"^\.({'|'.join(re.escape(n) for n in names)}){TEMP_TAG}$")


def remove_temporaries(folder: Path, pattern: re.Pattern) -> None:
    """Remove the temporary files a killed :func:`atomic_write` left in ``folder`` (named by ``pattern``, from
    :func:`temp_pattern`): regular files only, a link or any other file of the user's is left alone."""
    for entry in os.scandir(folder):
        if pattern.match(entry.name) and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
