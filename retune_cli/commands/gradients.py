"""``retune compare-grads``: hypergradients against DEQ and finite differences."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .. import DEFAULT_PRESET
from .common import (
    DEVICE_OPTION,
    PRESET_HELP,
    SEED_MAX,
    Threads,
    TrustCode,
    console,
    device_from,
    int_list,
    progress_bar,
    set_threads,
    user_errors,
)

EPILOG = (
    "Examples:  retune compare-grads --K 1,5,10 --T 1,2,5,10,20 --plot errors.png   ·   "
    "retune compare-grads --checkpoint runs/dn-b/theta.safetensors --json grads.json"
)


def compare_grads(
    preset: Annotated[str | None, typer.Option(help=PRESET_HELP)] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Take θ (and the physics) from a checkpoint.")] = None,
    image: Annotated[Path | None, typer.Option(help="Clean image (default: the built-in astronaut).")] = None,
    crop: Annotated[int, typer.Option(help="Side of the center crop (finite differences cost 2·d solves).")] = 64,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Noise seed (as restore --simulate --seed).")] = 0,
    K: Annotated[str, typer.Option("--K", help="Comma-separated K values.")] = "1,5,10",
    T: Annotated[str, typer.Option("--T", help="Comma-separated T values.")] = "1,2,5,10,20",
    dtype: Annotated[str, typer.Option(help="float64 (default, for exact comparisons) or float32.")] = "float64",
    solver: Annotated[str, typer.Option(help="DEQ adjoint solver: gmres or fixed-point (Neumann).")] = "gmres",
    tol: Annotated[float, typer.Option(help="Relative residual of the DEQ adjoint solve.")] = 1e-12,
    fixed_point_tol: Annotated[float | None, typer.Option(
        help="Restart residual of the fixed point û (default 1e-14 in float64, 1e-6 in float32); 1e-8 for "
             "non-smooth primal–dual problems (TV, μ = 0), whose residual stalls near 1e-8.")] = None,
    json_: Annotated[Path | None, typer.Option("--json", help="Write all gradients and errors as JSON.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Figure: relative error against T per K, bounds dotted.")] = None,
    device: Annotated[str, DEVICE_OPTION] = "auto",
    accelerate: Annotated[bool, typer.Option(help="Also ReTune from Anderson-accelerated restarts.")] = False,
    trust_code: TrustCode = False,
    threads: Threads = None,
) -> None:
    """How close are ReTune, JFB and unrolled hypergradients to the exact DEQ one? (paper Lemma 1, Thm 2)"""
    with user_errors():
        import torch

        from ..errors import InputError
        from ..files import check_outputs
        from ..gradients import compare_gradients
        from ..plots import plot_gradient_errors

        if dtype not in ("float64", "float32"):
            raise InputError(f"--dtype must be float64 or float32, not {dtype!r}")
        Ks, Ts = int_list(K, "--K"), int_list(T, "--T")
        check_outputs((("--json", json_), ("--plot", plot)), (("the checkpoint", checkpoint), ("--image", image)))
        dev = device_from(device)
        set_threads(threads)
        scheme, config = _theta(preset, checkpoint, dev, trust_code)
        with progress_bar() as progress:
            task = progress.add_task("gradient rows", total=None)
            result = compare_gradients(
                scheme, config, image, crop, seed, Ks, Ts, getattr(torch, dtype), solver, tol,
                on_progress=lambda what, done, n: progress.update(task, completed=done, total=n, description=what),
                source=str(checkpoint or f"preset {config.preset}"), accelerate=accelerate,
                fixed_point_tol=fixed_point_tol)
        console.print(_gradient_table(result))
        s = result.solver
        console.print(
            f"fixed point: residual {s['fixed_point_residual']:.1e} after {s['fixed_point_restarts']} restarts · "
            f"DEQ adjoint ({s['name']}): residual {s['residual']:.1e} in {s['iterations']} iterations",
            highlight=False,
        )
        _notes(console, result)
        if json_:
            result.write_json(json_)
        if plot:
            plot_gradient_errors(plot, result.rows)


def _theta(preset: str | None, checkpoint: Path | None, device, trust_code: bool):
    """``(scheme, config)``: a checkpoint's θ, or a preset's initial one."""
    from ..config import resolve
    from ..errors import InputError
    from ..grid import check_preset
    from ..models import build_scheme
    from ..restore import load_model

    if checkpoint is None:
        config = resolve(preset or DEFAULT_PRESET, trust_code=trust_code)
        return build_scheme(config, device), config
    model = load_model(checkpoint, device, trust_code)
    check_preset(preset, model.config, checkpoint)
    if model.config.model.learn == "denoiser":
        raise InputError("compare-grads needs a small θ; a checkpoint that learns the denoiser has ~10⁶")
    return model.scheme, model.config


def _notes(console, result) -> None:
    """Skipped finite differences; a scheme that barely contracts."""
    if not result.solver["finite_differences"]:
        console.print(f"finite differences skipped: θ has {len(result.gradients['deq'])} entries "
                      "(2 fixed-point solves each); DEQ is the reference", highlight=False)
    note = contraction_note(result.delta)
    if note:
        console.print(f"[yellow]{note}[/yellow]", highlight=False)


def contraction_note(delta: list[dict]) -> str | None:
    """A warning when the measured δ_K is ≥ 0.99 for some K: Φ_K barely contracts (primal–dual schemes)."""
    weak = [d for d in delta if d["measured"] >= 0.99]
    if not weak:
        return None
    where = ", ".join(f"K={d['K']}: measured δ_K = {d['measured']:.3f}" for d in weak)
    return (f"Φ_K is not a contraction here ({where}): Lemma 1 gives no bound and ReTune's restart term "
            "δ_K^T‖û − u_0‖ decays slowly; use a larger K and T, or --accelerate anderson "
            "(train.accelerate anderson) so the recorded Φ_K starts near the fixed point.")


def _gradient_table(result) -> Table:
    deq_norm = sum(v * v for v in result.gradients["deq"]) ** 0.5
    known = lambda v: "n/a" if v != v else f"{v:.3g}"  # noqa: E731  (NaN: no contraction factor is known)
    deltas = " · ".join(f"K={d['K']}: {known(d['theory'])} / {known(d['measured'])}" for d in result.delta)
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
            "–" if r["rel_err_fd"] is None else f"{r['rel_err_fd']:.1e}",
            f"{r['cosine_deq']:.5f}",
            bound,
            f"{r['seconds']:.2f}",
            f"{r['peak_bytes'] / 2**20:.1f}",
        )
    return table
