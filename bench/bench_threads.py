"""Thread policy: one training step with 1 thread against the default thread count, on a quiet machine
and beside two busy processes, with OpenMP waiting passively (retune's default) or actively.

Each configuration runs in a fresh process (``--worker``), since ``OMP_WAIT_POLICY`` is read when torch
loads; configurations are interleaved over ``--rounds`` rounds and the median step is kept. The busy
processes are pure-Python spinning loops that stop by themselves. Ratios are taken within one load
condition: ``default / one thread`` (the goal: ≤ 1.2 beside two busy processes).

    python bench/bench_threads.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine_info, parse_args, write_json

CONFIGS = {"threads1_passive": (1, "PASSIVE"), "default_passive": (None, "PASSIVE"), "default_active": (None, "ACTIVE")}
PRESETS = {"denoise-wavelet-b": {}, "inpaint-wavelet": {}}


def worker(preset: str, threads: int | None, steps: int, crop: int) -> None:
    """Run ``steps`` training steps after one warm-up; print the step times as JSON."""
    import torch

    from retune_cli.commands.common import set_threads
    from retune_cli.config import resolve
    from retune_cli.data import ImageFolder, training_batch
    from retune_cli.models import solve_options
    from retune_cli.train import new_state, train_step

    used = set_threads(threads)
    config = resolve(preset, {"train.crop": crop})
    state = new_state(config, "cpu", None)
    images = ImageFolder.open(None)
    times = []
    for step in range(steps + 1):
        clean = training_batch(images, step, config.train.batch_size, crop, 0)
        with torch.no_grad():
            obs = state.scheme.physics.simulate(clean, step)
        start = time.perf_counter()
        train_step(state, clean, obs, solve_options(config.train), config.train.gradient)
        times.append(time.perf_counter() - start)
    print(json.dumps({"threads": used, "steps_s": times[1:]}))


def run_worker(name: str, preset: str, steps: int, crop: int) -> dict:
    threads, policy = CONFIGS[name]
    env = dict(os.environ, OMP_WAIT_POLICY=policy)
    command = [sys.executable, __file__, "--worker", preset, str(threads or 0), str(steps), str(crop)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


def busy(count: int, seconds: float) -> list[subprocess.Popen]:
    """``count`` spinning processes that end by themselves after ``seconds``."""
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def measure(load: int, rounds: int, steps: int, crop: int, budget: float) -> dict:
    """Median step per preset and configuration, interleaved, beside ``load`` busy processes."""
    spinners = busy(load, budget) if load else []
    samples: dict[str, dict[str, list[float]]] = {p: {c: [] for c in CONFIGS} for p in PRESETS}
    threads = {}
    try:
        for _ in range(rounds):
            for preset in PRESETS:
                for name in CONFIGS:
                    result = run_worker(name, preset, steps, crop)
                    samples[preset][name] += result["steps_s"]
                    threads[name] = result["threads"]
    finally:
        for p in spinners:
            p.kill()
    out = {}
    for preset, by_config in samples.items():
        medians = {name: statistics.median(v) for name, v in by_config.items()}
        out[preset] = {"median_step_s": medians, "threads": threads,
                       "default_over_one_thread": medians["default_passive"] / medians["threads1_passive"],
                       "active_over_passive": medians["default_active"] / medians["default_passive"]}
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        preset, threads, steps, crop = sys.argv[2], int(sys.argv[3]) or None, int(sys.argv[4]), int(sys.argv[5])
        return worker(preset, threads, steps, crop)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--crop", type=int, default=128)
    args = parse_args(parser, "threads.json", quick={"rounds": 1, "steps": 1, "crop": 32})
    import torch

    results = {"machine": machine_info(torch.device("cpu")), "setup": vars(args) | {"json": str(args.json)},
               "note": "1 thread vs the default (the cores available to the process), OMP_WAIT_POLICY passive "
                       "(retune's default) vs active; each configuration a fresh process, interleaved"}
    budget = 1800.0
    for load in (0, 2):
        results[f"busy_processes_{load}"] = measure(load, args.rounds, args.steps, args.crop, budget)
        write_json(args.json, results)
    print(f"→ {args.json}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
