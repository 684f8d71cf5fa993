"""CBSD68: the four gradient modes of training at the same number of steps (issue: open engine).

For θ_BC denoising (``denoise-wavelet-bc``) and wavelet inpainting (``inpaint-wavelet``), train with
``retune`` (K, T) = (10, 10), ``unrolled`` (10, 10), ``jfb`` and ``deq`` (restarts of Φ_10 to the
fixed point, then one Φ_10, resp. the implicit adjoint solve) — the same ``retune train`` workflow,
one run per mode — on the first 60 images of CBSD68 (sorted names), then evaluate the last 8 with
``retune eval``'s workflow (whole images, or center crops with ``--heldout-crop``), at each
checkpoint's own T (for jfb/deq: restarts to its ``train.tol``) and at T = 100 restarts.

Recorded per run: held-out PSNR, train PSNR, seconds per step (median of the log's increments),
total seconds, restarts of Φ_K per step (median), and on CUDA the peak allocated memory. Figures:
``<problem>.png`` with train PSNR against steps and against wall-clock seconds (the run folders'
``psnr.png`` of a ``--grid "gradient=…"``). The claim checked: ReTune reaches DEQ's quality at a
fraction of DEQ's cost and memory.

    python bench/experiment_gradients.py --data PATH/TO/CBSD68 [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import RESULTS_DIR, limit_threads, machine_info, parse_args, write_json
from experiment_common import crop_heldout, split

from retune_cli.config import resolve
from retune_cli.evaluate import evaluate
from retune_cli.models import resolve_device
from retune_cli.rundir import plot_runs, read_log
from retune_cli.train import train

MODES = ("retune", "unrolled", "jfb", "deq")
TRAIN, HELD_OUT = 60, 8
EQUILIBRIUM_T = 100
PROBLEMS = {
    "denoise-wavelet-bc": {"train.crop": 256},
    # slow contraction (τ = 1.95/L, μ = 0): the fixed-point modes get a budget, stated in the JSON
    "inpaint-wavelet": {"train.crop": 128, "train.tol": 1e-3, "train.max_restarts": 50,
                        "train.adjoint_max_iter": 50},
}


def run_mode(preset: str, overrides: dict, mode: str, out: Path, data: Path, device) -> dict:
    """Train one mode; its timing, restarts and memory from the run's log."""
    config = resolve(preset, overrides | {"train.gradient": mode})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = train(config, out, data=data, device=device, force=True)
    seconds = time.perf_counter() - start
    rows = read_log(out / "log.csv")
    times = [float(r["seconds"]) for r in rows]
    steps_s = [b - a for a, b in zip([0.0, *times], times)]
    return {
        "checkpoint": str(result.checkpoint),
        "steps": result.steps,
        "train_psnr": result.psnr,
        "seconds_total": seconds,
        "seconds_per_step_median": statistics.median(steps_s),
        "restarts_per_step_median": statistics.median(int(r["restarts"]) for r in rows),
        "residual_last": float(rows[-1]["residual"]),
        "cuda_peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "config": {k: getattr(config.train, k) for k in ("K", "T", "tol", "max_restarts", "adjoint_solver",
                                                          "adjoint_tol", "adjoint_max_iter", "crop", "batch_size",
                                                          "lr", "steps")},
    }


def held_out(runs: dict[str, dict], data: Path, device) -> None:
    """Mean held-out PSNR/SSIM of each run at its own T and at T = 100, added to ``runs``."""
    paths = [Path(r["checkpoint"]) for r in runs.values()]
    for key, T in (("own_T", None), (f"T{EQUILIBRIUM_T}", EQUILIBRIUM_T)):
        result = evaluate(paths, data=data, T=T, device=device)
        mean = result.mean()
        for mode, label in zip(runs, result.labels):
            runs[mode][f"heldout_psnr_{key}"] = mean["psnr"][label]
            runs[mode][f"heldout_ssim_{key}"] = mean["ssim"][label]
        runs_observation = mean["psnr"]["observation"]
    for r in runs.values():
        r["heldout_psnr_observation"] = runs_observation


def ratios(runs: dict[str, dict]) -> dict:
    """Cost of each mode relative to ReTune's (time per step, and peak memory on CUDA)."""
    base = runs["retune"]
    out = {}
    for mode, r in runs.items():
        out[mode] = {"time_per_step": r["seconds_per_step_median"] / base["seconds_per_step_median"]}
        if base["cuda_peak_bytes"]:
            out[mode]["cuda_peak_memory"] = r["cuda_peak_bytes"] / base["cuda_peak_bytes"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="CBSD68 folder")
    parser.add_argument("--work", type=Path, default=Path("runs/experiment-gradients"), help="run folders")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--n-train", type=int, default=TRAIN)
    parser.add_argument("--n-held", type=int, default=HELD_OUT)
    parser.add_argument("--figures", type=Path, default=RESULTS_DIR, help="folder of the PSNR figures")
    parser.add_argument("--heldout-crop", type=int, default=None, help="center-crop held-out images (default: whole)")
    args = parse_args(parser, "experiment_gradients.json", quick={"steps": 2, "n_train": 2, "n_held": 1,
                                                                   "work": Path("/tmp/retune-bench/gradients")})
    device = resolve_device(args.device)
    if device.type == "cpu":
        limit_threads()
    train_dir, held_dir, _, _ = split(args.data, args.work, args.n_train, args.n_held)
    if args.heldout_crop:
        crop_heldout(held_dir, args.work / "heldout-crops", args.heldout_crop)
        held_dir = args.work / "heldout-crops"
    results = {"machine": machine_info(device), "steps": args.steps, "train_images": args.n_train,
               "heldout_images": args.n_held, "heldout_crop": args.heldout_crop, "problems": {}}
    for preset in args.problems.split(","):
        overrides = PROBLEMS[preset] | {"train.steps": args.steps, "train.checkpoint_every": args.steps}
        if args.quick:
            overrides |= {"train.crop": 64, "train.batch_size": 2}
        runs = {}
        for mode in MODES:
            print(f"{preset} · {mode}", flush=True)
            runs[mode] = run_mode(preset, overrides, mode, args.work / preset / mode, train_dir, device)
        held_out(runs, held_dir, device)
        figure = (args.figures if not args.quick else args.work) / f"experiment_gradients_{preset}.png"
        plot_runs(figure, {mode: args.work / preset / mode for mode in MODES})
        results["problems"][preset] = {"runs": runs, "cost_relative_to_retune": ratios(runs), "figure": str(figure)}
        write_json(args.json, results)
    print(f"→ {args.json}")


if __name__ == "__main__":
    main()
