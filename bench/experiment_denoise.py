"""Held-out denoising experiment (README: presets): ReTune at (K,T) = (10,1) and (10,10) on CBSD68.

Sorted by file name, the first 60 CBSD68 images are the training set and the last 8 the held-out set
(two temporary folders of symlinks). For each preset (θ_B: ``denoise-wavelet-b``, θ_BC:
``denoise-wavelet-bc``) and each (K,T), θ is trained with the ReTune gradient for the same number of
Adam steps (default 100, batch 4, crop 256, lr 0.05, seed 0) through :func:`retune_cli.train.train`.

Held-out evaluation (:func:`retune_cli.evaluate.evaluate`, seed 0, so every row sees the same
observations): mean PSNR/SSIM at the checkpoint's own T and at equilibrium (T = 200 restarts; the
relative residual of the last restart on one image is reported to show it is converged), for

* the four trained runs,
* the initial θ of each preset (``init_lambda`` everywhere, no training),
* the best single scalar weight λ (``log_Lambda = 0``, ``log_lambda = log λ``) per preset: a grid of
  log-spaced λ, refined around the best, each run to equilibrium with
  :func:`retune_cli.core.hypergrad.restore` on the observations ``evaluate`` uses,
* the observation itself.

Output JSON (``bench/results/experiment_denoise.json``)::

    {"experiment": str, "setup": {...: data split, steps, batch, crop, lr, seeds, T_equilibrium, versions},
     "observation": {"psnr": x, "ssim": x},
     "runs": [{"label", "preset", "weights", "K", "T", "gradient",
               "train": {"seconds", "final_psnr" (last step's batch), "final_psnr_last10" (mean of the
                         last 10 steps), "final_tau", "log": [[step, loss, psnr, tau, seconds], …]},
               "learned": {"lambda": [per scale, coarsest first], "Lambda": [per band H,V,D] or
                           [[per channel R,G,B] per band H,V,D], "theta": [[…] per scale] (λ_j sqrt(Λ))},
               "heldout": {"own_T": {"T", "psnr", "ssim"}, "equilibrium": {"T", "psnr", "ssim"},
                           "equilibrium_minus_own_T_psnr": x},
               "residual": {"image", "by_T": {T: relative residual of the last restart after T restarts,
                            on the scheme's iterate u = θDx (the engine's residual)}},
               "contraction": {"tau", "omega" (ω(τ) of one step, theory), "K", "omega_K" (ω^K)}}, …],
     "initial": [{"label", "preset", "init_lambda", "heldout": {...as above}, "residual": {...},
                  "contraction": {...}}, …],
     "scalar": {preset: {"grid": [{"lambda", "psnr", "ssim", "restarts", "residual"}, …] (sorted by λ),
                         "best": {"lambda", "psnr", "ssim"},
                         "best_within_coarse_range": {…} (best λ in [0.02, 1], the range of the coarse grid),
                         "check_full_T": {"T", "psnr"} (best λ run T_EQ restarts with no tolerance)}},
     "evaluate": {"own_T": <EvalResult.to_json()>, "equilibrium": <EvalResult.to_json()>},
     "table": [{"row", "psnr", "ssim", …}] (PSNR/SSIM at equilibrium unless named *_own_T),
     "prototype_reference": {...} (held-out PSNR of an earlier plain-PyTorch prototype)}

PSNR in dB, SSIM in [0, 1], times in seconds (one CPU thread). Shared helpers: ``experiment_common.py``;
the table: ``denoise_tables.py``.

Run: ``.venv/bin/python bench/experiment_denoise.py [--steps 100] [--crop 256] [--json PATH] [--keep]``.
``--quick``: a smoke run (2 steps, crop 32, held-out images center-cropped to 32×32, equilibrium
T = 20, output in /tmp/retune-bench/experiment_denoise.json).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from common import machine_info, parse_args, write_json  # noqa: E402
from denoise_tables import print_table, table  # noqa: E402
from experiment_common import (  # noqa: E402
    DATA,
    crop_heldout,
    learned_weights,
    log_summary,
    observations,
    residual,
    save_initial,
    scores,
    split,
    train_run,
)

from retune_cli import checkpoint as ckpt  # noqa: E402
from retune_cli.config import resolve  # noqa: E402
from retune_cli.core.hypergrad import restore  # noqa: E402
from retune_cli.evaluate import OBSERVATION, evaluate  # noqa: E402
from retune_cli.models import build_scheme, physics_from  # noqa: E402
from retune_cli.restore import load_model  # noqa: E402

PRESETS = {"denoise-wavelet-b": "B", "denoise-wavelet-bc": "BC"}
CONFIGS = [(10, 1), (10, 10)]
EVAL_SEED = 0
COARSE = (0.02, 1.0)  # range of the coarse λ grid
SCALAR_TOL = 1e-7  # relative residual at which a scalar-λ solve is stopped (it converges in one step)
PROTOTYPE = {
    "source": "an earlier plain-PyTorch prototype (100 steps, batch 4, crop 256)",
    "psnr_K10_T10": 20.66,
    "psnr_K10_T1": 20.56,
    "psnr_best_scalar": 19.40,
    "psnr_observation": 9.69,
    "K10_T1_loss_at_equilibrium": 0.06,
}


@dataclass(frozen=True)
class Plan:
    """Equilibrium T, the T of the residuals, and the held-out crop (None: whole images)."""

    t_eq: int = 200
    residual_ts: tuple[int, ...] = (1, 10, 50, 100, 200)
    heldout_side: int | None = None


QUICK = Plan(20, (1, 10, 20), 32)


def contraction(path: Path, obs) -> dict[str, float]:
    """Step τ(θ) and the theoretical Lipschitz constants ω(τ) of φ and ω^K of Φ_K for the checkpoint's θ."""
    model = load_model(path)
    with torch.no_grad():
        ctx = model.scheme.prepare(obs)
        omega = float(model.scheme.contraction(ctx))
    K = model.config.train.K
    return {"tau": float(ctx.tau), "omega": omega, "K": K, "omega_K": omega**K}


