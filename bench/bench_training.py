"""Time and peak memory of one training step against (K, T), ReTune against full unrolling and deepinv.

One training step = the project's ``retune_cli.train.train_step`` (``solve`` of retune_cli.core.hypergrad
with the gradient mode + MSE loss + backward + Adam step), on a batch 4×3×256×256 of random crops of the
built-in samples, noised with the preset's physics (``physics.simulate``; denoise-wavelet-b, θ_B,
τ* = 2/(μ+L)). Configurations (built in ``training_cases.py``):

* ReTune, (K, T) ∈ {(1, 1), (1, 10), (10, 1), (10, 10)}; (1, 100) and (10, 100) for memory only;
* full unrolled backpropagation over K·T = 100 steps (``gradient="unrolled"``, K=10, T=10);
* deepinv 0.5 ``PGD(unfold=True, max_iter=100)`` with its ``WaveletPrior`` (db4, 4 levels, ptwt "zero"
  boundary) on deepinv's ``Denoising()`` physics, learning (λ, stepsize): what a user would otherwise
  reach for. Timed as shipped (it also evaluates the objective at every iteration) and with that
  objective switched off;
* for reference, a graph-free solve of the same 100 steps (the floor of any 100-step method).

Memory, each configuration in a fresh subprocess (``--worker NAME``), on its first step:

* ``saved_bytes``: bytes of the tensors autograd saves for backward (``saved_tensors_hooks``; storages
  deduplicated by data pointer, counting those still held when backward starts, i.e. when autograd
  first unpacks one: the step is ``train_step`` itself, which backpropagates inside);
* ``rss_peak_delta_bytes``: growth of the process peak RSS (``ru_maxrss``) over the step;
* on CUDA, ``cuda_peak_bytes``: ``torch.cuda.max_memory_allocated`` over the step, above what was
  allocated before it (this is then the figure the memory goal uses).

Timing: all configurations built in one process, one warm-up step each, then ``--rounds`` rounds; in each
round the fast configurations run back to back (3 steps each, shuffled order), then the deepinv ones (1 step
each). Reported: medians over all steps and their ratios (the goals), and "paired" ratios taken round by
round, which a drifting load on the shared machine affects less. ``torch.set_num_threads(1)``.

    python bench/bench_training.py [--rounds 6] [--no-deepinv]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

import torch
from common import limit_threads, machine_info, mib, parse_args, pick_device, summary, write_json
from training_cases import (
    CASES,
    DEEPINV,
    PRESET,
    QUICK_SIZES,
    Sizes,
    build_case,
    learning_rate,
    make_batch,
    measure_memory,
    profile_step,
)

FAST_REPEATS = 3  # per round, for the configurations that take well under a second
PROFILED = ("retune_K10_T10", "unrolled_K10_T10")


def run_worker(name: str, quick: bool) -> dict:
    command = [sys.executable, __file__, "--worker", name] + (["--quick"] if quick else [])
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker {name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_cases(names: list[str], rounds: int, device: torch.device, sizes: Sizes) -> tuple[dict, dict]:
    clean, obs = make_batch(device, sizes)
    cases = {n: build_case(n, clean, obs, device) for n in names}
    for case in cases.values():
        case.step()  # warm-up
    samples: dict[str, list[dict]] = {n: [] for n in names}
    per_round: dict[str, list[float]] = {n: [] for n in names}  # median of each round, for paired ratios
    rng = random.Random(0)
    fast = [n for n in names if CASES[n]["kind"] != "deepinv"]
    slow = [n for n in names if CASES[n]["kind"] == "deepinv"]
    for r in range(rounds):
        # the fast configurations back to back (a few seconds), then the slow ones
        for group in (fast, slow):
            order = list(group)
            rng.shuffle(order)
            for n in order:
                rows = [cases[n].timed_step(device) for _ in range(1 if n in slow else FAST_REPEATS)]
                samples[n].extend(rows)
                per_round[n].append(statistics.median(row["step"] for row in rows))
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
    timings = {}
    for n, rows in samples.items():
        timings[n] = summary([row["step"] for row in rows])
        timings[n]["round_medians_s"] = per_round[n]
        timings[n]["phases_median_s"] = {
            phase: statistics.median(row[phase] for row in rows) for phase in ("forward", "backward", "optimizer")
        }
    profiles = {n: profile_step(cases[n], device) for n in PROFILED if n in cases}
    return timings, profiles


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def ratios_and_goals(t: dict, m: dict, rss: dict, deepinv: bool) -> tuple[dict, dict]:
    """Time (``t``), saved-tensor (``m``) and peak-RSS (``rss``) ratios, and the goals with their limits."""
    ratios = {
        "memory_retune_K10_T10_over_K10_T1": ratio(m["retune_K10_T10"], m["retune_K10_T1"]),
        "memory_retune_K1_T10_over_K1_T1": ratio(m["retune_K1_T10"], m["retune_K1_T1"]),
        "memory_unrolled_100_over_retune_K10_T10": ratio(m["unrolled_K10_T10"], m["retune_K10_T10"]),
        "memory_retune_K10_T100_over_K10_T1": ratio(m["retune_K10_T100"], m["retune_K10_T1"]),
        "memory_retune_K1_T100_over_K1_T1": ratio(m["retune_K1_T100"], m["retune_K1_T1"]),
        "rss_retune_K10_T10_over_K10_T1": ratio(rss["retune_K10_T10"], rss["retune_K10_T1"]),
        "rss_retune_K10_T100_over_K10_T1": ratio(rss["retune_K10_T100"], rss["retune_K10_T1"]),
        "rss_retune_K1_T100_over_K1_T1": ratio(rss["retune_K1_T100"], rss["retune_K1_T1"]),
        "rss_retune_K1_T10_over_K1_T1": ratio(rss["retune_K1_T10"], rss["retune_K1_T1"]),
        "rss_unrolled_100_over_retune_K10_T10": ratio(rss["unrolled_K10_T10"], rss["retune_K10_T10"]),
        "time_retune_K10_T10_over_unrolled_100": ratio(t["retune_K10_T10"], t["unrolled_K10_T10"]),
        "time_retune_K10_T10_over_K10_T1": ratio(t["retune_K10_T10"], t["retune_K10_T1"]),
        "time_nograd_solve_100_over_retune_K10_T10": ratio(t["nograd_solve_K10_T10"], t["retune_K10_T10"]),
    }
    goals = {
        "memory_T10_over_T1_K10": {"limit": 1.1, "value": ratios["memory_retune_K10_T10_over_K10_T1"]},
        "memory_T10_over_T1_K1": {"limit": 1.1, "value": ratios["memory_retune_K1_T10_over_K1_T1"]},
        "time_K10_T10_over_unrolled_100": {"limit": 1 / 3, "value": ratios["time_retune_K10_T10_over_unrolled_100"]},
    }
    if deepinv:
        for n in ("deepinv_pgd_unfold_100", "deepinv_pgd_unfold_100_no_objective"):
            ratios[f"time_retune_K10_T10_over_{n}"] = ratio(t["retune_K10_T10"], t[n])
            ratios[f"time_unrolled_100_over_{n}"] = ratio(t["unrolled_K10_T10"], t[n])
        ratios["memory_deepinv_pgd_unfold_100_over_retune_K10_T10"] = ratio(
            m["deepinv_pgd_unfold_100"], m["retune_K10_T10"]
        )
        goals["time_K10_T10_over_deepinv_unfold_100"] = {
            "limit": 1 / 8,
            "value": ratios["time_retune_K10_T10_over_deepinv_pgd_unfold_100"],
        }
    for g in goals.values():
        g["met"] = g["value"] is not None and g["value"] <= g["limit"]
    return ratios, goals


def paired_ratios(timings: dict, names: list[str]) -> dict:
    """Ratios a/b round by round (each round times both within seconds): robust to drifting load."""

    def paired(a: str, b: str) -> dict:
        r = [x / y for x, y in zip(timings[a]["round_medians_s"], timings[b]["round_medians_s"])]
        return {"median": statistics.median(r), "min": min(r), "max": max(r), "per_round": r}

    pairs = [("retune_K10_T10", "unrolled_K10_T10"), ("retune_K10_T10", "retune_K10_T1")]
    pairs += [("retune_K10_T10", n) for n in names if CASES[n]["kind"] == "deepinv"]
    return {f"time_{a}_over_{b}": paired(a, b) for a, b in pairs}


def report(result: dict, names: list[str], sizes: Sizes, device: torch.device) -> None:
    timings, memory = result["timings"], result["memory"]
    threads = result["machine"]["torch_threads"]
    print(f"training step, batch {sizes.batch}×3×{sizes.crop}², {threads} thread(s), {device}; medians:")
    for n in names:
        if n in timings:
            ph = timings[n]["phases_median_s"]
            timing = (
                f"{timings[n]['median_s'] * 1e3:9.1f} ms  "
                f"(fwd {ph['forward'] * 1e3:8.1f}, bwd {ph['backward'] * 1e3:8.1f})"
            )
        else:
            timing = f"{'(memory only)':42s}"
        rss = mib(memory[n]["rss_peak_delta_bytes"])
        print(f"  {n:38s} {timing}  saved {mib(memory[n]['saved_bytes']):8.1f} MiB  ΔRSS {rss:8.1f} MiB")
    for k, g in result["goals"].items():
        print(f"  goal {k}: {g['value']:.3f} ≤ {g['limit']:.3f} → {'met' if g['met'] else 'MISSED'}")
    for k, p in result["paired_time_ratios"].items():
        print(f"  paired {k}: median {p['median']:.3f} (rounds {p['min']:.3f}–{p['max']:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="timing rounds (≥5); default 6")
    parser.add_argument("--no-deepinv", action="store_true", help="skip the (slow) deepinv configurations")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parse_args(parser, "training.json", {"rounds": 1}, at_least={"rounds": 5})
    sizes = QUICK_SIZES if args.quick else Sizes()
    if args.worker:
        print(json.dumps(measure_memory(args.worker, sizes)))
        return

    limit_threads()
    device = pick_device()
    names = [n for n in CASES if not (args.no_deepinv and CASES[n]["kind"] == "deepinv")]
    timed = [n for n in names if CASES[n].get("timed", True)]
    info = machine_info(device)
    started = time.perf_counter()
    print("memory (one fresh process per configuration)…", file=sys.stderr)
    memory = {n: run_worker(n, args.quick) for n in names}
    print("timing…", file=sys.stderr)
    timings, profiles = time_cases(timed, args.rounds, device, sizes)

    mem_key = "cuda_peak_bytes" if device.type == "cuda" else "saved_bytes"
    t = {n: timings[n]["median_s"] for n in timed}
    m = {n: memory[n][mem_key] for n in names}
    rss = {n: memory[n]["rss_peak_delta_bytes"] for n in names}
    ratios, goals = ratios_and_goals(t, m, rss, not args.no_deepinv)
    result = {
        "benchmark": "training step",
        "machine": info,
        "setup": {
            "preset": PRESET,
            "batch": [sizes.batch, 3, sizes.crop, sizes.crop],
            "dtype": "float32",
            "optimizer": f"Adam lr={learning_rate()}",
            "rounds": args.rounds,
            "fast_repeats_per_round": FAST_REPEATS,
            "memory_metric_for_goals": mem_key,
            "deepinv": DEEPINV,
            "cases": CASES,
        },
        "timings": timings,
        "memory": memory,
        "ratios": ratios,
        "paired_time_ratios": paired_ratios(timings, names),
        "goals": goals,
        "profiles": profiles,
        "wall_s": time.perf_counter() - started,
        "load_average_at_end": list(os.getloadavg()),
    }
    path = write_json(args.json, result)
    report(result, names, sizes, device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
