"""Held-out restoration experiments (DESIGN.md §2.2–2.3): inpainting and deblurring, wavelet prior and PnP.

Data as in ``experiment_denoise.py``: CBSD68 sorted by name, the first 60 images train (random crops), the
last 8 are the held-out set, here center-cropped to 128×128 (written as PNGs to a temporary folder) so that
plug-and-play evaluation stays affordable on a CPU. Everything runs on one CPU thread, seed 0, through the
Python API (:func:`retune_cli.config.resolve`, :func:`retune_cli.train.train`,
:func:`retune_cli.evaluate.evaluate`).

Block A (wavelet prior θ_BC): presets ``inpaint-wavelet`` and ``deblur-wavelet`` at (K,T) ∈ {(1,1), (1,10),
(10,1), (10,10)}, the same number of Adam steps each (default 100, batch 4, crop 128). Held-out mean
PSNR/SSIM at each checkpoint's own T and at T = 100 restarts (K·100 steps: 1000 for K = 10, only 100 for
K = 1, so the K = 1 checkpoints are also evaluated at T = 1000 in a supplementary call, last), with the
relative residual ``‖x_Kt − x_K(t−1)‖/‖x_Kt‖`` of the last restart on the first held-out image; the initial
θ (the preset's, untrained, saved with :func:`retune_cli.checkpoint.save` from
:func:`retune_cli.models.build_scheme`, K = T = 10) and the observation are rows of the same evaluation.
The four inpainting runs' train-PSNR curves are drawn in ``bench/results/grid_inpaint_wavelet.png``.

Block B (plug-and-play forward-backward, builtin DRUNet): presets ``inpaint-pnp`` and ``deblur-pnp`` learn
(σ, τ) from the presets' start (σ = 0.2, τ = 0.5) at the same four (K,T), default 40 steps, crop 64,
batch 4; then ``inpaint-pnp-denoiser`` / ``deblur-pnp-denoiser`` learn the denoiser's weights at (10,10),
started (``train.init``) from the (10,10) (σ, τ) checkpoint of the same physics. One evaluation per
physics (own T) holds the initial (σ, τ), the four learned (σ, τ), the learned denoiser and the block-A
wavelet (10,10) checkpoint of the same physics (after checking that the physics configs are equal), so
every row sees the same masks and noise.

Output JSON (``bench/results/experiment_restoration.json``, rewritten after every stage; ``status`` says
how far it got)::

    {"experiment", "status": "running"|"complete", "stages": [[name, seconds since start], …],
     "setup": {data split, steps, batch, crop, lr, seeds, T_equilibrium, threads, versions, total_seconds},
     "A": {physics: {"preset", "runs": [run], "initial": run-like, "observation": {"psnr", "ssim"},
                     "evaluate": {"own_T", "T100", "K1_T1000": EvalResult.to_json()}}},
     "B": {physics: {"preset", "runs": [run], "initial", "denoiser": run, "wavelet": {"label",
                     "physics_equal", "heldout": {"own_T"}, "blockA_own_T_psnr"}, "observation",
                     "evaluate": {"own_T": EvalResult.to_json()}}},
     "tables": {"A": [row], "B": [row]}}

with ``run = {"label", "preset", "K", "T", "steps", "train": {"seconds" (wall, around train()),
"log_seconds", "final_psnr", "final_psnr_last10", "final_tau", "log": [[step, loss, psnr, tau, seconds], …]},
"learned": {"lambda", "Lambda", "theta"} (wavelet) or {"sigma", "tau"} (PnP), "heldout": {"own_T": {"T",
"psnr", "ssim"}, "T100": {…, "iterations"}, "T1000": {…} (K = 1 only)}, "residual": {"image", "own_T",
"T100", "T1000"}}``. PSNR in dB, SSIM in [0, 1], times in seconds.

Run: ``.venv/bin/python bench/experiment_restoration.py [--steps-a 100] [--steps-b 40] [--workdir DIR]``
(about 40 min on 2 busy cores; with ``--workdir`` finished runs are reused).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from common import machine_info  # noqa: E402
from experiment_denoise import DATA, learned_weights, read_log, scores, split  # noqa: E402
from PIL import Image  # noqa: E402
from restoration_tables import print_tables, tables  # noqa: E402

from retune_cli import checkpoint as ckpt  # noqa: E402
from retune_cli.config import resolve  # noqa: E402
from retune_cli.core.physics import simulate  # noqa: E402
from retune_cli.data import ImageFolder, derive_seed  # noqa: E402
from retune_cli.evaluate import OBSERVATION, evaluate  # noqa: E402
from retune_cli.models import build_scheme  # noqa: E402
from retune_cli.restore import load_model, run  # noqa: E402
from retune_cli.train import plot_runs, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [(1, 1), (1, 10), (10, 1), (10, 10)]
PHYSICS = ("inpaint", "deblur")
HELDOUT_SIDE = 128
EVAL_SEED = 0
TRAIN_SEED = 0
T_EQ = 100
T_K1 = 1000  # K = 1 checkpoints: as many iterations as K = 10 at T_EQ
BATCH = 4
CROP_A, CROP_B = 128, 64


class Experiment:
    """Shared state: folders, the JSON document (written after every stage), timing."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.started = time.perf_counter()
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="retune-restoration-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.doc: dict = {
            "experiment": "held-out inpainting and deblurring, CBSD68 (8 images, 128×128 center crops): "
            "wavelet θ_BC and PnP-FB with the builtin DRUNet, ReTune at (K,T) ∈ {1,10}²; DESIGN.md §2.2–2.3",
            "status": "running",
            "stages": [],
            "setup": {},
            "A": {},
            "B": {},
            "tables": {},
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def stage(self, name: str) -> None:
        self.doc["stages"].append([name, round(self.elapsed(), 1)])
        self.doc["setup"]["total_seconds"] = self.elapsed()
        self.args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.args.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, default=str))
        tmp.replace(self.args.json)
        print(f"[{self.elapsed():7.0f} s] {name}", flush=True)