def scalar_grid(preset: str, observed: list, lambdas, cache: dict, t_eq: int) -> None:
    """Mean held-out PSNR/SSIM at equilibrium of the uniform weight λ for each new λ (into ``cache``)."""
    from deepinv.loss.metric import PSNR, SSIM

    psnr, ssim = PSNR(max_pixel=1.0), SSIM()
    for lam in lambdas:
        key = float(f"{lam:.6g}")
        if key in cache:
            continue
        config = resolve(preset, {"model.init_lambda": key})
        scheme = build_scheme(config).eval()
        solved = [(clean, restore(scheme, obs, config.train.K, t_eq, SCALAR_TOL)) for clean, obs in observed]
        cache[key] = {
            "lambda": key,
            "psnr": float(np.mean([float(psnr(s.x, clean)) for clean, s in solved])),
            "ssim": float(np.mean([float(ssim(s.x, clean)) for clean, s in solved])),
            "restarts": max(s.restarts for _, s in solved),
            "residual": max(s.residual for _, s in solved),
        }


def best_scalar(preset: str, observed: list, t_eq: int) -> dict:
    """Coarse grid (15 values log-spaced in ``COARSE``; extended outwards while the best is at an end), then
    refined twice around the best (13 values over ±1 coarse ratio, 9 over ±1/6 of it)."""
    from deepinv.loss.metric import PSNR

    cache: dict[float, dict] = {}
    grid = list(np.geomspace(*COARSE, 15))
    ratio = grid[1] / grid[0]
    scalar_grid(preset, observed, grid, cache, t_eq)

    def best() -> float:
        return max(cache.values(), key=lambda r: r["psnr"])["lambda"]

    for _ in range(10):
        lams = sorted(cache)
        if best() not in (lams[0], lams[-1]):
            break
        scalar_grid(preset, observed, [best() / ratio if best() == lams[0] else best() * ratio], cache, t_eq)
    scalar_grid(preset, observed, np.geomspace(best() / ratio, best() * ratio, 13), cache, t_eq)
    scalar_grid(preset, observed, np.geomspace(best() / ratio ** (1 / 6), best() * ratio ** (1 / 6), 9), cache, t_eq)
    top = cache[best()]
    # Literal check: the best λ run for the full t_eq restarts without a tolerance gives the same PSNR.
    config = resolve(preset, {"model.init_lambda": top["lambda"]})
    scheme = build_scheme(config).eval()
    full = [float(PSNR(max_pixel=1.0)(restore(scheme, y, config.train.K, t_eq).x, x)) for x, y in observed]
    coarse = max((r for r in cache.values() if COARSE[0] <= r["lambda"] <= COARSE[1]), key=lambda r: r["psnr"])
    return {
        "grid": [cache[k] for k in sorted(cache)],
        "best": {k: top[k] for k in ("lambda", "psnr", "ssim")},
        "best_within_coarse_range": {k: coarse[k] for k in ("lambda", "psnr", "ssim")},
        "check_full_T": {"T": t_eq, "psnr": float(np.mean(full))},
    }


