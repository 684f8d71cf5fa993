"""Training throughput with 1 and 2 processes (torchrun, gloo on CPU / NCCL on CUDA).

Runs ``retune train`` (preset denoise-wavelet-b, built-in samples) as one process and as
``torchrun --nproc-per-node 2``, with the same global batch, and reads the steady-state time per
step from each run's log.csv (first steps dropped as warm-up). Each process uses one thread, so two
processes use the machine's two cores. Writes bench/results/distributed.json.

    python bench/bench_distributed.py [--steps 30] [--crop 128] [--batch-size 4] [--json PATH] [--quick]

``--quick``: a smoke run (7 steps, crop 32, batch 2, output in /tmp/retune-bench/distributed.json).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import flags, machine_info, parse_args, pick_device, write_json

WARMUP = 5


def run(processes: int, out: Path, args: argparse.Namespace) -> dict:
    train = ["-m", "retune_cli", "train", "--out", str(out), "--steps", str(args.steps), "--crop", str(args.crop)]
    train += ["--batch-size", str(args.batch_size), "--force"]
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                        f"--nproc-per-node={processes}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(launcher + train, check=True, env=env, capture_output=True)
    wall = time.perf_counter() - start
    with open(out / "log.csv") as f:
        seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    steady = (seconds[-1] - seconds[WARMUP - 1]) / (len(seconds) - WARMUP)
    return {"processes": processes, "seconds_per_step": steady, "steps_per_second": 1 / steady, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parse_args(parser, "distributed.json", {"steps": WARMUP + 2, "crop": 32, "batch_size": 2})
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run(n, Path(tmp) / f"p{n}", args) for n in (1, 2)]
    result = {
        "benchmark": "distributed training throughput",
        "machine": machine_info(pick_device()),
        "setup": {**flags(args), "preset": "denoise-wavelet-b", "threads_per_process": 1, "warmup_steps": WARMUP,
                  "torch": torch.__version__},
        "runs": runs,
        "speedup_2_over_1": runs[0]["seconds_per_step"] / runs[1]["seconds_per_step"],
    }
    path = write_json(args.json, result)
    for r in runs:
        print(f"{r['processes']} process(es): {r['steps_per_second']:.2f} steps/s")
    print(f"speed-up ×{result['speedup_2_over_1']:.2f} → {path}")


if __name__ == "__main__":
    main()
