"""Helpers shared by the benchmarks: machine description, statistics, command line, JSON output.

The benchmarks are scripts (``python bench/bench_training.py``); Python puts ``bench/`` on the path,
so they import this module as ``common``. Every script takes ``--json PATH`` (default
``bench/results/<name>.json``) and ``--quick``: a smoke run at tiny sizes whose output goes to
``/tmp/retune-bench/<name>.json`` (never over the measured results) unless ``--json`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent
QUICK_DIR = Path(tempfile.gettempdir()) / "retune-bench"  # where --quick writes
THREADS = 1  # another process uses the second core of the 2-core development machine


def limit_threads() -> None:
    """One intra-op and one inter-op thread, so timings do not fight the other process for cores."""
    torch.set_num_threads(THREADS)
    try:
        torch.set_num_interop_threads(THREADS)
    except RuntimeError:  # already set, or parallel work already started
        pass


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def code_state() -> dict:
    """The commit the package was measured at, and its files with uncommitted changes."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    dirty = git("status", "--porcelain", "--", "retune_cli")
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted": dirty.splitlines() if dirty else []}


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on; the load average shows the concurrent process."""
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": {p: _version(p) for p in ("retune-cli", "deepinv", "ptwt", "PyWavelets", "numpy")},
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code": code_state(),
    }
    return info


def summary(samples: list[float]) -> dict:
    """Median (the figure used in ratios), min, max and all samples, in seconds."""
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "n": len(samples),
        "samples_s": samples,
    }


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def parse_args(
    parser: argparse.ArgumentParser, name: str, quick: dict | None = None, at_least: dict[str, int] | None = None
) -> argparse.Namespace:
    """Parse with ``--json`` and ``--quick`` added; ``--quick`` makes ``quick`` the defaults (flags given
    explicitly still win), lifts the ``at_least`` minimums (flag → least value) and puts the output under
    :data:`QUICK_DIR`. ``args.json`` is then the output path."""
    parser.add_argument("--json", type=Path, default=None, help=f"output file (default bench/results/{name})")
    parser.add_argument("--quick", action="store_true", help=f"smoke run at tiny sizes, output {QUICK_DIR / name}")
    args = parser.parse_args()
    if args.quick and quick:
        parser.set_defaults(**quick)
        args = parser.parse_args()
    for flag, least in (at_least or {}).items():
        if getattr(args, flag) < least and not args.quick:
            parser.error(f"--{flag} must be at least {least}")
    if args.json is None:
        args.json = (QUICK_DIR if args.quick else RESULTS_DIR) / name
    return args


def flags(args: argparse.Namespace) -> dict:
    """The script's own flags (what the setup records), without ``--json`` and ``--quick``."""
    return {k: v for k, v in vars(args).items() if k not in ("json", "quick")}


def write_json(path: Path, data: dict, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, **options) + "\n")
    return path


def interleaved(methods: dict[str, Callable[[], float]], runs: int) -> dict[str, list[float]]:
    """``runs`` rounds, each calling every method once (it returns its own seconds) in a shuffled order,
    so that a drift of the machine hits them alike."""
    samples: dict[str, list[float]] = {name: [] for name in methods}
    rng = random.Random(0)
    for _ in range(runs):
        order = list(methods)
        rng.shuffle(order)
        for name in order:
            samples[name].append(methods[name]())
    return samples


def op_profile(fn: Callable[[], object], device: torch.device, calls: int = 1) -> tuple[list, float]:
    """torch.profiler over ``calls`` calls of ``fn``: its events by self CPU time (largest first) and
    their total self CPU time in µs."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        synchronize(device)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return rows, sum(e.self_cpu_time_total for e in rows)


def mib(n_bytes: float) -> float:
    return n_bytes / 2**20
