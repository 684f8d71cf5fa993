"""``retune train``: learn θ on clean images."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from .common import (
    DEVICE_OPTION,
    PRESET_HELP,
    Threads,
    TrustCode,
    console,
    err_console,
    graceful_stop,
    user_errors,
    warn_skipped,
)

EPILOG = (
    "Examples:  retune train --preset denoise-wavelet-bc --data ~/CBSD68 --out runs/bc   ·   "
    "retune train --K 10 --T 1 --steps 300 --set model.init_lambda=0.1   ·   "
    "retune train --preset inpaint-wavelet --set model.init=noise   ·   "
    "retune train --resume runs/bc/theta.safetensors --steps 400   ·   "
    'retune train --preset denoise-wavelet-bc --grid "gradient=retune,deq" --out runs/modes'
)
GRADIENT_HELP = (
    "retune (backprop through the last Φ_K), unrolled (all K·T steps), jfb (one Φ_K at the fixed point) or deq "
    "(implicit differentiation at the fixed point; see train.tol, train.adjoint_solver)."
)

# The flags that set a train.* key: name → help (their values are passed as --set train.<name>=…).
TRAIN_FLAGS = {
    "K": "Steps per unrolled block Φ_K (backpropagated; default: the preset's, e.g. 10).",
    "T": "Restarts of Φ_K; only the last is backpropagated (default: the preset's, e.g. 10).",
    "steps": "Adam steps in all, also when resuming (default: the preset's, e.g. 100; not with --epochs).",
    "epochs": "Passes over the images, in batches.",
    "batch_size": "Crops per step.",
    "crop": "Side of the random square crops (default: the preset's; denoise-wavelet-b: 128; paper: 256).",
    "lr": "Adam learning rate (paper: 5e-2).",
    "gradient": GRADIENT_HELP,
    "seed": "Seed of crops, order and noise.",
    "clip_grad_norm": "Clip ‖∇θ‖ to this value (0: off).",
    "check_gradient_every": "Every N steps, log cos(g, g_DEQ) and the relative error to log.csv.",
    "val_every": "With --val: validation PSNR every N steps (and at the last).",
}


def _option(name: str, kind: type):
    flag = "--" + name.replace("_", "-") if len(name) > 1 else f"--{name}"
    return Annotated[kind | None, typer.Option(flag, help=TRAIN_FLAGS[name])]


def train(
    preset: Annotated[str | None, typer.Option(help=PRESET_HELP)] = None,
    data: Annotated[Path | None, typer.Option(help="Folder of clean training images (default: built-in).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default: runs/<preset>).")] = None,
    K: _option("K", int) = None,
    T: _option("T", int) = None,
    steps: _option("steps", int) = None,
    epochs: _option("epochs", int) = None,
    batch_size: _option("batch_size", int) = None,
    crop: _option("crop", int) = None,
    lr: _option("lr", float) = None,
    gradient: _option("gradient", str) = None,
    seed: _option("seed", int) = None,
    clip_grad_norm: _option("clip_grad_norm", float) = None,
    check_gradient_every: _option("check_gradient_every", int) = None,
    val: Annotated[
        Path | None, typer.Option(help="Folder of clean validation images: val_psnr in log.csv, best.safetensors.")
    ] = None,
    val_every: _option("val_every", int) = None,
    device: Annotated[str, DEVICE_OPTION] = "auto",
    resume: Annotated[Path | None, typer.Option(help="Continue a run from its checkpoint (θ, Adam, step).")] = None,
    more_steps: Annotated[
        int | None, typer.Option(min=1, help="With --resume: train this many steps beyond the checkpoint's.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override any config key, e.g. --set model.weights=bands.")
    ] = None,
    init: Annotated[Path | None, typer.Option(help="Start from another run's θ (and denoiser weights).")] = None,
    grid: Annotated[
        str | None, typer.Option(help='Train every combination into its own sub-folder, e.g. --grid "K=1,10 T=1,10".')
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing run folder.")] = False,
    trust_code: TrustCode = False,
    threads: Threads = None,
) -> None:
    """Learn θ on clean images: degrade, restore with T restarts of Φ_K, backpropagate, Adam.

    Writes theta.safetensors, config.yaml, log.csv and psnr.png into the run folder.
    """
    with user_errors():
        from ..grid import plan
        from ..yamlfiles import parse_set
        from .common import device_from, set_threads

        steps = _total_steps(steps, more_steps, resume, trust_code)
        values = dict(K=K, T=T, steps=steps, epochs=epochs, batch_size=batch_size, crop=crop, lr=lr,
                      gradient=gradient, seed=seed, clip_grad_norm=clip_grad_norm,
                      check_gradient_every=check_gradient_every, val_every=val_every,
                      init=str(init.resolve()) if init else None)
        overrides = {f"train.{k}": v for k, v in values.items() if v is not None} | parse_set(set_ or [])
        runs = plan(preset, overrides, out, data, resume, grid, force, trust_code)
        if val is not None:
            from ..data import list_images

            list_images(val, "--val")  # before any progress is drawn
        _check_run_folders(runs, val)
        set_threads(threads)
        results = _train_all(runs, device_from(device), force, trust_code, val)
        if results:
            _report(runs, results)


def _check_run_folders(runs, val: Path | None) -> None:
    """Before the first run trains: every run folder (and a grid's own) apart from --data, --val and --init, with
    no run file that is a link."""
    from ..rundir import check_run_folder

    for _, cfg, folder in runs.runs:
        check_run_folder(folder, runs.data, val, cfg.train.init if runs.checkpoint is None else None)
    if runs.grid_folder is not None:
        check_run_folder(runs.grid_folder, runs.data, val)


def _progress(quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[stats]}"), TimeRemainingColumn())
    return Progress(*columns, console=console, disable=quiet)


def _train_all(runs, device, force: bool, trust_code: bool, val: Path | None = None) -> list:
    """Train each run of the plan (in this process group) with a progress bar; [] on ranks > 0."""
    from ..distributed import start as start_distributed
    from ..train import TrainingDiverged
    from ..train import train as run_training

    group, dev = start_distributed(device)
    console.quiet = not group.is_main
    results = []
    with _progress(console.quiet) as progress, graceful_stop() as should_stop, contextlib.closing(group):
        for name, cfg, folder in runs.runs:
            processes = f" × {group.world} processes" if group.active else ""
            console.print(f"[bold]{cfg.preset}[/] · K={cfg.train.K} T={cfg.train.T} gradient={cfg.train.gradient} "
                          f"· {'built-in samples' if runs.data is None else runs.data} · {dev}{processes} → {folder}",
                          highlight=False)
            task = progress.add_task(name, total=None, stats="")  # no numbers before the first step's
            try:
                results.append(run_training(
                    cfg, folder, data=runs.data, device=dev, resume=runs.checkpoint, force=force,
                    on_start=lambda start, total, task=task: progress.update(task, completed=start, total=total),
                    on_step=lambda r, task=task: progress.update(task, completed=r.step, stats=_step_text(r)),
                    should_stop=should_stop, group=group, trust_code=trust_code, val=val,
                ))
            except TrainingDiverged as e:
                _stop_without(progress, task)
                if group.is_main:
                    err_console.print(f"[bold red]training diverged:[/] {e}", highlight=False)
                raise typer.Exit(1) from None
    return results if group.is_main else []


def _stop_without(progress, task) -> None:
    """Stop the display without ``task``'s bar (the run a refusal ends), nor an empty line where it was."""
    progress.remove_task(task)
    progress.live.transient = not progress.tasks
    progress.live.stop()
    progress.disable = True  # stopped already: nothing more to draw on leaving its context


def _step_text(report) -> str:
    """The progress line's numbers after a step: loss, PSNR and the parameters."""
    return f"loss {report.loss:.5f} · PSNR {report.psnr:.2f} dB · {_theta_text(report)}"


def _theta_text(report) -> str:
    """The progress line's parameters: ``τ`` (the step), and PnP's ``σ`` before it."""
    tau = f"τ {report.tau:.3g}"
    return tau if report.sigma is None else f"σ {report.sigma:.3g} · {tau}"


def _report(runs, results: list) -> None:
    from ..rundir import plot_runs

    warn_skipped(results[0].skipped)
    for (_, cfg, _), result in zip(runs.runs, results):
        console.print(f"done: {result.steps} steps, train PSNR {result.psnr:.2f} dB → {result.checkpoint} "
                      "(also config.yaml, log.csv, psnr.png)", highlight=False)
        _warn_if_unlearned(cfg, runs.data, result)
        if result.capped is not None and (line := result.capped.warning()):
            err_console.print(f"[yellow]warning:[/] {line}", highlight=False)
    if runs.grid_folder is not None:
        plot_runs(runs.grid_folder / "psnr.png", {name: folder for name, _, folder in runs.runs})
        console.print(f"grid: PSNR curves of all runs → {runs.grid_folder / 'psnr.png'}; compare them with "
                      f"retune eval {runs.grid_folder}/*/theta.safetensors", highlight=False)


def _warn_if_unlearned(config, data, result) -> None:
    """A run that has barely moved θ, or restores worse than its observations: say what helps."""
    from ..advice import unlearned_warning

    warning = unlearned_warning(config, data, result.steps, result.psnr, result.residual)
    if warning:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)


def _total_steps(steps: int | None, more_steps: int | None, resume: Path | None, trust_code: bool) -> int | None:
    """``--steps`` (a total), or the resumed checkpoint's step + ``--more-steps``."""
    from ..errors import InputError

    if more_steps is None:
        return steps
    if resume is None or steps is not None:
        raise InputError("--more-steps N continues a --resume run by N steps; give it with --resume, without --steps")
    from .. import checkpoint as ckpt  # torch: only to resume

    return ckpt.load(resume, trust_code).step + more_steps