def train_all(args: argparse.Namespace, train_dir: Path, workdir: Path) -> tuple[list[dict], list[dict]]:
    """Every preset's initial θ (saved untrained) and its runs at every (K, T) of ``CONFIGS``."""
    overrides = {"train.steps": args.steps, "train.crop": args.crop}
    runs, initial = [], []
    for preset, short in PRESETS.items():
        config = resolve(preset, overrides)
        path = workdir / f"init_{short}" / "theta.safetensors"
        save_initial(path, config)
        initial.append({"label": f"init_{short}", "preset": preset, "init_lambda": config.model.init_lambda,
                        "path": path})
        for K, T in CONFIGS:
            label = f"{short}_K{K}_T{T}"
            config = resolve(preset, overrides | {"train.K": K, "train.T": T})
            seconds, _, log = train_run(config, workdir / label, train_dir)
            runs.append({
                "label": label, "preset": preset, "weights": config.model.weights, "K": K, "T": T,
                "gradient": config.train.gradient, "train": {"seconds": seconds} | log_summary(log),
                "learned": learned_weights(workdir / label / "theta.safetensors"),
                "path": workdir / label / "theta.safetensors",
            })
    return runs, initial


def heldout(entries: list[dict], heldout_dir: Path, plan: Plan) -> tuple[dict, list]:
    """Evaluate every entry at its own T and at equilibrium (held-out scores, residuals, contraction, in
    place); the two evaluations and the observations they used."""
    paths = [e["path"] for e in entries]
    print("evaluating at own T…", flush=True)
    own = evaluate(paths, data=heldout_dir, seed=EVAL_SEED)
    print(f"evaluating at equilibrium (T = {plan.t_eq})…", flush=True)
    eq = evaluate(paths, data=heldout_dir, T=plan.t_eq, seed=EVAL_SEED)
    # The observations evaluate used (same physics for both presets, same seeds).
    observed = observations(physics_from(resolve(next(iter(PRESETS)))), heldout_dir, EVAL_SEED)
    image = sorted(p.name for p in heldout_dir.iterdir())[0]
    for e in entries:
        own_T = ckpt.load(e["path"]).config.train.T
        h = {"own_T": {"T": own_T} | scores(own, e["label"]), "equilibrium": {"T": plan.t_eq} | scores(eq, e["label"])}
        h["equilibrium_minus_own_T_psnr"] = h["equilibrium"]["psnr"] - h["own_T"]["psnr"]
        e["heldout"] = h
        e["residual"] = {"image": image, "by_T": {str(T): residual(e["path"], observed[0][1], T)
                                                  for T in plan.residual_ts}}
        e["contraction"] = contraction(e["path"], observed[0][1])
        del e["path"]
    return {"own_T": own, "equilibrium": eq}, observed


def experiment(args: argparse.Namespace, plan: Plan, workdir: Path) -> dict:
    train_dir, heldout_dir, train_names, heldout_names = split(DATA, workdir)
    if plan.heldout_side:
        heldout_dir = workdir / f"heldout{plan.heldout_side}"
        crop_heldout(workdir / "heldout", heldout_dir, plan.heldout_side)
    runs, initial = train_all(args, train_dir, workdir)
    results, observed = heldout(runs + initial, heldout_dir, plan)
    own, eq = results["own_T"], results["equilibrium"]
    scalar = {}
    for preset in PRESETS:
        print(f"scalar λ grid for {preset}…", flush=True)
        scalar[preset] = best_scalar(preset, observed, plan.t_eq)

    # Cross-check: the scalar grid saw the observations evaluate used.
    from deepinv.loss.metric import PSNR

    obs_psnr = float(np.mean([float(PSNR(max_pixel=1.0)(obs.y, x)) for x, obs in observed]))
    assert math.isclose(obs_psnr, scores(eq, OBSERVATION)["psnr"], abs_tol=1e-6), "observations differ"
    setup = {
        "data": str(DATA), "train_images": train_names, "heldout_images": heldout_names, "steps": args.steps,
        "batch_size": 4, "crop": args.crop, "lr": 0.05, "train_seed": 0, "eval_seed": EVAL_SEED,
        "T_equilibrium": plan.t_eq, "scalar_tol": SCALAR_TOL, "residual_image": heldout_names[0],
        "machine": machine_info(torch.device("cpu")), "total_seconds": None,
    }
    return {
        "experiment": "held-out denoising, CBSD68, ReTune (K,T) = (10,1) vs (10,10), θ_B and θ_BC",
        "setup": setup,
        "observation": scores(eq, OBSERVATION),
        "runs": runs,
        "initial": initial,
        "scalar": scalar,
        "evaluate": {"own_T": own.to_json(), "equilibrium": eq.to_json()},
        "table": table(eq, runs, initial, scalar, plan.t_eq),
        "prototype_reference": PROTOTYPE,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="Adam steps per run (default 100)")
    parser.add_argument("--crop", type=int, default=256, help="training crop side (default 256)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (runs, checkpoints)")
    args = parse_args(parser, "experiment_denoise.json", {"steps": 2, "crop": 32})
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="retune-denoise-"))
    try:
        doc = experiment(args, QUICK if args.quick else Plan(), workdir)
        doc["setup"]["total_seconds"] = time.perf_counter() - started
        write_json(args.json, doc)
        print_table(doc)
        print(f"\nwrote {args.json} ({doc['setup']['total_seconds']:.0f} s)")
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
