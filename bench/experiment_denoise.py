"""Held-out denoising experiment (DESIGN.md §2.1, §2.3): ReTune at (K,T) = (10,1) and (10,10) on CBSD68.

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
               "residual": {"image", "by_T": {T: relative residual of the last restart after T restarts}},
               "contraction": {"tau", "omega" (ω(τ) of one step, theory), "K", "omega_K" (ω^K)}}, …],
     "initial": [{"label", "preset", "init_lambda", "heldout": {...as above}, "residual": {...},
                  "contraction": {...}}, …],
     "scalar": {preset: {"grid": [{"lambda", "psnr", "ssim", "restarts", "residual"}, …] (sorted by λ),
                         "best": {"lambda", "psnr", "ssim"},
                         "best_within_coarse_range": {…} (best λ in [0.02, 1], the range of the coarse grid),
                         "check_full_T": {"T", "psnr"} (best λ run T_EQ restarts with no tolerance)}},
     "evaluate": {"own_T": <EvalResult.to_json()>, "equilibrium": <EvalResult.to_json()>},
     "table": [{"row", "psnr", "ssim", …}] (PSNR/SSIM at equilibrium unless named *_own_T),
     "prototype_reference": {...} (held-out PSNR of the plain-PyTorch prototype, DESIGN.md §2.1)}

PSNR in dB, SSIM in [0, 1], times in seconds (one CPU thread).

Run: ``.venv/bin/python bench/experiment_denoise.py [--steps 100] [--crop 256]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from common import machine_info  # noqa: E402

from retune_cli import checkpoint as ckpt  # noqa: E402
from retune_cli.config import resolve  # noqa: E402
from retune_cli.core.hypergrad import restore  # noqa: E402
from retune_cli.core.physics import simulate  # noqa: E402
from retune_cli.data import ImageFolder, derive_seed  # noqa: E402
from retune_cli.evaluate import OBSERVATION, evaluate  # noqa: E402
from retune_cli.models import build_scheme  # noqa: E402
from retune_cli.restore import load_model, run  # noqa: E402
from retune_cli.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data/CBSD68")
PRESETS = {"denoise-wavelet-b": "B", "denoise-wavelet-bc": "BC"}
CONFIGS = [(10, 1), (10, 10)]
N_TRAIN, N_HELDOUT = 60, 8
EVAL_SEED = 0
T_EQ = 200
RESIDUAL_TS = (1, 10, 50, 100, 200)
COARSE = (0.02, 1.0)  # range of the coarse λ grid
SCALAR_TOL = 1e-7  # relative residual at which a scalar-λ solve is stopped (it converges in one step)


def split(data: Path, workdir: Path) -> tuple[Path, Path, list[str], list[str]]:
    """Two folders of symlinks: the first ``N_TRAIN`` images (sorted by name) and the last ``N_HELDOUT``."""
    files = sorted(p for p in data.iterdir() if p.suffix.lower() == ".png")
    if len(files) != N_TRAIN + N_HELDOUT:
        raise SystemExit(f"{data} holds {len(files)} PNGs, expected {N_TRAIN + N_HELDOUT}")
    folders = []
    for name, subset in (("train", files[:N_TRAIN]), ("heldout", files[-N_HELDOUT:])):
        folder = workdir / name
        folder.mkdir(parents=True)
        for f in subset:
            (folder / f.name).symlink_to(f.resolve())
        folders.append(folder)
    return folders[0], folders[1], [f.name for f in files[:N_TRAIN]], [f.name for f in files[-N_HELDOUT:]]


def learned_weights(path: Path) -> dict:
    """``λ = exp(log_lambda)``, ``Λ = exp(log_Lambda)`` and the per-level diagonal θ = λ_j sqrt(Λ)."""
    params = ckpt.load(path).parameters
    lam = torch.exp(params["theta.log_lambda"])
    Lam = torch.exp(params["theta.log_Lambda"])
    return {
        "lambda": lam.tolist(),
        "Lambda": Lam.tolist(),
        "theta": [(l_ * Lam.sqrt()).tolist() for l_ in lam],
    }


def read_log(path: Path) -> list[list[float]]:
    with open(path, newline="") as f:
        return [[float(r[k]) for k in ("step", "loss", "psnr", "tau", "seconds")] for r in csv.DictReader(f)]


def residuals(path: Path, observed: torch.Tensor) -> dict[str, float]:
    """Relative residual ``‖x_Kt − x_K(t−1)‖/‖x_Kt‖`` of the last restart, after t = T restarts."""
    model = load_model(path)
    return {str(T): run(model, observed, T).residual for T in RESIDUAL_TS}


def contraction(path: Path, observed: torch.Tensor) -> dict[str, float]:
    """Step τ(θ) and the theoretical Lipschitz constants ω(τ) of φ and ω^K of Φ_K for the checkpoint's θ."""
    model = load_model(path)
    with torch.no_grad():
        ctx = model.scheme.prepare(observed)
        omega = float(model.scheme.contraction(ctx))
    K = model.config.train.K
    return {"tau": float(ctx.tau), "omega": omega, "K": K, "omega_K": omega**K}