def crop_heldout(src: Path, dst: Path, side: int) -> list[str]:
    """Center ``side``×``side`` crops of every PNG of ``src``, written as PNGs into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    names = []
    for f in sorted(src.iterdir()):
        image = Image.open(f).convert("RGB")
        w, h = image.size
        left, top = (w - side) // 2, (h - side) // 2
        image.crop((left, top, left + side, top + side)).save(dst / f.name)
        names.append(f.name)
    return names


def train_run(exp: Experiment, preset: str, label: str, overrides: dict) -> dict:
    """Train (or reuse, with ``--workdir``, a finished run of) ``preset`` + ``overrides`` into ``label``."""
    config = resolve(preset, overrides)
    out = exp.workdir / label
    path = out / "theta.safetensors"
    reused = path.is_file() and ckpt.load(path).step == config.train.steps
    seconds = None
    if not reused:
        print(
            f"  training {label}: {config.train.steps} steps, K={config.train.K}, T={config.train.T}, "
            f"crop {config.train.crop}…",
            flush=True,
        )
        t0 = time.perf_counter()
        train(config, out, data=exp.train_dir, device="cpu", force=True)
        seconds = time.perf_counter() - t0
    log = read_log(out / "log.csv")
    entry = {
        "label": label,
        "preset": preset,
        "K": config.train.K,
        "T": config.train.T,
        "steps": config.train.steps,
        "train": {
            "seconds": seconds,
            "reused": reused,
            "log_seconds": log[-1][4],
            "final_psnr": log[-1][2],
            "final_psnr_last10": float(np.mean([r[2] for r in log[-10:]])),
            "final_tau": log[-1][3],
            "log": log,
        },
        "path": path,
    }
    print(f"    {entry['train']['log_seconds']:.0f} s (log), final train PSNR {log[-1][2]:.2f} dB", flush=True)
    return entry


def initial_checkpoint(exp: Experiment, preset: str, label: str, overrides: dict) -> dict:
    """The preset's untrained θ (K = T = 10) saved as a checkpoint, so that ``evaluate`` sees it."""
    config = resolve(preset, overrides)
    path = exp.workdir / label / "theta.safetensors"
    ckpt.save(path, config, ckpt.learned_parameters(build_scheme(config)), 0, float("nan"))
    return {"label": label, "preset": preset, "K": config.train.K, "T": config.train.T, "path": path}


def pnp_parameters(path: Path) -> dict[str, float]:
    params = ckpt.load(path).parameters
    return {"sigma": float(torch.exp(params["theta.log_sigma"])), "tau": float(torch.exp(params["theta.log_tau"]))}


def first_observation(exp: Experiment, model) -> torch.Tensor:
    """The observation ``evaluate`` makes of the first held-out image, drawn with ``model``'s physics (so
    its mask, for inpainting, is the one ``run`` then uses)."""
    images = ImageFolder.open(exp.heldout_dir)
    clean = images[0].unsqueeze(0)
    with torch.no_grad():
        return simulate(model.scheme.physics, clean, derive_seed(EVAL_SEED, "eval", images.files[0].name))


