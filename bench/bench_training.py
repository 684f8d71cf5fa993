"""Time and peak memory of one training step against (K, T), ReTune against full unrolling and deepinv.

One training step = ``solve`` (retune_cli.core.hypergrad) + MSE loss + backward + Adam step, on a batch
4×3×256×256 of random crops of the built-in samples, noised with the preset's physics (denoise-wavelet-b,
θ_B, τ* = 2/(μ+L)). Configurations:

* ReTune, (K, T) ∈ {(1, 1), (1, 10), (10, 1), (10, 10)}; (1, 100) and (10, 100) for memory only;
* full unrolled backpropagation over K·T = 100 steps (``gradient="unrolled"``, K=10, T=10);
* deepinv 0.5 ``PGD(unfold=True, max_iter=100)`` with its ``WaveletPrior`` (db4, 4 levels, ptwt "zero"
  boundary), learning (λ, stepsize): what a user would otherwise reach for. Timed as shipped (it also
  evaluates the objective at every iteration) and with that objective switched off;
* for reference, a graph-free solve of the same 100 steps (the floor of any 100-step method).

Memory, each configuration in a fresh subprocess (``--worker NAME``), on its first step:

* ``saved_bytes``: bytes of the tensors autograd saves for backward (``saved_tensors_hooks``; storages
  deduplicated by data pointer, counting those still held when backward starts);
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
import resource
import statistics
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass, field

import torch
from common import limit_threads, machine_info, mib, pick_device, summary, synchronize, write_json

PRESET = "denoise-wavelet-b"
BATCH, CROP, SEED = 4, 256, 0
LR = 0.05

CASES: dict[str, dict] = {
    "retune_K1_T1": {"kind": "retune", "K": 1, "T": 1, "gradient": "retune"},
    "retune_K1_T10": {"kind": "retune", "K": 1, "T": 10, "gradient": "retune"},
    "retune_K10_T1": {"kind": "retune", "K": 10, "T": 1, "gradient": "retune"},
    "retune_K10_T10": {"kind": "retune", "K": 10, "T": 10, "gradient": "retune"},
    "unrolled_K10_T10": {"kind": "retune", "K": 10, "T": 10, "gradient": "unrolled"},
    # memory only (is the peak flat in T beyond 10?), not timed
    "retune_K1_T100": {"kind": "retune", "K": 1, "T": 100, "gradient": "retune", "timed": False},
    "retune_K10_T100": {"kind": "retune", "K": 10, "T": 100, "gradient": "retune", "timed": False},
    "nograd_solve_K10_T10": {"kind": "nograd", "K": 10, "T": 10},
    "deepinv_pgd_unfold_100": {"kind": "deepinv", "iterations": 100, "objective": True},
    "deepinv_pgd_unfold_100_no_objective": {"kind": "deepinv", "iterations": 100, "objective": False},
}
FAST_REPEATS = 3  # per round, for the configurations that take well under a second
PROFILED = ("retune_K10_T10", "unrolled_K10_T10")


def make_batch(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, object]:
    """``(clean, observed, scheme physics)``: the first training batch of the preset at 256², noised."""
    from retune_cli.config import resolve
    from retune_cli.core.physics import simulate
    from retune_cli.data import ImageFolder, derive_seed, training_batch
    from retune_cli.models import build_scheme

    config = resolve(PRESET)
    physics = build_scheme(config).physics
    clean = training_batch(ImageFolder.open(None), 0, BATCH, CROP, SEED)
    with torch.no_grad():
        observed = simulate(physics, clean, derive_seed(SEED, "noise", 0))
    return clean.to(device), observed.to(device), physics.to(device)


@dataclass
class Case:
    """A configuration ready to step: ``forward()`` returns the loss (or the graph-free solution)."""

    name: str
    forward: object
    parameters: list[torch.Tensor]
    trains: bool = True
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.trains:
            self.optimizer = torch.optim.Adam(self.parameters, lr=LR)

    def step(self) -> None:
        loss = self.forward()
        if self.trains:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

    def timed_step(self, device: torch.device) -> dict[str, float]:
        """Seconds of the whole step and of its forward, backward and Adam phases."""
        synchronize(device)
        t0 = time.perf_counter()
        loss = self.forward()
        synchronize(device)
        t1 = time.perf_counter()
        if self.trains:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            synchronize(device)
            t2 = time.perf_counter()
            self.optimizer.step()
            synchronize(device)
        else:
            t2 = t1
        t3 = time.perf_counter()
        return {"step": t3 - t0, "forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2}


def build_case(name: str, clean: torch.Tensor, observed: torch.Tensor, physics, device: torch.device) -> Case:
    spec = CASES[name]
    if spec["kind"] in ("retune", "nograd"):
        from retune_cli.config import resolve
        from retune_cli.core.hypergrad import solve
        from retune_cli.models import build_scheme

        scheme = build_scheme(resolve(PRESET), device)
        K, T = spec["K"], spec["T"]
        if spec["kind"] == "nograd":

            @torch.no_grad()
            def forward():
                return solve(scheme, observed, K, T, "retune")

            return Case(name, forward, list(scheme.parameters()), trains=False)
        gradient = spec["gradient"]

        def forward():
            return torch.mean((solve(scheme, observed, K, T, gradient) - clean) ** 2)

        return Case(name, forward, list(scheme.parameters()))

    import deepinv as dinv

    prior = dinv.optim.prior.WaveletPrior(level=4, wv="db4", p=1, device=str(device))
    # threshold = 0.1 (WaveletPrior.prox default ths) · λ · stepsize = 0.05 = the preset's init_lambda
    model = dinv.optim.PGD(
        prior=prior,
        data_fidelity=dinv.optim.data_fidelity.L2(),
        stepsize=1.0,
        lambda_reg=0.5,
        max_iter=spec["iterations"],
        unfold=True,
        trainable_params=["lambda", "stepsize"],
    ).to(device)
    if not spec["objective"]:
        model.fixed_point.iterator.cost_fn = None  # skip F(x_k) = f + λg, evaluated by default every iteration

    def forward():
        return torch.mean((model(observed, physics) - clean) ** 2)

    return Case(name, forward, list(model.parameters()))


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure_memory(name: str) -> dict:
    """Worker: the first step of ``name`` in this fresh process, with its memory figures."""
    limit_threads()
    device = pick_device()
    clean, observed, physics = make_batch(device)
    case = build_case(name, clean, observed, physics, device)
    packed: dict[int, int] = {}
    held: list[tuple[weakref.ref, int, int]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        packed[storage.data_ptr()] = storage.nbytes()
        held.append((weakref.ref(t), storage.data_ptr(), storage.nbytes()))
        return t

    synchronize(device)
    rss_before = maxrss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = case.forward()
    live = {ptr: nbytes for ref, ptr, nbytes in held if ref() is not None}
    if case.trains:
        case.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        case.optimizer.step()
    synchronize(device)
    out = {
        "saved_bytes": sum(live.values()),
        "saved_storages": len(live),
        "saved_bytes_all_packed": sum(packed.values()),
        "rss_before_bytes": rss_before,
        "rss_peak_delta_bytes": maxrss_bytes() - rss_before,
    }
    if device.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device) - cuda_before
    return out


def run_worker(name: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", name], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker {name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def profile_step(case: Case, device: torch.device, top: int = 12) -> dict:
    """Self time per op over one step (torch.profiler), largest first."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        case.step()
        synchronize(device)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    return {
        "total_self_cpu_ms": total / 1e3,
        "top_ops": [
            {
                "op": e.key,
                "calls": e.count,
                "self_cpu_ms": e.self_cpu_time_total / 1e3,
                "share": e.self_cpu_time_total / total if total else None,
            }
            for e in rows[:top]
        ],
    }


