"""Helpers shared by the benchmarks: machine description, statistics, JSON output.

The benchmarks are scripts (``python bench/bench_training.py``); Python puts ``bench/`` on the path,
so they import this module as ``common``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO_ROOT = BENCH_DIR.parent
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


def write_json(name: str, data: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def mib(n_bytes: float) -> float:
    return n_bytes / 2**20
