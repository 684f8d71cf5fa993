"""Time and memory of one training step of the wavelet schemes, denoising, inpainting and deblurring,
before and after issue 12's faster transform and step (part 1), measured in one run.

One step = ``retune_cli.train.train_step`` (solve with the gradient mode, MSE, backward, Adam) on one batch
4×3×256² of the built-in samples (``training_batch``, seed 0) observed with the preset's physics
(``physics.simulate``), at the preset's initial θ:

* problems: ``denoise-wavelet-b`` (A = I), ``inpaint-wavelet`` (90 % of the pixels missing),
  ``deblur-wavelet`` (channel-wise uniform blur of width 25, FFT);
* configurations: ReTune (K, T) = (10, 10) and (10, 1), full unrolling over (10, 10), and ReTune (10, 10) with
  Anderson-accelerated restarts (``train.accelerate: anderson``: the cost of extrapolating after every step);
* implementations: ``after`` (this tree) and ``before``: ``WaveletFB``, the wavelet transform and the group
  soft-threshold of commit ``BEFORE``, read with ``git show`` into temporary modules
  (``retune_cli.core._before_*``) and swapped into the scheme (its class and its transform).

Timing: each case warmed up, then ``--rounds`` rounds in which every case takes one step, in a shuffled order
(``common.interleaved``), wall (``perf_counter``) and CPU (``process_time``) seconds; with one torch thread,
then the (10, 10) ReTune cases with torch's default count, 3 rounds. Ratios before/after: of the medians,
and round by round (paired). Memory, each case in a fresh process on its first step: bytes of the storages
autograd saved and the peak-RSS growth. ``--quick`` (crop 32, one round): one thread only, memory of the
(10, 10) ReTune cases only. Profiles (one thread, one step, top ops by self CPU): inpainting and deblurring (10, 10),
before and after. Goals (issue 12; absolute times depend on the machine and its load): (10, 10) with one
thread, inpainting ≤ 1.3 s, deblurring ≤ 1.8 s, denoising ≤ 0.2 s; before/after ≥ 2 for inpainting and
deblurring. Also measured: ``AᵀA`` of the blur as ``Physics.normal`` computes it (deepinv's
``BlurFFT.A_adjoint_A``, one FFT pair) against ``A_adjoint(A(x))`` (two FFT pairs).

    python bench/bench_steps.py [--rounds 5] [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from common import REPO_ROOT, interleaved, limit_threads, machine_info, op_profile, parse_args, summary, write_json

BEFORE = "daa25480bbf9c367e48957fb117ccedb6991a95d"  # the last commit before part 1 touched these files
PROBLEMS = {"denoise": "denoise-wavelet-b", "inpaint": "inpaint-wavelet", "deblur": "deblur-wavelet"}
CONFIGS = {"retune_K10_T10": (10, 10, "retune", "none"), "retune_K10_T1": (10, 1, "retune", "none"),
           "unrolled_K10_T10": (10, 10, "unrolled", "none"),
           "retune_K10_T10_anderson": (10, 10, "retune", "anderson")}
GOALS_S = {"denoise": 0.2, "inpaint": 1.3, "deblur": 1.8}  # (10, 10), one thread
ISSUE_REFERENCE_S = {"denoise": 0.19, "inpaint": 2.60, "deblur": 3.55}  # issue 12's measurement, one thread
DEFAULT_THREADS = torch.get_num_threads()


def load_before() -> dict:
    """The modules ``wavelets``, ``priors`` and ``schemes`` of :data:`BEFORE`, importing one another."""
    modules = {}
    for name in ("wavelets", "priors", "schemes"):
        source = subprocess.run(["git", "show", f"{BEFORE}:retune_cli/core/{name}.py"], cwd=REPO_ROOT,
                                capture_output=True, text=True, check=True).stdout
        for dependency in ("wavelets", "priors"):
            source = source.replace(f"from .{dependency} import", f"from ._before_{dependency} import")
        full = f"retune_cli.core._before_{name}"
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader(full, loader=None))
        module.__package__ = "retune_cli.core"
        sys.modules[full] = module
        exec(compile(source, f"{BEFORE[:7]}:{name}.py", "exec"), module.__dict__)
        modules[name] = module
    return modules


def build(problem: str, config: str, impl: str, crop: int, before: dict | None):
    """``step()``: one training step of the case, on its own scheme and Adam state."""
    from retune_cli.config import resolve
    from retune_cli.data import ImageFolder, training_batch
    from retune_cli.models import solve_options
    from retune_cli.train import new_state, train_step

    K, T, mode, accelerate = CONFIGS[config]
    settings = resolve(PROBLEMS[problem], {"train.crop": crop, "train.batch_size": 4})
    state = new_state(settings, "cpu", None)
    if impl == "before":
        scheme = state.scheme
        scheme.__class__ = before["schemes"].WaveletFB
        scheme.transform = before["wavelets"].WaveletTransform(scheme.transform.wavelet, scheme.transform.levels)
    clean = training_batch(ImageFolder.open(None), 0, 4, crop, 0)
    with torch.no_grad():
        obs = state.scheme.physics.simulate(clean, 1)
    options = solve_options(settings.train, K=K, T=T, accelerate=accelerate)
    return lambda: train_step(state, clean, obs, options, mode)


def time_all(cases: dict, rounds: int) -> dict:
    """Interleaved rounds; per case the wall and the CPU seconds of its steps."""
    for step in cases.values():
        step()  # warm-up
    cpu: dict[str, list[float]] = {name: [] for name in cases}

    def clocked(name: str) -> float:
        start = time.process_time()
        wall = timed(cases[name])
        cpu[name].append(time.process_time() - start)
        return wall

    wall = interleaved({name: functools.partial(clocked, name) for name in cases}, rounds)
    return {name: {"wall": summary(wall[name]), "cpu": summary(cpu[name])} for name in cases}


def paired(timings: dict, a: str, b: str, clock: str) -> dict:
    """``a / b`` of medians and round by round (same round, so the same load)."""
    pairs = [x / y for x, y in zip(timings[a][clock]["samples_s"], timings[b][clock]["samples_s"])]
    return {"of_medians": timings[a][clock]["median_s"] / timings[b][clock]["median_s"],
            "paired_median": statistics.median(pairs), "paired_min": min(pairs), "paired_max": max(pairs)}


def run_worker(key: str, quick: bool) -> dict:
    command = [sys.executable, __file__, "--worker", key] + (["--quick"] if quick else [])
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker {key} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_worker(key: str, crop: int) -> dict:
    """In this fresh process: the first step of ``problem/config/impl``, its saved bytes and RSS growth."""
    from retune_cli.core.memory import saved_tensor_bytes

    limit_threads()
    problem, config, impl = key.split("/")
    step = build(problem, config, impl, crop, load_before() if impl == "before" else None)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with saved_tensor_bytes() as saved:
        step()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    return {"saved_bytes": saved[0], "rss_peak_delta_bytes": grown * 1024}


def profiles(cases: dict, names: list[str], top: int = 12) -> dict:
    """torch.profiler over one step of each case: the ``top`` ops by self CPU time."""
    out = {}
    for name in names:
        rows, total = op_profile(cases[name], torch.device("cpu"))
        out[name] = {"total_self_cpu_ms": total / 1e3, "top_ops": [
            {"op": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
             "share": e.self_cpu_time_total / total if total else None} for e in rows[:top]]}
    return out


def blur_normal(crop: int, runs: int) -> dict:
    """``AᵀA x`` of the deblurring physics as one FFT pair (``Physics.normal``) against ``A_adjoint(A(x))``."""
    from retune_cli.config import resolve
    from retune_cli.models import physics_from

    physics = physics_from(resolve(PROBLEMS["deblur"]))
    x = torch.randn(4, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    op = physics._op(x, {})
    samples = interleaved({"A_adjoint(A(x))": lambda: timed(lambda: physics.A_adjoint(physics.A(x))),
                           "BlurFFT.A_adjoint_A(x)": lambda: timed(lambda: op.A_adjoint_A(x))}, runs)
    difference = float((physics.A_adjoint(physics.A(x)) - op.A_adjoint_A(x)).abs().max())
    return {"timings": {k: summary(v) for k, v in samples.items()}, "max_abs_difference": difference}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def goals(one_thread: dict, before: bool) -> dict:
    """The issue's limits on the one-thread (10, 10) medians and, with ``before``, on the speed-up (round by
    round, wall; the CPU-time ratio, less sensitive to other processes, is given beside it)."""
    out = {}
    for problem, limit in GOALS_S.items():
        value = one_thread[f"{problem}/retune_K10_T10/after"]["wall"]["median_s"]
        out[f"{problem}_K10_T10_seconds"] = {"value": value, "limit": limit, "met": value <= limit}
        if before and problem != "denoise":
            a, b = f"{problem}/retune_K10_T10/before", f"{problem}/retune_K10_T10/after"
            speedup = paired(one_thread, a, b, "wall")["paired_median"]
            out[f"{problem}_K10_T10_speedup"] = {"value": speedup, "limit": 2.0, "met": speedup >= 2.0,
                                                 "cpu_time_ratio": paired(one_thread, a, b, "cpu")["paired_median"]}
    return out


def ratios(timings: dict, keys: list[str]) -> dict:
    """Before/after per problem and configuration where both were timed, and Anderson/plain restarts
    (this tree), wall and CPU."""
    out = {}
    for case in sorted({k.rsplit("/", 1)[0] for k in keys}):
        if f"{case}/before" in keys:
            out[f"{case}: before/after"] = {c: paired(timings, f"{case}/before", f"{case}/after", c)
                                            for c in ("wall", "cpu")}
        if case.endswith("_anderson"):
            plain = case.removesuffix("_anderson")
            out[f"{case}: anderson/plain"] = {c: paired(timings, f"{case}/after", f"{plain}/after", c)
                                              for c in ("wall", "cpu")}
    return out


def report(result: dict) -> None:
    for threads, timings in result["timings"].items():
        print(f"{threads} thread(s): median wall (cpu) seconds per step")
        for key, t in timings.items():
            print(f"  {key:38s} {t['wall']['median_s']:7.3f} ({t['cpu']['median_s']:7.3f})")
    for threads, rs in result["ratios"].items():
        for key, r in rs.items():
            spans = [f"{clock} {x['paired_median']:.2f}× ({x['paired_min']:.2f}–{x['paired_max']:.2f})"
                     for clock, x in r.items()]
            print(f"  {threads} thread(s) {key}: {', '.join(spans)}")
    for key, g in result["goals"].items():
        print(f"  goal {key}: {g['value']:.3f} vs {g['limit']} → {'met' if g['met'] else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (≥3); default 5")
    parser.add_argument("--crop", type=int, default=256, help="crop side (batch 4×3×crop²); default 256")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parse_args(parser, "steps.json", {"rounds": 1, "crop": 32}, at_least={"rounds": 3})
    if args.worker:
        print(json.dumps(memory_worker(args.worker, args.crop)))
        return
    try:
        before = load_before()
    except (OSError, subprocess.CalledProcessError) as e:  # no git or no history: the after figures only
        print(f"no 'before' implementation ({e}); timing this tree only", file=sys.stderr)
        before = None
    impls = ["after", "before"] if before else ["after"]
    keys = [f"{p}/{c}/{i}" for p in PROBLEMS for c in CONFIGS for i in impls
            if i == "after" or CONFIGS[c][3] == "none"]  # Anderson: this tree only
    started, result = time.perf_counter(), {"benchmark": "training steps, wavelet schemes (issue 12 part 1)"}
    limit_threads()
    result["machine"] = machine_info(torch.device("cpu"))
    result["setup"] = {"batch": [4, 3, args.crop, args.crop], "dtype": "float32", "rounds": args.rounds,
                       "before_commit": BEFORE if before else None, "problems": PROBLEMS, "configs": CONFIGS,
                       "default_threads": DEFAULT_THREADS, "issue_reference_s": ISSUE_REFERENCE_S}
    measured = [k for k in keys if "/retune_K10_T10/" in k] if args.quick else keys
    result["memory"] = {key: run_worker(key, args.quick) for key in measured}
    result["timings"], result["ratios"] = {}, {}
    for threads in dict.fromkeys((1,) if args.quick else (1, DEFAULT_THREADS)):
        torch.set_num_threads(threads)
        timed_keys = keys if threads == 1 else [k for k in keys if "/retune_K10_T10/" in k]
        cases = {key: build(*key.split("/"), args.crop, before) for key in timed_keys}
        print(f"timing with {threads} thread(s)…", file=sys.stderr)
        result["timings"][threads] = time_all(cases, args.rounds if threads == 1 else 3)
        result["ratios"][threads] = ratios(result["timings"][threads], timed_keys) if before else {}
        if threads == 1:
            profiled = [k for k in keys if k.split("/")[0] != "denoise" and "/retune_K10_T10/" in k]
            result["profiles"] = profiles(cases, profiled)
    result["goals"] = goals(result["timings"][1], before is not None)
    result["blur_normal"] = blur_normal(args.crop, max(args.rounds, 5) * 4)
    result["wall_s"], result["load_average_at_end"] = time.perf_counter() - started, list(os.getloadavg())
    report(result)
    print(f"wrote {write_json(args.json, result)}")


if __name__ == "__main__":
    main()