def time_cases(names: list[str], rounds: int, device: torch.device) -> tuple[dict, dict]:
    clean, observed, physics = make_batch(device)
    cases = {n: build_case(n, clean, observed, physics, device) for n in names}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="timing rounds (≥5); default 6")
    parser.add_argument("--no-deepinv", action="store_true", help="skip the (slow) deepinv configurations")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure_memory(args.worker)))
        return
    if args.rounds < 5:
        parser.error("--rounds must be at least 5")

    limit_threads()
    device = pick_device()
    names = [n for n in CASES if not (args.no_deepinv and CASES[n]["kind"] == "deepinv")]
    timed = [n for n in names if CASES[n].get("timed", True)]
    info = machine_info(device)
    started = time.perf_counter()

    print("memory (one fresh process per configuration)…", file=sys.stderr)
    memory = {n: run_worker(n) for n in names}
    print("timing…", file=sys.stderr)
    timings, profiles = time_cases(timed, args.rounds, device)

    mem_key = "cuda_peak_bytes" if device.type == "cuda" else "saved_bytes"
    t = {n: timings[n]["median_s"] for n in timed}
    m = {n: memory[n][mem_key] for n in names}
    rss = {n: memory[n]["rss_peak_delta_bytes"] for n in names}

    def ratio(a: float, b: float) -> float | None:
        return a / b if b else None

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
    if not args.no_deepinv:
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

    def paired(a: str, b: str) -> dict:
        """Ratio a/b round by round (each round times both within seconds): robust to drifting load."""
        r = [x / y for x, y in zip(timings[a]["round_medians_s"], timings[b]["round_medians_s"])]
        return {"median": statistics.median(r), "min": min(r), "max": max(r), "per_round": r}

    pairs = [("retune_K10_T10", "unrolled_K10_T10"), ("retune_K10_T10", "retune_K10_T1")]
    pairs += [("retune_K10_T10", n) for n in names if CASES[n]["kind"] == "deepinv"]
    paired_ratios = {f"time_{a}_over_{b}": paired(a, b) for a, b in pairs}

    result = {
        "benchmark": "training step",
        "machine": info,
        "setup": {
            "preset": PRESET,
            "batch": [BATCH, 3, CROP, CROP],
            "dtype": "float32",
            "optimizer": f"Adam lr={LR}",
            "rounds": args.rounds,
            "fast_repeats_per_round": FAST_REPEATS,
            "memory_metric_for_goals": mem_key,
            "deepinv": "PGD(WaveletPrior(level=4, wv='db4', p=1, mode='zero'), L2(), stepsize=1, lambda=0.5, "
            "max_iter=100, unfold=True, trainable_params=['lambda', 'stepsize'])",
            "cases": CASES,
        },
        "timings": timings,
        "memory": memory,
        "ratios": ratios,
        "paired_time_ratios": paired_ratios,
        "goals": goals,
        "profiles": profiles,
        "wall_s": time.perf_counter() - started,
        "load_average_at_end": list(os.getloadavg()),
    }
    path = write_json("training.json", result)

    print(f"training step, batch {BATCH}×3×{CROP}², {info['torch_threads']} thread(s), {device}; medians:")
    for n in names:
        if n in timings:
            ph = timings[n]["phases_median_s"]
            timing = f"{t[n] * 1e3:9.1f} ms  (fwd {ph['forward'] * 1e3:8.1f}, bwd {ph['backward'] * 1e3:8.1f})"
        else:
            timing = f"{'(memory only)':42s}"
        print(f"  {n:38s} {timing}  saved {mib(memory[n]['saved_bytes']):8.1f} MiB  ΔRSS {mib(rss[n]):8.1f} MiB")
    for k, g in goals.items():
        print(f"  goal {k}: {g['value']:.3f} ≤ {g['limit']:.3f} → {'met' if g['met'] else 'MISSED'}")
    for k, p in paired_ratios.items():
        print(f"  paired {k}: median {p['median']:.3f} (rounds {p['min']:.3f}–{p['max']:.3f})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
