"""``retune eval``: PSNR/SSIM of checkpoints on a folder of clean images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import (
    DEVICE_OPTION,
    SEED_MAX,
    Accelerate,
    Threads,
    TrustCode,
    check_accelerate,
    console,
    device_from,
    progress_bar,
    set_threads,
    user_errors,
)

EPILOG = (
    "Examples:  retune eval runs/*/theta.safetensors --data ~/Kodak24 --json results.json   ·   "
    "retune eval runs/dn-b/theta.safetensors --T 50 --csv table.csv   ·   checkpoints of different degradations: "
    "one table per degradation"
)


def eval_(
    checkpoints: Annotated[list[Path], typer.Argument(help="One or more theta.safetensors files.")],
    data: Annotated[Path | None, typer.Option(help="Folder of clean images (default: the built-in samples).")] = None,
    T: Annotated[int | None, typer.Option("--T", help="Restarts (default: each checkpoint's T).")] = None,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Noise seed: same seed, same observations.")] = 0,
    json_: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON (schema in the README).")
    ] = None,
    csv_: Annotated[Path | None, typer.Option("--csv", help="Write the table as CSV.")] = None,
    save_dir: Annotated[
        Path | None, typer.Option(help="Write each restored image and a side-by-side PNG per image into DIR.")
    ] = None,
    device: Annotated[str, DEVICE_OPTION] = "auto",
    accelerate: Accelerate = None,
    trust_code: TrustCode = False,
    threads: Threads = None,
) -> None:
    """Degrade every clean image (seeded), restore with each checkpoint, tabulate PSNR and SSIM (one table per
    degradation when the checkpoints degrade images differently)."""
    with user_errors():
        from ..errors import InputError
        from ..evaluate import evaluate_groups, saved_images, write_csv, write_json
        from ..files import check_outputs

        if T is not None and T < 1:
            raise InputError("--T must be at least 1")
        check_accelerate(accelerate)
        set_threads(threads)
        save = None if save_dir is None else saved_images(save_dir, data, checkpoints, trust_code)
        files = [("--save-dir", p) for group in save or [] for image in group.values() for p in image.values()]
        inputs = [("--data", data), *(("the checkpoint", path) for path in checkpoints)]
        check_outputs((("--json", json_), ("--csv", csv_), *files), inputs)
        with progress_bar() as progress:
            task = progress.add_task("evaluating", total=None)
            results = evaluate_groups(
                checkpoints,
                data,
                T,
                seed,
                device_from(device),
                on_restore=lambda done, n, what: progress.update(task, completed=done, total=n, description=what),
                trust_code=trust_code,
                accelerate=accelerate,
                on_row=lambda row: progress.console.print(_row_line(row), highlight=False, soft_wrap=True),
                save=save,
                on_group=lambda name: progress.console.print(f"[bold]{name}[/]", highlight=False, soft_wrap=True),
            )
        for result in results:
            if len(results) > 1:
                console.print(f"\n[bold]{result.group}[/]", highlight=False, soft_wrap=True)
            console.print(_eval_table(result))
        if json_:
            write_json(results, json_)
        if csv_:
            write_csv(results, csv_)


def _row_line(row: dict) -> str:
    """One image's scores as soon as they are ready: ``name  label PSNR/SSIM …``."""
    return f"{row['image']}  " + "  ".join(f"{c} {row['psnr'][c]:.2f}/{row['ssim'][c]:.3f}" for c in row["psnr"])


WIDE_TABLE = 3  # with more checkpoints, the table lists them as rows (per-image detail in --json/--csv)


def _eval_table(result) -> Table:
    if len(result.labels) > WIDE_TABLE:
        return _mean_table(result)
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


def _mean_table(result) -> Table:
    """One row per checkpoint (and the observation): mean PSNR and SSIM over the images, labels unwrapped."""
    mean = result.mean()
    table = Table(title=f"mean over {len(result.rows)} images (per image: --json / --csv)")
    table.add_column("checkpoint", no_wrap=True, overflow="fold")
    table.add_column("PSNR (dB)", justify="right")
    table.add_column("SSIM", justify="right")
    for column in result.columns:
        table.add_row(column, f"{mean['psnr'][column]:.2f}", f"{mean['ssim'][column]:.3f}")
    return table