def scalar_grid(preset: str, observations: list[tuple[torch.Tensor, torch.Tensor]], lambdas, cache: dict) -> None:
    """Mean held-out PSNR/SSIM at equilibrium of the uniform weight λ for each new λ (into ``cache``)."""
    from deepinv.loss.metric import PSNR, SSIM

    psnr, ssim = PSNR(max_pixel=1.0), SSIM()
    for lam in lambdas:
        key = float(f"{lam:.6g}")
        if key in cache:
            continue
        config = resolve(preset, {"model.init_lambda": key})
        scheme = build_scheme(config).eval()
        ps, ss, restarts, res = [], [], [], []
        for clean, observed in observations:
            fp = restore(scheme, observed, config.train.K, T_EQ, SCALAR_TOL)
            ps.append(float(psnr(fp.x, clean)))
            ss.append(float(ssim(fp.x, clean)))
            restarts.append(fp.restarts)
            res.append(fp.residual)
        cache[key] = {
            "lambda": key,
            "psnr": float(np.mean(ps)),
            "ssim": float(np.mean(ss)),
            "restarts": max(restarts),
            "residual": max(res),
        }


def best_scalar(preset: str, observations) -> dict:
    """Coarse grid (15 values log-spaced in ``COARSE``; extended outwards while the best is at an end), then
    refined twice around the best (13 values over ±1 coarse ratio, 9 over ±1/6 of it)."""
    cache: dict[float, dict] = {}
    grid = list(np.geomspace(*COARSE, 15))
    ratio = grid[1] / grid[0]
    scalar_grid(preset, observations, grid, cache)
    for _ in range(10):
        best = max(cache.values(), key=lambda r: r["psnr"])["lambda"]
        lams = sorted(cache)
        if best == lams[0]:
            scalar_grid(preset, observations, [best / ratio], cache)
        elif best == lams[-1]:
            scalar_grid(preset, observations, [best * ratio], cache)
        else:
            break
    best = max(cache.values(), key=lambda r: r["psnr"])["lambda"]
    scalar_grid(preset, observations, np.geomspace(best / ratio, best * ratio, 13), cache)
    best = max(cache.values(), key=lambda r: r["psnr"])["lambda"]
    scalar_grid(preset, observations, np.geomspace(best / ratio ** (1 / 6), best * ratio ** (1 / 6), 9), cache)
    best = max(cache.values(), key=lambda r: r["psnr"])
    # Literal check: the best λ run for the full T_EQ restarts without a tolerance gives the same PSNR.
    from deepinv.loss.metric import PSNR

    config = resolve(preset, {"model.init_lambda": best["lambda"]})
    scheme = build_scheme(config).eval()
    full = [float(PSNR(max_pixel=1.0)(restore(scheme, y, config.train.K, T_EQ).x, x)) for x, y in observations]
    coarse = max((r for r in cache.values() if COARSE[0] <= r["lambda"] <= COARSE[1]), key=lambda r: r["psnr"])
    return {
        "grid": [cache[k] for k in sorted(cache)],
        "best": {k: best[k] for k in ("lambda", "psnr", "ssim")},
        "best_within_coarse_range": {k: coarse[k] for k in ("lambda", "psnr", "ssim")},
        "check_full_T": {"T": T_EQ, "psnr": float(np.mean(full))},
    }


