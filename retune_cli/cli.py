"""The ``retune`` command line: parse options, call a workflow, render its results with Rich.

Heavy modules (torch, deepinv, the workflows) are imported inside the commands so that
``retune --help`` answers at once. Exit codes: 0 success, 1 training diverged, 2 bad input or
usage (one line, no traceback), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import __version__

app = typer.Typer(
    name="retune",
    help="Learn the hyperparameters of image-restoration algorithms at equilibrium (ReTune: restarted "
    "truncated unrolling). Train on a folder of clean images, restore degraded images, tabulate PSNR.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"retune {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
) -> None:
    """Learn restoration hyperparameters at equilibrium."""


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors a user can fix into one line on stderr and an exit code."""
    from .errors import InputError

    try:
        yield
    except InputError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


@contextmanager
def _graceful_stop() -> Iterator[callable]:
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


def _device(name: str):
    from .models import resolve_device

    return resolve_device(name)


PRESET_HELP = "Built-in preset (see README; default denoise-wavelet-b) or a YAML file of the same shape."
DEFAULT_PRESET = "denoise-wavelet-b"


def _check_preset(preset: str | None, config, source: Path) -> None:
    """Refuse ``--preset`` naming another preset than the checkpoint's."""
    from .errors import InputError

    if preset is not None and preset != config.preset:
        raise InputError(f"--preset {preset}: {source} was trained with preset {config.preset}; drop --preset")


DEVICE_OPTION = typer.Option("--device", help="auto (CUDA when present), cpu or cuda.")


