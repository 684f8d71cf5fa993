"""CBSD68: super-resolution and the splitting schemes (issue: more problems and schemes).

Block SR: ``sr4-wavelet`` and ``sr4-pnp`` trained with (K, T) ∈ {(1,1), (1,10), (10,1), (10,10)},
held-out PSNR at each run's own T, against bicubic upsampling of the observation (``evaluate``'s
observation column: the physics' baseline) and the untrained θ.
Block schemes: at (K, T) = (10, 10), the same number of steps, forward-backward against
Douglas–Rachford (wavelet θ_BC) and against half-quadratic splitting (PnP (σ, τ)), on inpainting and
deblurring, with seconds per step.

Training on the first 60 images (sorted), evaluation on center crops of the last 8; one CPU thread.

    python bench/experiment_problems.py --data PATH/TO/CBSD68 [--quick]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from common import limit_threads, machine_info, parse_args, write_json
from experiment_common import crop_heldout, save_initial, split, train_run

from retune_cli.config import resolve
from retune_cli.evaluate import evaluate
from retune_cli.rundir import read_log

GRID = [(1, 1), (1, 10), (10, 1), (10, 10)]
SR_PRESETS = ("sr4-wavelet", "sr4-pnp")
SCHEME_PAIRS = {
    "inpaint": ("inpaint-wavelet", "inpaint-wavelet-drs", "inpaint-pnp", "inpaint-pnp-hqs"),
    "deblur": ("deblur-wavelet", "deblur-wavelet-drs", "deblur-pnp", "deblur-pnp-hqs"),
}
STEPS = {"wavelet": 100, "pnp": 40}


def seconds_per_step(folder: Path) -> float:
    times = [float(r["seconds"]) for r in read_log(folder / "log.csv")]
    return statistics.median(b - a for a, b in zip([0.0, *times], times))


def run_block(runs: dict[str, tuple], held: Path, train_dir: Path, work: Path, reuse: bool) -> dict:
    """Train every ``label → (preset, overrides)`` (plus each preset's untrained θ) and evaluate them
    together on ``held``: one observation per image shared by all."""
    out = {}
    paths = {}
    for label, (preset, overrides) in runs.items():
        config = resolve(preset, overrides)
        folder = work / label
        _, _, log = train_run(config, folder, train_dir, reuse)
        paths[label] = folder / "theta.safetensors"
        out[label] = {"preset": preset, "K": config.train.K, "T": config.train.T, "steps": config.train.steps,
                      "seconds_per_step": seconds_per_step(folder), "train_psnr": log[-1][2]}
    for preset in {p for p, _ in runs.values()}:
        initial = work / f"initial-{preset}" / "theta.safetensors"
        initial.parent.mkdir(parents=True, exist_ok=True)
        save_initial(initial, resolve(preset))
        paths[f"initial-{preset}"] = initial
    by_physics: dict[str, list[str]] = {}
    for label in paths:
        preset = out[label]["preset"] if label in out else label.removeprefix("initial-")
        by_physics.setdefault(str(resolve(preset).physics), []).append(label)
    for labels in by_physics.values():
        result = evaluate([paths[label] for label in labels], data=held)
        mean = result.mean()
        for label, column in zip(labels, result.labels):
            out.setdefault(label, {})["heldout_psnr"] = mean["psnr"][column]
            out[label]["heldout_ssim"] = mean["ssim"][column]
            out[label]["heldout_psnr_observation"] = mean["psnr"]["observation"]
    return out


def overrides_for(preset: str, steps: int | None, quick: bool) -> dict:
    kind = "pnp" if "pnp" in preset else "wavelet"
    o = {"train.steps": steps or STEPS[kind], "train.checkpoint_every": steps or STEPS[kind]}
    return o | ({"train.crop": 64, "train.batch_size": 2} if quick else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="CBSD68 folder")
    parser.add_argument("--work", type=Path, default=Path("runs/experiment-problems"))
    parser.add_argument("--steps", type=int, default=None, help="override the steps of every run")
    parser.add_argument("--crop", type=int, default=128, help="held-out center crops")
    parser.add_argument("--blocks", default="sr,schemes")
    parser.add_argument("--reuse", action="store_true", help="keep finished runs found in --work")
    args = parse_args(parser, "experiment_problems.json",
                      quick={"steps": 1, "work": Path("/tmp/retune-bench/problems")})
    limit_threads()
    train_dir, held_full, _, _ = split(args.data, args.work)
    held = args.work / "heldout-crops"
    crop_heldout(held_full, held, args.crop, 2 if args.quick else None)
    results = {"machine": machine_info(torch.device("cpu")), "heldout_crop": args.crop}
    if "sr" in args.blocks:
        runs = {f"{p}-K{K}-T{T}": (p, overrides_for(p, args.steps, args.quick) | {"train.K": K, "train.T": T})
                for p in SR_PRESETS for K, T in GRID}
        results["sr"] = run_block(runs, held, train_dir, args.work / "sr", args.reuse)
        write_json(args.json, results)
    if "schemes" in args.blocks:
        results["schemes"] = {}
        for problem, presets in SCHEME_PAIRS.items():
            runs = {p: (p, overrides_for(p, args.steps, args.quick)) for p in presets}
            results["schemes"][problem] = run_block(runs, held, train_dir, args.work / problem, args.reuse)
            write_json(args.json, results)
    print(f"→ {args.json}")


if __name__ == "__main__":
    main()
