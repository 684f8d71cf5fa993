"""Operations dispatched per elementary step, values read back per training step, and CPU step time: this tree
against commit ``BEFORE`` (issue 22, parts 1 and 3), with the numbers of both compared in float64.

Each measurement runs in a worker process that imports ``retune_cli`` from one tree: this one, or ``BEFORE``
exported with ``git archive`` into a temporary folder. The counters are :mod:`retune_cli.op_counts` of this
tree (loaded by path, so the same counter measures both).

* ops: one elementary step ``scheme.step(u, ctx)`` of the wavelet presets (inpainting, deblurring, denoising θ_BC)
  on 2×3×64² (the issue's measurement) and 4×3×256², graph-free and recorded: aten operations dispatched (compute
  and views apart: a view launches no kernel) and torch.profiler's aten events (nested calls included); this
  tree with the CPU's policy and with a GPU's (``core.launch.launch_bound`` forced: gather periodization, dense
  synthesis, no residual read in fixed-T restarts);
* reads: values read back by the host in one ReTune training step (``train.train_step``), T = 1, 10, 30
  (crop 32, batch 2), both policies (on the CPU a read waits for nothing: restarts stop at an exact fixed
  point); Adam's step counters are excluded (on CUDA they stay on the host);
* numerics (float64, crop 32, batch 2): the solution of (K, T) = (5, 4) and the gradient of each mode (retune,
  unrolled, jfb, deq), max |this − before|;
* time: one ReTune (10, 10) training step, 4×3×256², one torch thread, and with the default count: each round
  runs a worker per tree in a shuffled order (3 timed steps after a warm-up each, median); ratios before/after
  of the medians and round by round.

    python bench/bench_step_ops.py [--rounds 3] [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

BEFORE = "9b8fa8a"  # the last commit before issue 22's flat coefficients, gather periodization and batched reads
PRESETS = {"inpaint": "inpaint-wavelet", "deblur": "deblur-wavelet", "denoise": "denoise-wavelet-bc"}
MODES = ("retune", "unrolled", "jfb", "deq")
HERE = Path(__file__).resolve()


def _counters():
    """This tree's :mod:`retune_cli.op_counts`, loaded by path whatever tree ``retune_cli`` comes from."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("op_counts", HERE.parents[1] / "retune_cli" / "op_counts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setup(preset: str, shape: tuple[int, ...], double: bool = False, overrides: dict | None = None,
          device: str = "cpu"):
    """``(config, train state, clean batch, observation)`` of ``preset`` on ``shape`` crops of the samples."""
    import torch

    from retune_cli.config import resolve
    from retune_cli.data import ImageFolder, training_batch
    from retune_cli.train import new_state

    settings = resolve(preset, {"train.crop": shape[-1], "train.batch_size": shape[0], **(overrides or {})})
    state = new_state(settings, device, None)
    clean = training_batch(ImageFolder.open(None), 0, shape[0], shape[-1], 0).to(device)
    if double:
        state.scheme.double()
        clean = clean.double()
    with torch.no_grad():
        obs = state.scheme.physics.simulate(clean, 1)
    return settings, state, clean, obs


def _step_counts(scheme, obs, recorded: bool, counters) -> dict:
    """Counts of one elementary step after a first one, graph-free or recorded."""
    import torch
    from torch.profiler import profile

    with torch.set_grad_enabled(recorded):
        ctx = scheme.prepare(obs)
        u = scheme.step(scheme.init(ctx), ctx)
        compute, views = counters.count_ops(lambda: scheme.step(u, ctx))
        with profile() as prof:
            scheme.step(u, ctx)
    events = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    return {"compute": sum(compute.values()), "views": sum(views.values()),
            "dispatched": sum(compute.values()) + sum(views.values()), "profiler_aten_events": events}


def _policies() -> dict:
    """Name → the ``launch_bound`` predicate to run with: the tree's own (the CPU's policy) and, where the tree has
    :mod:`retune_cli.core.launch`, a launch-bound device's (a GPU's paths and reads, forced on the CPU)."""
    try:
        from retune_cli.core import launch
    except ImportError:
        return {"cpu_policy": None}
    return {"cpu_policy": launch.launch_bound, "gpu_policy": lambda t: True}


def _with_policy(policy, fn):
    """``fn()`` with ``launch.launch_bound`` set to ``policy`` (None: the tree has no policy)."""
    if policy is None:
        return fn()
    from retune_cli.core import launch

    own, launch.launch_bound = launch.launch_bound, policy
    try:
        return fn()
    finally:
        launch.launch_bound = own


def worker_ops(shapes: list[list[int]]) -> dict:
    """Counts per problem, shape, policy and recording."""
    counters, out = _counters(), {}
    for name, preset in PRESETS.items():
        for shape in shapes:
            _, state, _, obs = setup(preset, tuple(shape))
            for policy, predicate in _policies().items():
                for recorded in (False, True):
                    key = f"{name}/{'x'.join(map(str, shape))}/{policy}/{'recorded' if recorded else 'graph_free'}"
                    out[key] = _with_policy(predicate, partial(_step_counts, state.scheme, obs, recorded, counters))
    return out


