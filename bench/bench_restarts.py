"""Restarts to a tolerance with and without Anderson acceleration (``restore --tol``).

For each checkpoint (trained θ) and each held-out image (the last 8 of CBSD68, center crops), the
observation is simulated once (seeded as ``retune eval``), then restored by ``restore.run`` with
``--tol`` and ``accelerate`` none / anderson, interleaved: restarts of Φ_K, seconds, residual reached
and PSNR. The goal: ≥ 3× fewer Φ_K applications with Anderson, PSNR equal to 0.01 dB. One thread.

    python bench/bench_restarts.py CKPT… --data PATH/TO/CBSD68 [--tol 1e-4] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import limit_threads, machine_info, parse_args, write_json
from experiment_common import crop_heldout, observations, split

from retune_cli.restore import load_model, run


def compare(path: Path, held: Path, tol: float, max_restarts: int) -> dict:
    """Plain against Anderson restarts on every held-out image for one checkpoint."""
    from deepinv.loss.metric import PSNR

    model = load_model(path)
    metric = PSNR(max_pixel=1.0)
    rows = []
    for clean, obs in observations(model.scheme.physics, held, seed=0):
        row = {}
        for accelerate in ("none", "anderson"):
            start = time.perf_counter()
            solution = run(model, obs, max_restarts, tol, accelerate)
            row[accelerate] = {"restarts": solution.restarts, "seconds": time.perf_counter() - start,
                               "residual": solution.residual, "psnr": float(metric(solution.x, clean))}
        rows.append(row)
    ratio = [r["none"]["restarts"] / r["anderson"]["restarts"] for r in rows]
    gap = [abs(r["none"]["psnr"] - r["anderson"]["psnr"]) for r in rows]
    return {"preset": model.config.preset, "K": model.config.train.K, "images": rows,
            "restarts_ratio_median": statistics.median(ratio), "restarts_ratio_min": min(ratio),
            "seconds_ratio_median": statistics.median(r["none"]["seconds"] / r["anderson"]["seconds"] for r in rows),
            "psnr_gap_max_db": max(gap)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--data", type=Path, required=True, help="CBSD68 folder")
    parser.add_argument("--work", type=Path, default=Path("/tmp/retune-bench/restarts"))
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--max-restarts", type=int, default=5000)
    args = parse_args(parser, "restarts.json", quick={"crop": 32, "tol": 1e-2})
    limit_threads()
    _, held_full, _, _ = split(args.data, args.work)
    held = args.work / "heldout-crops"
    crop_heldout(held_full, held, args.crop, 1 if args.quick else None)
    results = {"machine": machine_info(torch.device("cpu")), "tol": args.tol, "crop": args.crop,
               "max_restarts": args.max_restarts, "checkpoints": {}}
    for path in args.checkpoints:
        print(f"{path}…", flush=True)
        results["checkpoints"][str(path)] = compare(path, held, args.tol, args.max_restarts)
        write_json(args.json, results)
    print(f"→ {args.json}")


if __name__ == "__main__":
    main()