def residual(exp: Experiment, path: Path, T: int) -> float:
    model = load_model(path)
    return run(model, first_observation(exp, model), T).residual


def heldout(result, label: str, T: int, K: int | None = None) -> dict:
    out = {"T": T} | scores(result, label)
    if K is not None:
        out["iterations"] = K * T
    return out


def train_configs(exp: Experiment, block: str, name: str, preset: str, base: dict, learned) -> dict:
    """Train ``preset`` at every (K, T) of CONFIGS into the block's section; ``learned(path)`` records θ."""
    section = exp.doc[block].setdefault(name, {"preset": preset, "runs": []})
    for K, T in CONFIGS:
        entry = train_run(exp, preset, f"{preset}_K{K}_T{T}", base | {"train.K": K, "train.T": T})
        entry["learned"] = learned(entry["path"])
        section["runs"].append(entry)
        exp.stage(f"{block} {preset} K{K} T{T} trained")
    return section


def block_a(exp: Experiment, name: str) -> None:
    preset = f"{name}-wavelet"
    base = {"train.steps": exp.args.steps_a, "train.crop": CROP_A, "train.batch_size": BATCH, "train.seed": TRAIN_SEED}
    section = train_configs(exp, "A", name, preset, base, learned_weights)
    section["initial"] = initial_checkpoint(exp, preset, f"{preset}_init", base)
    if name == "inpaint":
        figure = ROOT / "bench/results/grid_inpaint_wavelet.png"
        plot_runs(figure, {f"(K,T)=({e['K']},{e['T']})": e["path"].parent for e in section["runs"]})
        exp.doc["setup"]["figure"] = str(figure.relative_to(ROOT))

    entries = section["runs"] + [section["initial"]]
    paths = [e["path"] for e in entries]
    own = evaluate(paths, data=exp.heldout_dir, seed=EVAL_SEED)
    exp.stage(f"A {preset} evaluated at own T")
    eq = evaluate(paths, data=exp.heldout_dir, T=T_EQ, seed=EVAL_SEED)
    _check_same_observation(own, eq)
    section["observation"] = scores(own, OBSERVATION)
    section["evaluate"] = {"own_T": own.to_json(), "T100": eq.to_json()}
    image = sorted(p.name for p in exp.heldout_dir.iterdir())[0]
    for e in entries:
        e["heldout"] = {"own_T": heldout(own, e["label"], e["T"]), "T100": heldout(eq, e["label"], T_EQ, e["K"])}
        e["residual"] = {
            "image": image,
            "own_T": residual(exp, e["path"], e["T"]),
            "T100": residual(exp, e["path"], T_EQ),
        }
    exp.stage(f"A {preset} evaluated at T={T_EQ}")


def supplement_k1(exp: Experiment, name: str) -> None:
    """The K = 1 checkpoints of block A at T = 1000 restarts (1000 steps, as K = 10 at T = 100)."""
    section = exp.doc["A"][name]
    runs = [e for e in section["runs"] if e["K"] == 1]
    result = evaluate([e["path"] for e in runs], data=exp.heldout_dir, T=T_K1, seed=EVAL_SEED)
    assert math.isclose(scores(result, OBSERVATION)["psnr"], section["observation"]["psnr"], abs_tol=1e-9)
    section["evaluate"]["K1_T1000"] = result.to_json()
    for e in runs:
        e["heldout"]["T1000"] = heldout(result, e["label"], T_K1, e["K"])
        e["residual"]["T1000"] = residual(exp, e["path"], T_K1)
    exp.stage(f"A {section['preset']} K=1 evaluated at T={T_K1}")


def _check_same_observation(*results) -> None:
    first = scores(results[0], OBSERVATION)
    for r in results[1:]:
        assert math.isclose(scores(r, OBSERVATION)["psnr"], first["psnr"], abs_tol=1e-9), "observations differ"


