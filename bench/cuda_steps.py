"""Training-step times on a GPU (issue 22, part 5): run by ``cuda_check.sh`` whenever a CUDA machine is lent.

One ``retune_cli.train.train_step`` (solve, MSE, backward, Adam, the step's two reads) on 4×3×256² crops of the
built-in samples, for denoising (θ_BC), inpainting and deblurring with the wavelet FB, PnP (σ, τ) and PnP
denoiser training (inpainting), in the configurations (K, T) = (10, 10) and (10, 1) ReTune, unrolled (10, 10),
JFB and DEQ (tol 1e-4): median of ``--steps`` synchronized steps after 2 warm-ups, peak CUDA memory of a step.
Also: the wavelet step's paths on the GPU (gather periodization, dense synthesis) against the CPU's, one
float64 solve each, max |difference|. Goals (issue 22): (10, 10) denoising ≤ 10 ms, inpainting and deblurring
≤ 25 ms.

    python bench/cuda_steps.py [--device cuda] [--steps 5] [--json PATH] [--quick]

``--quick`` (crop 32, batch 1, one step, the CPU unless ``--device``): a smoke run of the script itself.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_step_ops import setup
from common import machine_info, parse_args, synchronize, write_json

PROBLEMS = {"denoise": ("denoise-wavelet-bc", {}), "inpaint": ("inpaint-wavelet", {}),
            "deblur": ("deblur-wavelet", {}), "pnp": ("inpaint-pnp", {}),
            "pnp_denoiser": ("inpaint-pnp-denoiser", {})}
CONFIGS = {"retune_K10_T10": (10, 10, "retune"), "retune_K10_T1": (10, 1, "retune"),
           "unrolled_K10_T10": (10, 10, "unrolled"), "jfb": (10, 10, "jfb"), "deq": (10, 10, "deq")}
GOALS_MS = {"denoise": 10.0, "inpaint": 25.0, "deblur": 25.0}  # (10, 10) ReTune


def time_case(preset: str, overrides: dict, config: tuple, shape: tuple, device: torch.device, steps: int) -> dict:
    """Median seconds of a training step and its peak memory (CUDA)."""
    from retune_cli.models import solve_options
    from retune_cli.train import train_step

    K, T, mode = config
    settings, state, clean, obs = setup(preset, shape, device=device, overrides=overrides)
    options = solve_options(settings.train, K=K, T=T)
    for _ in range(2):
        train_step(state, clean, obs, options, mode)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    samples = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        train_step(state, clean, obs, options, mode)
        synchronize(device)
        samples.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"median_ms": 1000 * statistics.median(samples), "min_ms": 1000 * min(samples), "peak_bytes": peak}


def paths_agree(device: torch.device, shape: tuple) -> dict:
    """One float64 (10, 10) solve per wavelet preset on ``device`` and on the CPU: max |difference|."""
    from retune_cli.core.hypergrad import solve
    from retune_cli.models import solve_options

    out = {}
    for name in ("denoise", "inpaint", "deblur"):
        preset, overrides = PROBLEMS[name]
        settings, state, _, obs = setup(preset, shape, double=True, overrides=overrides)
        options = solve_options(settings.train, K=10, T=10)
        with torch.no_grad():
            here = solve(state.scheme, obs, options).x
            there = solve(state.scheme.to(device), obs.to(device), options).x.cpu()
        out[name] = float((here - there).abs().max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--shape", type=int, nargs=2, default=[4, 256], metavar=("BATCH", "CROP"))
    args = parse_args(parser, "cuda_steps.json", quick={"steps": 1, "shape": [1, 32], "device": "cpu"})
    device = torch.device(args.device)
    shape = (args.shape[0], 3, args.shape[1], args.shape[1])
    table = {f"{p}/{c}": time_case(*PROBLEMS[p], CONFIGS[c], shape, device, args.steps)
             for p in PROBLEMS for c in CONFIGS}
    goals = {p: {"goal_ms": g, "measured_ms": table[f"{p}/retune_K10_T10"]["median_ms"],
                 "met": table[f"{p}/retune_K10_T10"]["median_ms"] <= g} for p, g in GOALS_MS.items()}
    data = {"benchmark": "training steps on a GPU (issue 22)", "machine": machine_info(device),
            "shape": list(shape), "steps": args.steps, "times": table, "goals": goals,
            "gpu_paths_vs_cpu_float64_max_abs_diff": paths_agree(device, (1, 3, 64, 64))}
    print(write_json(args.json, data))
    for key, row in table.items():
        print(f"{key:32s} {row['median_ms']:9.2f} ms")


if __name__ == "__main__":
    main()
