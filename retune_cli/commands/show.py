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
        Path | None, typer.Option(help="Draw θ as heat maps (scale × band, per channel), or PnP's σ and τ against "
                                       "the steps, beside the PSNR curves.")
    ] = None,
    trust_code: TrustCode = False,
    threads: Threads = None,
) -> None:
    """Show what a checkpoint learned: λ_j, Λ_b, θ per scale × band (× channel) or PnP σ, τ; preset, K, T, step."""
    with user_errors():
        from ..files import check_outputs
        from ..summary import summarize, summarize_stored

        check_outputs((("--plot", plot),), (("the checkpoint", checkpoint),))
        summary = summarize_stored(checkpoint) if plot is None else None  # no torch: well under a second
        if summary is None:
            set_threads(threads)
            summary = summarize(checkpoint, trust_code)
        figure = _figure_data(summary) if plot is not None else None  # refused before any output
        _render(summary)
        if plot is not None:
            _plot(summary, *figure, plot)
            console.print(f"θ and PSNR curves → {plot}", highlight=False)


def _numbers(values, channels: tuple[str, ...]) -> str:
    """``a, b, c``; a band × channel table ``(3, C)`` (a tensor or nested lists) per channel:
    ``R: a, b, c · G: …`` (``channels``: the labels)."""
    values = values.tolist() if hasattr(values, "tolist") else values
    if values and isinstance(values[0], list):
        return " · ".join(f"{channels[c]}: {_numbers([row[c] for row in values], channels)}"
                          for c in range(len(values[0])))
    return ", ".join(f"{v:.4g}" for v in values)


def _render(summary) -> None:
    from rich.table import Table

    from ..summary import BANDS

    facts = Table.grid(padding=(0, 2))
    for key, value in [("checkpoint", str(summary.path)), *summary.facts.items()]:
        facts.add_row(f"[bold]{key}[/]", value)
    for name, values in summary.values.items():
        facts.add_row(f"[bold]{name}[/]", _numbers(values, summary.channels))
    if summary.denoiser_tensors:
        facts.add_row("[bold]denoiser[/]", f"learned weights ({summary.denoiser_tensors} tensors)")
    console.print(facts, highlight=False)
    if summary.theta is None:
        return
    theta = summary.theta.tolist() if hasattr(summary.theta, "tolist") else summary.theta
    per_channel = len(theta[0][0]) > 1
    table = Table(title="θ = λ_j √Λ_b per scale j (1 = finest) × band" + (" × channel" if per_channel else ""))
    for name in ("scale j", *(("channel",) if per_channel else ()), *BANDS):
        table.add_column(name, justify="right", no_wrap=True)
    for j, row in enumerate(theta):
        for c in range(len(row[0])):
            label = (summary.channels[c],) if per_channel else ()
            table.add_row(str(j + 1), *label, *[f"{row[b][c]:.4g}" for b in range(3)])
    console.print(table)


def _series(summary, key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of one log.csv column (rows where it is empty left out)."""
    rows = [r for r in summary.log if r.get(key) not in (None, "")]
    return [int(r["step"]) for r in rows], [float(r[key]) for r in rows]


def _figure_data(summary) -> tuple[dict, dict]:
    """``(parameters, curves)`` to draw: PnP's σ, τ against the steps (none for wavelets, whose θ is drawn
    as heat maps) and the PSNR curves; a PnP checkpoint without a log has nothing to draw."""
    from ..errors import InputError

    curves = {label: _series(summary, key) for key, label in (("psnr", "train PSNR"), ("val_psnr", "validation PSNR"))}
    curves = {label: series for label, series in curves.items() if series[0]}
    if summary.theta is not None:
        return {}, curves
    state = "frozen" if summary.denoiser_tensors else "learned"  # learning the denoiser freezes (σ, τ)
    parameters = {f"{name} ({state})": _series(summary, key) for key, name in (("sigma", "σ"), ("tau", "τ"))}
    parameters = {name: series for name, series in parameters.items() if series[0]}
    if not parameters and not curves:
        raise InputError(f"--plot: {summary.path} learned {', '.join(summary.values)} and has no log.csv beside it "
                         "to draw them against the steps")
    return parameters, curves


def _plot(summary, parameters: dict, curves: dict, path: Path) -> None:
    """θ heat maps (wavelets) or σ, τ against the steps (PnP), beside the PSNR curves."""
    from ..plots import plot_parameters, plot_theta

    if summary.theta is not None:
        plot_theta(path, summary.theta, curves, summary.channels)
    else:
        plot_parameters(path, parameters, curves)