def block_b(exp: Experiment, name: str) -> None:
    preset = f"{name}-pnp"
    base = {"train.steps": exp.args.steps_b, "train.crop": CROP_B, "train.batch_size": BATCH, "train.seed": TRAIN_SEED}
    section = train_configs(exp, "B", name, preset, base, pnp_parameters)
    init = section["runs"][-1]["path"]  # (10,10)
    dn = train_run(
        exp,
        f"{preset}-denoiser",
        f"{preset}-denoiser_K10_T10",
        base | {"train.K": 10, "train.T": 10, "train.init": str(init)},
    )
    dn["init"] = str(init.parent.name)
    dn["learned"] = pnp_parameters(dn["path"])
    dn["learned"]["denoiser_tensors"] = sum(1 for k in ckpt.load(dn["path"]).parameters if k.startswith("denoiser."))
    section["denoiser"] = dn
    exp.stage(f"B {preset}-denoiser trained")
    section["initial"] = initial_checkpoint(exp, preset, f"{preset}_init", base | {"train.K": 10, "train.T": 10})
    section["initial"]["learned"] = pnp_parameters(section["initial"]["path"])

    wavelet = next(e for e in exp.doc["A"][name]["runs"] if (e["K"], e["T"]) == (10, 10))
    equal = ckpt.load(wavelet["path"]).config.physics == ckpt.load(init).config.physics
    section["wavelet"] = {
        "label": wavelet["label"],
        "physics_equal": equal,
        "blockA_own_T_psnr": wavelet["heldout"]["own_T"]["psnr"],
        "blockA_own_T_ssim": wavelet["heldout"]["own_T"]["ssim"],
    }
    entries = section["runs"] + [dn, section["initial"]]
    paths = [e["path"] for e in entries] + ([wavelet["path"]] if equal else [])
    own = evaluate(paths, data=exp.heldout_dir, seed=EVAL_SEED)
    section["observation"] = scores(own, OBSERVATION)
    section["observation_equals_block_A"] = math.isclose(
        section["observation"]["psnr"], exp.doc["A"][name]["observation"]["psnr"], abs_tol=1e-9
    )
    section["evaluate"] = {"own_T": own.to_json()}
    if equal:
        section["wavelet"]["heldout"] = {"own_T": heldout(own, wavelet["label"], wavelet["T"])}
    image = sorted(p.name for p in exp.heldout_dir.iterdir())[0]
    for e in entries:
        e["heldout"] = {"own_T": heldout(own, e["label"], e["T"])}
        e["residual"] = {"image": image, "own_T": residual(exp, e["path"], e["T"])}
    exp.stage(f"B {preset} evaluated at own T")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-a", type=int, default=100, help="Adam steps per wavelet run (default 100)")
    parser.add_argument("--steps-b", type=int, default=40, help="Adam steps per PnP run (default 40)")
    parser.add_argument("--blocks", default="A,B,S", help="A (wavelet), B (PnP, needs A), S (K=1 at T=1000)")
    parser.add_argument("--workdir", type=Path, default=None, help="run folders (reused when finished)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/experiment_restoration.json")
    args = parser.parse_args()

    exp = Experiment(args)
    split_dir = exp.workdir / "split"
    if not split_dir.exists():
        split(DATA, split_dir)
    exp.train_dir = split_dir / "train"
    exp.heldout_dir = exp.workdir / f"heldout{HELDOUT_SIDE}"
    heldout_names = crop_heldout(split_dir / "heldout", exp.heldout_dir, HELDOUT_SIDE)
    exp.doc["setup"] = {
        "data": str(DATA),
        "train_images": sorted(p.name for p in exp.train_dir.iterdir()),
        "heldout_images": heldout_names,
        "heldout_crop": f"center {HELDOUT_SIDE}×{HELDOUT_SIDE}",
        "workdir": str(exp.workdir),
        "A": {"steps": args.steps_a, "batch_size": BATCH, "crop": CROP_A, "configs": CONFIGS},
        "B": {
            "steps": args.steps_b,
            "batch_size": BATCH,
            "crop": CROP_B,
            "configs": CONFIGS,
            "denoiser": "builtin",
            "denoiser_run": "(10,10), train.init = the (10,10) (σ,τ) run",
        },
        "initial_checkpoint": "checkpoint.save of build_scheme(preset config) untrained, K = T = 10",
        "train_seed": TRAIN_SEED,
        "eval_seed": EVAL_SEED,
        "T_equilibrium": T_EQ,
        "T_K1_supplement": T_K1,
        "machine": machine_info(torch.device("cpu")),
        "total_seconds": None,
    }
    exp.stage("data ready")
    blocks = args.blocks.split(",")
    if "A" in blocks:
        for name in PHYSICS:
            block_a(exp, name)
    if "B" in blocks:
        for name in PHYSICS:
            block_b(exp, name)
            tables(exp.doc)
    if "S" in blocks:
        for name in PHYSICS:
            supplement_k1(exp, name)
    tables(exp.doc)
    exp.doc["status"] = "complete"
    exp.stage("done")
    print_tables(exp.doc)
    print(f"\nwrote {args.json}; run folders in {exp.workdir}")


if __name__ == "__main__":
    main()
