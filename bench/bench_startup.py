"""Start-up wall time of the CLI and of the heavy imports it must avoid on ``--help``.

Each command runs in a fresh subprocess: ``retune --help`` (the ``.venv/bin/retune`` console script),
``retune show`` of a shipped checkpoint (``retune_cli/ready/denoise.safetensors``),
``python -c "import torch"``, ``python -c "import deepinv"``, and ``python -c pass`` as the interpreter's
floor. One warm-up run each (file cache), then ``--runs`` (≥ 5) rounds, the commands in a shuffled order
each round; medians. ``python -X importtime`` of ``retune --help`` records which top-level modules it
loads and the slowest of them.

    python bench/bench_startup.py [--runs 5] [--json PATH] [--quick]

``--quick``: a smoke run (1 run, output in /tmp/retune-bench/startup.json).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import REPO_ROOT, interleaved, limit_threads, machine_info, parse_args, pick_device, summary, write_json


def console_script() -> str:
    """``retune`` next to the running interpreter (the virtualenv's), else on PATH."""
    here = Path(sys.executable).parent / "retune"
    if here.is_file():
        return str(here)
    found = shutil.which("retune")
    if found is None:
        sys.exit("no `retune` console script: install the package (pip install -e .) first")
    return found


def run_once(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, cwd=REPO_ROOT, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return elapsed


def import_profile(script: str) -> dict:
    """Whether ``retune --help`` loads torch or deepinv, and its slowest top-level imports (cumulative)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", script, "--help"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    top: dict[str, int] = {}
    loaded: set[str] = set()
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, raw = line[len("import time:") :].split("|")
        name = raw.strip()
        loaded.add(name.split(".")[0])
        if len(raw) - len(raw.lstrip()) == 1:  # nested imports are indented further
            top[name] = max(top.get(name, 0), int(cumulative))
    slowest = sorted(top.items(), key=lambda kv: kv[1], reverse=True)[:10]
    return {
        "imports_torch": "torch" in loaded,
        "imports_deepinv": "deepinv" in loaded,
        "slowest_top_level_imports_ms": {name: us / 1e3 for name, us in slowest},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per command (≥5); default 5")
    args = parse_args(parser, "startup.json", {"runs": 1}, at_least={"runs": 5})
    limit_threads()
    started = time.perf_counter()
    script = console_script()
    python = sys.executable
    commands = {
        "retune --help": [script, "--help"],
        "retune show CKPT": [script, "show", str(REPO_ROOT / "retune_cli" / "ready" / "denoise.safetensors")],
        'python -c "import torch"': [python, "-c", "import torch"],
        'python -c "import deepinv"': [python, "-c", "import deepinv"],
        'python -c "pass"': [python, "-c", "pass"],
    }
    for cmd in commands.values():  # warm-up: file cache, .pyc files
        run_once(cmd)
    samples = interleaved({name: (lambda cmd=cmd: run_once(cmd)) for name, cmd in commands.items()}, args.runs)
    timings = {name: summary(s) for name, s in samples.items()}
    med = {name: t["median_s"] for name, t in timings.items()}
    ratios = {
        "retune_help_over_import_torch": med["retune --help"] / med['python -c "import torch"'],
        "retune_help_over_import_deepinv": med["retune --help"] / med['python -c "import deepinv"'],
        "retune_show_over_import_torch": med["retune show CKPT"] / med['python -c "import torch"'],
    }
    info = machine_info(pick_device())
    result = {
        "benchmark": "start-up",
        "machine": info,
        "setup": {
            "runs": args.runs,
            "commands": {name: " ".join(cmd) for name, cmd in commands.items()},
            "subprocess_env_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "timings": timings,
        "ratios": ratios,
        "retune_help_imports": import_profile(script),
        "wall_s": time.perf_counter() - started,
    }
    path = write_json(args.json, result)
    print(f"start-up, median of {args.runs}:")
    for name in commands:
        print(f"  {name:30s} {med[name] * 1e3:8.1f} ms")
    for name, r in ratios.items():
        print(f"  {name:34s} {r:6.2f}")
    imports = result["retune_help_imports"]
    print(f"  retune --help imports torch: {imports['imports_torch']}, deepinv: {imports['imports_deepinv']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
