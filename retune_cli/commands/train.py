"""``retune train``: learn θ on clean images."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from .common import (
    DEFAULT_PRESET,
    DEVICE_OPTION,
    PRESET_HELP,
    check_preset,
    console,
    device_from,
    err_console,
    graceful_stop,
    user_errors,
)

EPILOG = (
    "Examples:  retune train --preset denoise-wavelet-bc --data ~/CBSD68 --out runs/bc   ·   "
    "retune train --K 10 --T 1 --steps 300 --set model.init_lambda=0.1   ·   "
    "retune train --resume runs/bc/theta.safetensors --steps 400"
)


def train(
    preset: Annotated[str | None, typer.Option(help=PRESET_HELP)] = None,
    data: Annotated[
        Path | None, typer.Option(help="Folder of clean training images (default: the built-in samples).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default: runs/<preset>).")] = None,
    K: Annotated[int | None, typer.Option("--K", help="Steps per unrolled block Φ_K (backpropagated).")] = None,
    T: Annotated[int | None, typer.Option("--T", help="Restarts of Φ_K; only the last is backpropagated.")] = None,
    steps: Annotated[int | None, typer.Option(help="Adam steps (ignored when --epochs is given).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the images, in batches.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Crops per step.")] = None,
    crop: Annotated[int | None, typer.Option(help="Side of the random square crops (paper: 256).")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate (paper: 5e-2).")] = None,
    gradient: Annotated[
        str | None,
        typer.Option(
            help="retune (backprop through the last Φ_K), unrolled (all K·T steps), jfb (one Φ_K at the fixed "
            "point) or deq (implicit differentiation at the fixed point; see train.tol, train.adjoint_solver)."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of crops, order and noise.")] = None,
    device: Annotated[str, DEVICE_OPTION] = "auto",
    resume: Annotated[
        Path | None, typer.Option(help="Continue a run from its checkpoint (θ, Adam state, step).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override any config key, e.g. --set model.weights=bands-channels."),
    ] = None,
    clip_grad_norm: Annotated[float | None, typer.Option(help="Clip ‖∇θ‖ to this value (0: off).")] = None,
    init: Annotated[
        Path | None, typer.Option(help="Start from another run's θ, e.g. its (σ, τ) before learning the denoiser.")
    ] = None,
    check_gradient_every: Annotated[
        int | None, typer.Option(help="Every N steps, log cos(g, g_DEQ) and the relative error to log.csv.")
    ] = None,
    grid: Annotated[
        str | None,
        typer.Option(help='Train every combination into its own sub-folder, e.g. --grid "K=1,10 T=1,10".'),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing run folder.")] = False,
) -> None:
    """Learn θ on clean images: degrade, restore with T restarts of Φ_K, backpropagate, Adam.

    Writes theta.safetensors, config.yaml, log.csv and psnr.png into the run folder.
    """
    with user_errors():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from .. import checkpoint as ckpt
        from ..config import for_resume, resolve
        from ..distributed import start as start_distributed
        from ..errors import InputError
        from ..grid import grid_configs, parse_grid
        from ..rundir import RunDir, default_folder, plot_runs
        from ..train import TrainingDiverged
        from ..train import train as run_training
        from ..yamlfiles import parse_set

        flags = {"K": K, "T": T, "steps": steps, "epochs": epochs, "batch_size": batch_size, "crop": crop}
        flags |= {"lr": lr, "gradient": gradient, "seed": seed, "check_gradient_every": check_gradient_every}
        flags |= {"clip_grad_norm": clip_grad_norm, "init": str(init.resolve()) if init else None}
        overrides = {f"train.{k}": v for k, v in flags.items() if v is not None} | parse_set(set_ or [])
        if resume is not None:
            checkpoint = ckpt.load(resume)
            check_preset(preset, checkpoint.config, resume)
            config = for_resume(checkpoint.config, overrides, str(resume))
            out = out or resume.parent
            data = data or checkpoint.data
        else:
            checkpoint = None
            config = resolve(preset or DEFAULT_PRESET, overrides)
            out = out or default_folder(config.preset)
        if grid is not None and resume is not None:
            raise InputError("--grid starts new runs; resume each sub-folder's run with --resume instead")
        runs = [(name, cfg, out / name) for name, cfg in grid_configs(config, parse_grid(grid))] if grid else []
        if runs:
            RunDir(out).check(force, data)  # the grid's own psnr.png
        group, dev = start_distributed(device_from(device))
        quiet = not group.is_main
        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.5f} · PSNR {task.fields[psnr]:.2f} dB · τ {task.fields[tau]:.3g}"),
            TimeRemainingColumn(),
        )
        results = []
        console.quiet = quiet
        with (
            Progress(*columns, console=console, disable=quiet) as progress,
            graceful_stop() as should_stop,
            contextlib.closing(group),
        ):
            for name, cfg, folder in runs or [(config.preset, config, out)]:
                processes = f" × {group.world} processes" if group.active else ""
                console.print(
                    f"[bold]{cfg.preset}[/] · K={cfg.train.K} T={cfg.train.T} gradient={cfg.train.gradient} "
                    f"· {'built-in samples' if data is None else data} · {dev}{processes} → {folder}",
                    highlight=False,
                )
                nan = float("nan")
                task = progress.add_task(name, total=None, loss=nan, psnr=nan, tau=nan)
                try:
                    results.append(
                        run_training(
                            cfg,
                            folder,
                            data=data,
                            device=dev,
                            resume=checkpoint,
                            force=force,
                            on_start=lambda start, total, task=task: progress.update(
                                task, completed=start, total=total
                            ),
                            on_step=lambda r, task=task: progress.update(
                                task, completed=r.step, loss=r.loss, psnr=r.psnr, tau=r.tau
                            ),
                            should_stop=should_stop,
                            group=group,
                        )
                    )
                except TrainingDiverged as e:
                    if group.is_main:
                        err_console.print(f"[bold red]training diverged:[/] {e}", highlight=False)
                    raise typer.Exit(1) from None
        if quiet:
            return
        if results[0].skipped:
            err_console.print(f"[yellow]skipped non-image files:[/] {', '.join(p.name for p in results[0].skipped)}")
        for result in results:
            console.print(
                f"done: {result.steps} steps, train PSNR {result.psnr:.2f} dB → {result.checkpoint} "
                f"(also config.yaml, log.csv, psnr.png)",
                highlight=False,
            )
        if runs:
            plot_runs(out / "psnr.png", {name: folder for name, _, folder in runs})
            console.print(
                f"grid: PSNR curves of all runs → {out / 'psnr.png'}; compare them with "
                f"retune eval {out}/*/theta.safetensors",
                highlight=False,
            )
