"""What the commands share: consoles, error handling, signals, common options."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ..distributed import env_rank
from ..yamlfiles import preset_names

MAX_MESSAGE = 1000  # characters of an error line
SECONDARY_GRACE_S = 2.0  # under torchrun, how long a rank > 0 waits after an error (see print_error)


class _Console(Console):
    """A Rich console that prints any text, even a path that is not UTF-8 (its undecodable bytes as �)."""

    def _render_buffer(self, buffer) -> str:
        return super()._render_buffer(buffer).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


console = _Console()
err_console = _Console(stderr=True, soft_wrap=True)


# Config keys that have their own flag: workflows name keys, messages show both (one boundary, here).
KEY_FLAGS = {
    "train.K": "--K", "train.T": "--T", "train.steps": "--steps", "train.epochs": "--epochs",
    "train.batch_size": "--batch-size", "train.crop": "--crop", "train.lr": "--lr", "train.gradient": "--gradient",
    "train.seed": "--seed", "train.clip_grad_norm": "--clip-grad-norm", "train.init": "--init",
    "train.check_gradient_every": "--check-gradient-every", "train.val_every": "--val-every",
}


def with_flags(message: str) -> str:
    """``train.K must …`` → ``train.K (--K) must …``: each key that has a flag, at its first mention."""
    import re

    for key, flag in KEY_FLAGS.items():
        message = re.sub(rf"(?<![\w.'-]){re.escape(key)}(?![\w])", f"{key} ({flag})", message, count=1)
    return message


def print_error(message: str) -> None:
    """``error: message`` on stderr as one line: newlines folded, at most :data:`MAX_MESSAGE`
    characters, no Rich markup.

    Under torchrun only rank 0 prints: the ranks check the same inputs (what only rank 0 does, the run
    folder, only rank 0 can fail at), so the line would repeat once per process. A rank > 0 waits up to
    :data:`SECONDARY_GRACE_S` instead, a SIGTERM ending the wait: torchrun stops every rank as soon as
    one exits, and must not stop rank 0 before it has printed."""
    if env_rank():
        _wait_for_rank_0()
        return
    text = " ".join(message.split())
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1] + "…"
    err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False)


class _Stopped(Exception):
    pass


def _wait_for_rank_0() -> None:
    """Sleep :data:`SECONDARY_GRACE_S`, or until a SIGTERM (torchrun stopping the ranks)."""

    def stop(signum, frame):
        raise _Stopped

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (the CLI always is): no handler, no wait
        return
    try:
        time.sleep(SECONDARY_GRACE_S)
    except _Stopped:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def warn_skipped(paths: list[Path], shown: int = 5) -> None:
    """One warning line naming the first ``shown`` non-image files skipped in a folder and counting the rest."""
    if paths:
        more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
        err_console.print(f"[yellow]skipped non-image files:[/] {escape(', '.join(p.name for p in paths[:shown]))}"
                          f"{more}", highlight=False)


def fail(message: str, code: int = 2) -> None:
    """:func:`print_error`, then exit with ``code``."""
    print_error(message)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """The one error boundary: the errors a user can fix become one line on stderr and exit code 2 (an
    OSError no reader or writer named a file for too, any error raised in a plugin's or factory's code,
    named by file, line and function); Ctrl-C exits with 130."""
    from ..errors import InputError
    from ..files import reason

    try:
        yield
    except InputError as e:
        fail(with_flags(str(e)))
    except OSError as e:
        fail(reason(e) + (f": {e.filename}" if e.filename else ""))
    except KeyboardInterrupt:
        if not env_rank():  # Ctrl-C reaches every rank: one line
            err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None
    except Exception as e:
        from ..core.custom import UserCodeError, describe_error

        where = describe_error(e) or (str(e) if isinstance(e, UserCodeError) else None)
        if where is None:
            raise
        fail(f"in your code: {where}")


@contextmanager
def graceful_stop() -> Iterator[callable]:
    """Ctrl-C or SIGTERM asks the loop to stop after the current step; a second Ctrl-C stops at once."""
    requested = []

    def handler(signum, frame):
        if requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested.append(signum)
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if not env_rank():
            err_console.print(f"[yellow]{what}: stopping after this step (Ctrl-C to stop now)…[/]")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(requested)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def device_from(name: str):
    """``--device`` → a torch device (imports torch: call inside a command)."""
    from ..models import resolve_device

    return resolve_device(name)


PRESET_HELP = (
    f"Built-in preset: {', '.join(preset_names())} (default denoise-wavelet-b); or a YAML file of the same "
    "shape: copy one from the repository's presets/ folder."
)


DEVICE_OPTION = typer.Option("--device", help="auto (CUDA when present), cpu or cuda.")
TrustCode = Annotated[
    bool, typer.Option(help="Run the Python code a config or checkpoint names (its plugins, a physics.factory).")
]
Threads = Annotated[
    int | None,
    typer.Option(help="CPU threads for torch (default: the cores this process may use, RETUNE_THREADS to set)."),
]
Accelerate = Annotated[
    str | None,
    typer.Option(help="Restarts: none or anderson (accelerated, same fixed point); default: the checkpoint's."),
]


def check_accelerate(accelerate: str | None) -> None:
    from ..errors import InputError

    if accelerate not in (None, "none", "anderson"):
        raise InputError(f"--accelerate must be none or anderson, not {accelerate!r}")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """torch's intra-op threads: ``threads``, else ``$RETUNE_THREADS``, else the cores available to the
    process (torch's own default counts the machine's cores, which oversubscribes a shared or
    containerised machine). OpenMP waits passively (see :func:`retune_cli.cli.main`)."""
    import os

    from ..errors import InputError

    if threads is None and os.environ.get("RETUNE_THREADS", "").strip():
        try:
            threads = int(os.environ["RETUNE_THREADS"])
        except ValueError:
            raise InputError(f"RETUNE_THREADS must be an integer, not {os.environ['RETUNE_THREADS']!r}") from None
    if threads is not None and not 1 <= threads <= 1024:
        raise InputError(f"--threads must be between 1 and 1024, not {threads}")
    import torch

    torch.set_num_threads(threads or available_cores())
    return torch.get_num_threads()
SEED_MAX = 2**63 - 1  # a seed is a 64-bit signed integer (torch.Generator), as train.seed


def int_list(text: str, flag: str) -> list[int]:
    from ..errors import InputError

    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputError(f"{flag} takes comma-separated integers, e.g. {flag} 1,5,10") from None
    if not values or min(values) < 1:
        raise InputError(f"{flag} values must be integers ≥ 1, e.g. {flag} 1,5,10")
    return values


def progress_bar(transient: bool = True):
    """A Rich progress bar (description, bar, done/total, elapsed, ETA) on the console; off when the
    console is quiet or not a terminal (pipes and logs get the results only)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    return Progress(*columns, console=console, transient=transient, disable=console.quiet or not console.is_terminal)