def scores(result, label: str) -> dict[str, float]:
    mean = result.mean()
    return {"psnr": mean["psnr"][label], "ssim": mean["ssim"][label]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="Adam steps per run (default 100)")
    parser.add_argument("--crop", type=int, default=256, help="training crop side (default 256)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/experiment_denoise.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (runs, checkpoints)")
    args = parser.parse_args()

    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="retune-denoise-"))
    try:
        train_dir, heldout_dir, train_names, heldout_names = split(DATA, workdir)
        overrides = {"train.steps": args.steps, "train.crop": args.crop}

        runs, initial = [], []
        for preset, short in PRESETS.items():
            # Initial θ: the preset's θ, no training, saved as a checkpoint so that evaluate sees it.
            config = resolve(preset, overrides)
            path = workdir / f"init_{short}" / "theta.safetensors"
            ckpt.save(path, config, ckpt.learned_parameters(build_scheme(config)), 0, float("nan"))
            initial.append(
                {"label": f"init_{short}", "preset": preset, "init_lambda": config.model.init_lambda, "path": path}
            )
            for K, T in CONFIGS:
                label = f"{short}_K{K}_T{T}"
                config = resolve(preset, overrides | {"train.K": K, "train.T": T})
                out = workdir / label
                print(f"training {label} ({args.steps} steps, crop {args.crop})…", flush=True)
                t0 = time.perf_counter()
                result = train(config, out, data=train_dir, device="cpu")
                seconds = time.perf_counter() - t0
                log = read_log(out / "log.csv")
                runs.append(
                    {
                        "label": label,
                        "preset": preset,
                        "weights": config.model.weights,
                        "K": K,
                        "T": T,
                        "gradient": config.train.gradient,
                        "train": {
                            "seconds": seconds,
                            "final_psnr": result.psnr,
                            "final_psnr_last10": float(np.mean([r[2] for r in log[-10:]])),
                            "final_tau": log[-1][3],
                            "log": log,
                        },
                        "learned": learned_weights(result.checkpoint),
                        "path": result.checkpoint,
                    }
                )
                print(f"  {seconds:.1f} s, final train PSNR {result.psnr:.2f} dB", flush=True)

        entries = runs + initial
        paths = [e["path"] for e in entries]
        print("evaluating at own T…", flush=True)
        own = evaluate(paths, data=heldout_dir, seed=EVAL_SEED)
        print(f"evaluating at equilibrium (T = {T_EQ})…", flush=True)
        eq = evaluate(paths, data=heldout_dir, T=T_EQ, seed=EVAL_SEED)

        # The observations evaluate used (same physics for both presets, same seeds).
        images = ImageFolder.open(heldout_dir)
        physics = build_scheme(resolve(next(iter(PRESETS)), overrides)).physics
        observations = []
        for i, f in enumerate(images.files):
            clean = images[i].unsqueeze(0)
            with torch.no_grad():
                observations.append((clean, simulate(physics, clean, derive_seed(EVAL_SEED, "eval", f.name))))
        for e in entries:
            own_T = ckpt.load(e["path"]).config.train.T
            e["heldout"] = {
                "own_T": {"T": own_T} | scores(own, e["label"]),
                "equilibrium": {"T": T_EQ} | scores(eq, e["label"]),
            }
            e["heldout"]["equilibrium_minus_own_T_psnr"] = (
                e["heldout"]["equilibrium"]["psnr"] - e["heldout"]["own_T"]["psnr"]
            )
            e["residual"] = {"image": images.files[0].name, "by_T": residuals(e["path"], observations[0][1])}
            e["contraction"] = contraction(e["path"], observations[0][1])
            del e["path"]

        scalar = {}
        for preset in PRESETS:
            print(f"scalar λ grid for {preset}…", flush=True)
            scalar[preset] = best_scalar(preset, observations)

        # Cross-check: the scalar grid saw the observations evaluate used.
        from deepinv.loss.metric import PSNR

        obs_psnr = float(np.mean([float(PSNR(max_pixel=1.0)(y, x)) for x, y in observations]))
        assert math.isclose(obs_psnr, scores(eq, OBSERVATION)["psnr"], abs_tol=1e-6), "observations differ"

        table = [{"row": "observation"} | scores(eq, OBSERVATION)]
        for e in initial:
            h = e["heldout"]["equilibrium"]
            row = f"initial θ {e['preset']} (λ={e['init_lambda']:g})"
            table.append({"row": row, "psnr": h["psnr"], "ssim": h["ssim"]})
        for preset, s in scalar.items():
            b = s["best"]
            table.append({"row": f"best scalar {preset} (λ={b['lambda']:.4g})", "psnr": b["psnr"], "ssim": b["ssim"]})
        for e in runs:
            o, q = e["heldout"]["own_T"], e["heldout"]["equilibrium"]
            table.append(
                {
                    "row": f"{e['preset']} (K,T)=({e['K']},{e['T']})",
                    "psnr_own_T": o["psnr"],
                    "ssim_own_T": o["ssim"],
                    "psnr": q["psnr"],
                    "ssim": q["ssim"],
                    "residual_own_T": e["residual"]["by_T"][str(e["T"])],
                    "residual_T200": e["residual"]["by_T"][str(T_EQ)],
                    "omega_K": e["contraction"]["omega_K"],
                    "train_seconds": e["train"]["seconds"],
                    "train_psnr": e["train"]["final_psnr"],
                }
            )

        doc = {
            "experiment": "held-out denoising, CBSD68, ReTune (K,T) = (10,1) vs (10,10), θ_B and θ_BC; DESIGN.md §2.1",
            "setup": {
                "data": str(DATA),
                "train_images": train_names,
                "heldout_images": heldout_names,
                "steps": args.steps,
                "batch_size": 4,
                "crop": args.crop,
                "lr": 0.05,
                "train_seed": 0,
                "eval_seed": EVAL_SEED,
                "T_equilibrium": T_EQ,
                "scalar_tol": SCALAR_TOL,
                "residual_image": images.files[0].name,
                "machine": machine_info(torch.device("cpu")),
                "total_seconds": None,
            },
            "observation": scores(eq, OBSERVATION),
            "runs": runs,
            "initial": initial,
            "scalar": scalar,
            "evaluate": {"own_T": own.to_json(), "equilibrium": eq.to_json()},
            "table": table,
            "prototype_reference": {
                "source": "DESIGN.md §2.1 (plain-PyTorch prototype, 100 steps, batch 4, crop 256)",
                "psnr_K10_T10": 20.66,
                "psnr_K10_T1": 20.56,
                "psnr_best_scalar": 19.40,
                "psnr_observation": 9.69,
                "K10_T1_loss_at_equilibrium": 0.06,
            },
        }
        doc["setup"]["total_seconds"] = time.perf_counter() - started
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
        print_table(doc)
        print(f"\nwrote {args.json} ({doc['setup']['total_seconds']:.0f} s)")
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def print_table(doc: dict) -> None:
    s = doc["setup"]
    print(
        f"\nHeld-out CBSD68 ({len(s['heldout_images'])} images), {s['steps']} Adam steps, crop {s['crop']}, "
        f"equilibrium = T {s['T_equilibrium']}\n"
    )
    print(
        "| θ | (K,T) | PSNR own T | SSIM own T | PSNR eq. | SSIM eq. | Δ eq.−own | residual own T | residual T=200 "
        "| ω^K | train s | train PSNR |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for e in doc["runs"]:
        o, q = e["heldout"]["own_T"], e["heldout"]["equilibrium"]
        print(
            f"| {e['weights']} | ({e['K']},{e['T']}) | {o['psnr']:.2f} | {o['ssim']:.4f} | {q['psnr']:.2f} | "
            f"{q['ssim']:.4f} | {q['psnr'] - o['psnr']:+.3f} | {e['residual']['by_T'][str(e['T'])]:.1e} | "
            f"{e['residual']['by_T'][str(T_EQ)]:.1e} | {e['contraction']['omega_K']:.3f} | "
            f"{e['train']['seconds']:.1f} | {e['train']['final_psnr']:.2f} |"
        )
    for e in doc["initial"]:
        q = e["heldout"]["equilibrium"]
        print(
            f"| initial {e['preset']} (λ={e['init_lambda']:g}) | – | | | {q['psnr']:.2f} | {q['ssim']:.4f} | | | "
            f"{e['residual']['by_T'][str(T_EQ)]:.1e} | {e['contraction']['omega_K']:.3f} | | |"
        )
    for preset, sc in doc["scalar"].items():
        b = sc["best"]
        print(f"| best scalar {preset} (λ={b['lambda']:.4g}) | – | | | {b['psnr']:.2f} | {b['ssim']:.4f} | | | | | | |")
    o = doc["observation"]
    print(f"| observation | – | | | {o['psnr']:.2f} | {o['ssim']:.4f} | | | | | | |")


if __name__ == "__main__":
    main()
