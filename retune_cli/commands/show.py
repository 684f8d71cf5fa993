"""``retune show``: a checkpoint's learned parameters in natural units, its settings and progress."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import Threads, TrustCode, console, set_threads, user_errors

EPILOG = (
    "Examples:  retune show runs/denoise-wavelet-b/theta.safetensors   ·   "
    "retune show runs/bc/theta.safetensors --plot theta.png"
)


def show(
    checkpoint: Annotated[Path, typer.Argument(help="theta.safetensors written by retune train.")],
    plot: Annotated[
        Path | None, typer.Option(help="Draw θ as heat maps (scale × band, per channel) beside the PSNR curves.")
    ] = None,
    trust_code: TrustCode = False,
    threads: Threads = None,
) -> None:
    """Show what a checkpoint learned: λ_j, Λ_b, θ per scale × band (× channel) or PnP σ, τ; preset, K, T, step."""
    with user_errors():
        from ..errors import InputError
        from ..files import check_outputs
        from ..summary import summarize

        check_outputs((("--plot", plot),), (("the checkpoint", checkpoint),))
        set_threads(threads)
        summary = summarize(checkpoint, trust_code)
        if plot is not None and summary.theta is None:
            raise InputError(f"--plot draws wavelet weights θ; {checkpoint} learned {', '.join(summary.values)}")
        _render(summary)
        if plot is not None:
            _plot(summary, plot)
            console.print(f"θ and PSNR curves → {plot}", highlight=False)


def _numbers(values) -> str:
    """``a, b, c``; a band × channel tensor ``(3, C)`` per channel: ``R: a, b, c · G: …``."""
    from ..summary import CHANNELS

    if values.dim() == 2:
        return " · ".join(f"{CHANNELS[c]}: {_numbers(values[:, c])}" for c in range(values.shape[1]))
    return ", ".join(f"{v:.4g}" for v in values.tolist())


def _render(summary) -> None:
    from rich.table import Table

    from ..summary import BANDS, CHANNELS

    facts = Table.grid(padding=(0, 2))
    for key, value in [("checkpoint", str(summary.path)), *summary.facts.items()]:
        facts.add_row(f"[bold]{key}[/]", value)
    for name, values in summary.values.items():
        facts.add_row(f"[bold]{name}[/]", _numbers(values))
    if summary.denoiser_tensors:
        facts.add_row("[bold]denoiser[/]", f"learned weights ({summary.denoiser_tensors} tensors)")
    console.print(facts, highlight=False)
    if summary.theta is None:
        return
    theta, per_channel = summary.theta, summary.theta.shape[2] > 1
    table = Table(title="θ = λ_j √Λ_b per scale j (1 = finest) × band" + (" × channel" if per_channel else ""))
    for name in ("scale j", *(("channel",) if per_channel else ()), *BANDS):
        table.add_column(name, justify="right", no_wrap=True)
    for j, row in enumerate(theta):
        for c in range(theta.shape[2]):
            table.add_row(str(j + 1), *((CHANNELS[c],) if per_channel else ()), *[f"{row[b, c]:.4g}" for b in range(3)])
    console.print(table)


def _plot(summary, path: Path) -> None:
    from ..plots import plot_theta
    from ..summary import CHANNELS

    curves = {}
    for key, label in (("psnr", "train PSNR"), ("val_psnr", "validation PSNR")):
        rows = [r for r in summary.log if r.get(key) not in (None, "")]
        if rows:
            curves[label] = ([int(r["step"]) for r in rows], [float(r[key]) for r in rows])
    plot_theta(path, summary.theta, curves, CHANNELS)