def worker_reads() -> dict:
    from retune_cli.models import solve_options
    from retune_cli.train import train_step

    counters, out = _counters(), {}
    for name, preset in PRESETS.items():
        settings, state, clean, obs = setup(preset, (2, 3, 32, 32))
        for policy, predicate in _policies().items():
            for T in (1, 10, 30):
                options = solve_options(settings.train, K=10, T=T)
                train_step(state, clean, obs, options, "retune")

                def step():
                    with counters.host_reads() as reads:
                        train_step(state, clean, obs, options, "retune")  # noqa: B023 (called at once)
                    return reads

                reads = _with_policy(predicate, step)
                out[f"{name}/{policy}/T{T}"] = {"reads": len(reads), "where": sorted(set(reads))}
    return out


def worker_numerics(path: str) -> dict:
    import torch

    from retune_cli.core.hypergrad import solve
    from retune_cli.models import solve_options

    tensors = {}
    for name, preset in PRESETS.items():
        settings, state, clean, obs = setup(preset, (2, 3, 32, 32), double=True, overrides={"train.tol": 1e-9})
        for mode in MODES:
            state.optimizer.zero_grad(set_to_none=True)
            solution = solve(state.scheme, obs, solve_options(settings.train, K=5, T=4), mode)
            torch.mean((solution.x - clean) ** 2).backward()
            tensors[f"{name}/{mode}/x"] = solution.x.detach()
            for key, p in state.params.items():
                tensors[f"{name}/{mode}/grad/{key}"] = p.grad.detach().clone()
    torch.save(tensors, path)
    return {"saved": len(tensors)}


def worker_time(threads: int, steps: int) -> dict:
    import time

    import torch

    from retune_cli.models import solve_options
    from retune_cli.train import train_step

    torch.set_num_threads(threads)
    out = {}
    for name, preset in PRESETS.items():
        settings, state, clean, obs = setup(preset, (4, 3, 256, 256))
        options = solve_options(settings.train, K=10, T=10)
        train_step(state, clean, obs, options, "retune")  # warm-up
        samples = []
        for _ in range(steps):
            start = time.perf_counter()
            train_step(state, clean, obs, options, "retune")
            samples.append(time.perf_counter() - start)
        out[name] = statistics.median(samples)
    return out


def run_worker(root: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, str(HERE), "--worker", *args], capture_output=True, text=True, env=env,
                          cwd=root, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} in {root} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def export_before(folder: Path) -> Path:
    """``BEFORE``'s tree under ``folder`` (``git archive``)."""
    archive = subprocess.run(["git", "archive", BEFORE], cwd=HERE.parents[1], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def compare_numerics(roots: dict[str, Path], folder: Path) -> dict:
    """Max |after − before| of every saved solution and gradient (float64)."""
    import torch

    saved = {}
    for tree, root in roots.items():
        run_worker(root, "numerics", str(folder / f"{tree}.pt"))
        saved[tree] = torch.load(folder / f"{tree}.pt")
    out = {}
    for key, after in saved["after"].items():
        before = saved["before"][key]
        out[key] = {"max_abs_diff": float((after - before).abs().max()), "max_abs": float(before.abs().max())}
    return out


def timings(roots: dict[str, Path], rounds: int, steps: int) -> dict:
    """Rounds of one worker per tree, shuffled; per thread setting the medians and the paired ratios."""
    rng, out = random.Random(0), {}
    for threads in (1, os.cpu_count() or 1):
        samples: dict[str, list[dict]] = {tree: [] for tree in roots}
        for _ in range(rounds):
            for tree in rng.sample(list(roots), len(roots)):
                samples[tree].append(run_worker(roots[tree], "time", str(threads), str(steps)))
        table = {}
        for problem in PRESETS:
            before = [r[problem] for r in samples["before"]]
            after = [r[problem] for r in samples["after"]]
            table[problem] = {"before_median_s": statistics.median(before), "after_median_s": statistics.median(after),
                              "before_over_after_of_medians": statistics.median(before) / statistics.median(after),
                              "paired_ratios": [b / a for b, a in zip(before, after)]}
        out[f"threads_{threads}"] = table
    return out


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        kind, args = sys.argv[2], sys.argv[3:]
        result = {"ops": lambda: worker_ops(json.loads(args[0])), "reads": worker_reads,
                  "numerics": lambda: worker_numerics(args[0]),
                  "time": lambda: worker_time(int(args[0]), int(args[1]))}[kind]()
        print(json.dumps(result))
        return
    import torch
    from common import machine_info, parse_args, write_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per worker (median)")
    args = parse_args(parser, "step_ops.json", quick={"rounds": 1, "steps": 1})
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"before": export_before(Path(tmp)), "after": HERE.parents[1]}
        shapes = json.dumps([[2, 3, 64, 64]] + ([] if args.quick else [[4, 3, 256, 256]]))
        data = {"benchmark": "ops per step, host reads per training step, CPU step time (issue 22)",
                "machine": machine_info(torch.device("cpu")), "before_commit": BEFORE,
                "ops": {tree: run_worker(root, "ops", shapes) for tree, root in roots.items()},
                "reads": {tree: run_worker(root, "reads") for tree, root in roots.items()},
                "numerics_float64": compare_numerics(roots, Path(tmp)),
                "time_retune_K10_T10_4x3x256": timings(roots, args.rounds, args.steps)}
    print(write_json(args.json, data))


if __name__ == "__main__":
    main()