@app.command(
    epilog="Examples:  retune train --preset denoise-wavelet-bc --data ~/CBSD68 --out runs/bc   ·   "
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
        str | None, typer.Option(help="retune (backprop through the last Φ_K) or unrolled (through all K·T steps).")
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
    with _user_errors():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from . import checkpoint as ckpt
        from .config import for_resume, grid_configs, parse_grid, parse_set, resolve
        from .distributed import start as start_distributed
        from .errors import InputError
        from .train import TrainingDiverged, plot_runs
        from .train import train as run_training

        flags = {"K": K, "T": T, "steps": steps, "epochs": epochs, "batch_size": batch_size, "crop": crop}
        flags |= {"lr": lr, "gradient": gradient, "seed": seed, "check_gradient_every": check_gradient_every}
        flags |= {"clip_grad_norm": clip_grad_norm, "init": str(init.resolve()) if init else None}
        overrides = {f"train.{k}": v for k, v in flags.items() if v is not None} | parse_set(set_ or [])
        if resume is not None:
            checkpoint = ckpt.load(resume)
            _check_preset(preset, checkpoint.config, resume)
            config = for_resume(checkpoint.config, overrides, str(resume))
            out = out or resume.parent
            data = data or checkpoint.data
        else:
            checkpoint = None
            config = resolve(preset or DEFAULT_PRESET, overrides)
            out = out or Path("runs") / config.preset
        if grid is not None and resume is not None:
            raise InputError("--grid starts new runs; resume each sub-folder's run with --resume instead")
        runs = [(name, cfg, out / name) for name, cfg in grid_configs(config, parse_grid(grid))] if grid else []
        group, dev = start_distributed(_device(device))
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
            _graceful_stop() as should_stop,
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


@app.command(
    epilog="Examples:  retune restore runs/dn-b/theta.safetensors noisy.png -o clean.png   ·   "
    "retune restore runs/dn-b/theta.safetensors photo.png --simulate --seed 3 -o out.png --save-observation obs.png"
    "   ·   retune restore CKPT noisy.png -o clean.npy --tol 1e-6"
)
def restore(
    checkpoint: Annotated[Path, typer.Argument(help="theta.safetensors written by retune train.")],
    image: Annotated[Path, typer.Argument(help="Degraded image (or a clean one with --simulate).")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Result: .png/.tif (8 or 16 bit) or .npy (float32, H×W×C).")
    ] = None,
    T: Annotated[
        int | None, typer.Option("--T", help="Restarts (default: the checkpoint's T; cap with --tol).")
    ] = None,
    tol: Annotated[
        float | None, typer.Option(help="Restart until ‖x_Kt − x_K(t−1)‖/‖x_Kt‖ ≤ tol (at most --T or 1000 restarts).")
    ] = None,
    simulate: Annotated[
        bool, typer.Option(help="Degrade the clean IMAGE with the checkpoint's physics first.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Noise seed for --simulate.")] = 0,
    save_observation: Annotated[
        Path | None, typer.Option(help="Also write the degraded image (same suffix rules).")
    ] = None,
    mask: Annotated[
        Path | None, typer.Option(help="Inpainting: image of the known pixels (white = kept), same size.")
    ] = None,
    kernel: Annotated[
        Path | None, typer.Option(help="Deblurring: .npy kernel, (h, w) shared or (3, h, w) per channel.")
    ] = None,
    bits: Annotated[int, typer.Option(help="Bit depth of PNG/TIFF outputs: 8 or 16.")] = 8,
    device: Annotated[str, DEVICE_OPTION] = "auto",
) -> None:
    """Restore one image with a checkpoint's model and physics, and report the residual reached."""
    with _user_errors():
        from .errors import InputError
        from .images import WRITE_SUFFIXES, write_image
        from .restore import load_model, restore_file

        output = output or image.with_name(f"{image.stem}.restored.png")
        for path, flag in ((output, "--output"), (save_observation, "--save-observation")):
            if path is not None and path.suffix.lower() not in WRITE_SUFFIXES:
                raise InputError(f"{flag} {path}: use a .png, .tif, .tiff or .npy file name")
        if bits not in (8, 16):
            raise InputError(f"--bits must be 8 or 16, not {bits}")
        if (T is not None and T < 1) or (tol is not None and not tol >= 0):
            raise InputError("--T must be at least 1 and --tol non-negative")
        model = load_model(checkpoint, _device(device))
        result = restore_file(model, image, seed if simulate else None, T, tol, mask, kernel)
        write_image(output, result.restored, bits)
        if save_observation is not None:
            write_image(save_observation, result.observation, bits)
        line = f"{result.restarts} restarts of Φ_{model.config.train.K}, residual {result.residual:.2e} → {output}"
        if result.psnr is not None:
            line += f"\nPSNR {result.psnr:.2f} dB (observation {result.psnr_observation:.2f} dB)"
        console.print(line, highlight=False)


@app.command(
    "eval",
    epilog="Examples:  retune eval runs/*/theta.safetensors --data ~/Kodak24 --json results.json   ·   "
    "retune eval runs/dn-b/theta.safetensors --T 50 --csv table.csv",
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
) -> None:
    """Degrade every clean image (seeded), restore with each checkpoint, tabulate PSNR and SSIM."""
    with _user_errors():
        from rich.progress import Progress

        from .errors import InputError
        from .evaluate import evaluate

        if T is not None and T < 1:
            raise InputError("--T must be at least 1")
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("evaluating", total=None)
            result = evaluate(
                checkpoints,
                data,
                T,
                seed,
                _device(device),
                on_image=lambda i, n, name: progress.update(task, completed=i, total=n, description=name),
            )
        console.print(_eval_table(result))
        if json_:
            result.write_json(json_)
        if csv_:
            result.write_csv(csv_)


def _int_list(text: str, flag: str) -> list[int]:
    from .errors import InputError

    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputError(f"{flag} takes comma-separated integers, e.g. {flag} 1,5,10") from None
    if not values or min(values) < 1:
        raise InputError(f"{flag} values must be integers ≥ 1, e.g. {flag} 1,5,10")
    return values


@app.command(
    "compare-grads",
    epilog="Examples:  retune compare-grads --K 1,5,10 --T 1,2,5,10,20 --plot errors.png   ·   "
    "retune compare-grads --checkpoint runs/dn-b/theta.safetensors --json grads.json",
)
def compare_grads(
    preset: Annotated[str | None, typer.Option(help=PRESET_HELP)] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Take θ (and the physics) from a checkpoint.")] = None,
    image: Annotated[Path | None, typer.Option(help="Clean image (default: the built-in astronaut).")] = None,
    crop: Annotated[int, typer.Option(help="Side of the center crop (finite differences cost 2·d solves).")] = 64,
    seed: Annotated[int, typer.Option(help="Noise seed, as in retune restore --simulate --seed.")] = 0,
    K: Annotated[str, typer.Option("--K", help="Comma-separated K values.")] = "1,5,10",
    T: Annotated[str, typer.Option("--T", help="Comma-separated T values.")] = "1,2,5,10,20",
    dtype: Annotated[str, typer.Option(help="float64 (default, for exact comparisons) or float32.")] = "float64",
    solver: Annotated[str, typer.Option(help="DEQ adjoint solver: gmres or fixed-point (Neumann).")] = "gmres",
    tol: Annotated[float, typer.Option(help="Relative residual of the DEQ adjoint solve.")] = 1e-12,
    json_: Annotated[Path | None, typer.Option("--json", help="Write all gradients and errors as JSON.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Figure: relative error against T per K, bounds dotted.")] = None,
    device: Annotated[str, DEVICE_OPTION] = "auto",
) -> None:
    """How close are ReTune, JFB and unrolled hypergradients to the exact DEQ one? (paper Lemma 1, Thm 2)"""
    with _user_errors():
        import json

        import torch

        from .config import resolve
        from .core.implicit import ADJOINT_SOLVERS
        from .errors import InputError
        from .gradients import compare_gradients
        from .plots import plot_gradient_errors
        from .restore import load_model

        if dtype not in ("float64", "float32"):
            raise InputError(f"--dtype must be float64 or float32, not {dtype!r}")
        if solver not in ADJOINT_SOLVERS:
            raise InputError(f"--solver must be one of {', '.join(ADJOINT_SOLVERS)}, not {solver!r}")
        Ks, Ts = _int_list(K, "--K"), _int_list(T, "--T")
        dev = _device(device)
        if checkpoint is not None:
            model = load_model(checkpoint, dev)
            scheme, config = model.scheme, model.config
            _check_preset(preset, config, checkpoint)
            if config.model.learn == "denoiser":
                raise InputError("compare-grads needs a small θ; a checkpoint that learns the denoiser has ~10⁶")
        else:
            from .models import build_scheme

            config = resolve(preset or DEFAULT_PRESET)
            scheme = build_scheme(config, dev)
        with console.status("computing gradients…") as status:
            result = compare_gradients(
                scheme,
                config,
                image,
                crop,
                seed,
                Ks,
                Ts,
                getattr(torch, dtype),
                solver,
                tol,
                on_progress=lambda what: status.update(f"computing gradients: {what}…"),
            )
        console.print(_gradient_table(result))
        s = result.solver
        console.print(
            f"fixed point: residual {s['fixed_point_residual']:.1e} after {s['fixed_point_restarts']} restarts · "
            f"DEQ adjoint ({s['name']}): residual {s['residual']:.1e} in {s['iterations']} iterations",
            highlight=False,
        )
        if json_:
            json_.write_text(json.dumps(result.to_json(), indent=2))
        if plot:
            plot_gradient_errors(plot, result.rows)


def _gradient_table(result) -> Table:
    deq_norm = sum(v * v for v in result.gradients["deq"]) ** 0.5
    deltas = " · ".join(f"K={d['K']}: {d['theory']:.3g} / {d['measured']:.3g}" for d in result.delta)
    table = Table(title="hypergradients vs DEQ and finite differences", caption=f"δ_K theory / measured: {deltas}")
    for name in ("method", "K", "T", "err DEQ", "err FD", "cos DEQ", "bound", "s", "MB"):
        table.add_column(name, justify="left" if name == "method" else "right")
    for r in result.rows:
        bound = "" if r["bound"] is None else f"{r['bound'] / deq_norm:.1e}"
        table.add_row(
            r["method"],
            str(r["K"] or ""),
            str(r["T"] or ""),
            f"{r['rel_err_deq']:.1e}",
            f"{r['rel_err_fd']:.1e}",
            f"{r['cosine_deq']:.5f}",
            bound,
            f"{r['seconds']:.2f}",
            f"{r['peak_bytes'] / 2**20:.1f}",
        )
    return table


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


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
