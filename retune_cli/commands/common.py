"""What the commands share: consoles, error handling, signals, common options."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


# Config keys that have their own flag: workflows name keys, messages show both (one boundary, here).
KEY_FLAGS = {
    "train.K": "--K", "train.T": "--T", "train.steps": "--steps", "train.epochs": "--epochs",
    "train.batch_size": "--batch-size", "train.crop": "--crop", "train.lr": "--lr", "train.gradient": "--gradient",
    "train.seed": "--seed", "train.clip_grad_norm": "--clip-grad-norm", "train.init": "--init",
    "train.check_gradient_every": "--check-gradient-every",
}


def with_flags(message: str) -> str:
    """``train.K must …`` → ``train.K (--K) must …``: each key that has a flag, at its first mention."""
    import re

    for key, flag in KEY_FLAGS.items():
        message = re.sub(rf"(?<![\w.-]){re.escape(key)}(?![\w])", f"{key} ({flag})", message, count=1)
    return message


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line on stderr and an exit code."""
    from ..errors import InputError

    try:
        yield
    except InputError as e:
        err_console.print(f"[bold red]error:[/] {with_flags(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


@contextmanager
def graceful_stop() -> Iterator[callable]:
    """Ctrl-C or SIGTERM asks the loop to stop after the current step; a second Ctrl-C stops at once."""
    requested = []

    def handler(signum, frame):
        if requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested.append(signum)
        err_console.print("[yellow]stopping after this step (Ctrl-C again to stop now)…[/]")

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
    "Built-in preset (see README; default denoise-wavelet-b) or a YAML file of the same shape: "
    "copy one from the repository's presets/ folder."
)
DEFAULT_PRESET = "denoise-wavelet-b"


def check_preset(preset: str | None, config, source: Path) -> None:
    """Refuse ``--preset`` naming another preset than the checkpoint's."""
    from ..errors import InputError

    if preset is not None and preset != config.preset:
        raise InputError(f"--preset {preset}: {source} was trained with preset {config.preset}; drop --preset")


DEVICE_OPTION = typer.Option("--device", help="auto (CUDA when present), cpu or cuda.")


def int_list(text: str, flag: str) -> list[int]:
    from ..errors import InputError

    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputError(f"{flag} takes comma-separated integers, e.g. {flag} 1,5,10") from None
    if not values or min(values) < 1:
        raise InputError(f"{flag} values must be integers ≥ 1, e.g. {flag} 1,5,10")
    return values
