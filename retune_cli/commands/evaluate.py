"""``retune eval``: PSNR/SSIM of checkpoints on a folder of clean images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import (
    DEVICE_OPTION,
    Accelerate,
    Threads,
    TrustCode,
    check_accelerate,
    console,
    device_from,
    set_threads,
    user_errors,
)

EPILOG = (
    "Examples:  retune eval runs/*/theta.safetensors --data ~/Kodak24 --json results.json   ·   "
    "retune eval runs/dn-b/theta.safetensors --T 50 --csv table.csv"
)


def eval_(
    checkpoints: Annotated[list[Path], typer.Argument(help="One or more theta.safetensors files.")],
    data: Annotated[Path | None, typer.Option(help="Folder of clean images (default: the built-in samples).")] = None,
    T: Annotated[int | None, typer.Option("--T", help="Restarts (default: each checkpoint's T).")] = None,
    seed: Annotated[int, typer.Option(help="Noise seed: same seed, same observations.")] = 0,
    json_: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON (schema in the README).")
    ] = None,
    csv_: Annotated[Path | None, typer.Option("--csv", help="Write the table as CSV.")] = None,
    device: Annotated[str, DEVICE_OPTION] = "auto",
    accelerate: Accelerate = None,
    trust_code: TrustCode = False,
    threads: Threads = None,
) -> None:
    """Degrade every clean image (seeded), restore with each checkpoint, tabulate PSNR and SSIM."""
    with user_errors():
        from rich.progress import Progress

        from ..errors import InputError
        from ..evaluate import evaluate
        from ..files import check_outputs

        if T is not None and T < 1:
            raise InputError("--T must be at least 1")
        check_accelerate(accelerate)
        set_threads(threads)
        check_outputs((("--json", json_), ("--csv", csv_)),
                      [("--data", data), *(("the checkpoint", path) for path in checkpoints)])
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("evaluating", total=None)
            result = evaluate(
                checkpoints,
                data,
                T,
                seed,
                device_from(device),
                on_image=lambda i, n, name: progress.update(task, completed=i, total=n, description=name),
                trust_code=trust_code,
                accelerate=accelerate,
            )
        console.print(_eval_table(result))
        if json_:
            result.write_json(json_)
        if csv_:
            result.write_csv(csv_)


def _eval_table(result) -> Table:
    table = Table(title="PSNR (dB) / SSIM", show_footer=False)
    table.add_column("image")
    for column in result.columns:
        table.add_column(column, justify="right")
    cells = lambda values: [f"{values['psnr'][c]:.2f} / {values['ssim'][c]:.3f}" for c in result.columns]  # noqa: E731
    for row in result.rows:
        table.add_row(row["image"], *cells(row))
    table.add_section()
    table.add_row("[bold]mean[/]", *[f"[bold]{c}[/]" for c in cells(result.mean())])
    return table
