"""Held-out restoration experiments (README: presets, plug-and-play): inpainting and deblurring, wavelet prior and PnP.

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
"T100", "T1000"}}``. PSNR in dB, SSIM in [0, 1], times in seconds. Residuals are the engine's: the
relative residual of the last restart on the scheme's iterate (u = θDx for the wavelet scheme, the
image for PnP). Shared helpers: ``experiment_common.py``; tables: ``restoration_tables.py``.

Run: ``.venv/bin/python bench/experiment_restoration.py [--steps-a 100] [--steps-b 40] [--workdir DIR]
[--json PATH]`` (about 40 min on 2 busy cores; with ``--workdir`` finished runs are reused). The figure
is written next to the JSON file. ``--quick``: a smoke run (1 step per run, (K,T) ∈ {1,2}², crops 32,
2 held-out images of 32×32, T = 3 and 6 in place of 100 and 1000, output in /tmp/retune-bench/); the
JSON keys keep their names (``T100``, ``K1_T1000``, …), the ``T`` fields say what ran.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

torch.set_num_threads(1)

from common import machine_info, parse_args  # noqa: E402
from experiment_common import DATA, crop_heldout, split  # noqa: E402
from restoration_blocks import BATCH, EVAL_SEED, TRAIN_SEED, block_a, block_b, supplement_k1  # noqa: E402
from restoration_tables import print_tables, tables  # noqa: E402

from retune_cli.rundir import atomic_write  # noqa: E402

PHYSICS = ("inpaint", "deblur")


@dataclass(frozen=True)
class Plan:
    """The (K, T) grid (the last one also starts the denoiser run and the initial θ), held-out crops,
    the long T (and the K = 1 supplement's), training crops."""

    configs: tuple[tuple[int, int], ...] = ((1, 1), (1, 10), (10, 1), (10, 10))
    heldout_side: int = 128
    heldout_count: int | None = None  # all
    t_eq: int = 100
    t_k1: int = 1000  # K = 1 checkpoints: as many iterations as K = 10 at t_eq
    crop_a: int = 128
    crop_b: int = 64


QUICK = Plan(((1, 1), (1, 2), (2, 1), (2, 2)), 32, 2, 3, 6, 32, 32)


class Experiment:
    """Shared state: the plan, folders, the JSON document (written after every stage), timing."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.plan = QUICK if args.quick else Plan()
        self.started = time.perf_counter()
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="retune-restoration-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.doc: dict = {
            "experiment": "held-out inpainting and deblurring, CBSD68 (8 images, 128×128 center crops): "
            "wavelet θ_BC and PnP-FB with the builtin DRUNet, ReTune at (K,T) ∈ {1,10}²",
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
        text = json.dumps(self.doc, indent=2, default=str)
        atomic_write(self.args.json, lambda tmp: Path(tmp).write_text(text))
        print(f"[{self.elapsed():7.0f} s] {name}", flush=True)


def prepare(exp: Experiment) -> None:
    """The split (reused in ``--workdir``), the held-out crops, the setup."""
    args, plan = exp.args, exp.plan
    split_dir = exp.workdir / "split"
    if not split_dir.exists():
        split(DATA, split_dir)
    exp.train_dir = split_dir / "train"
    exp.heldout_dir = exp.workdir / f"heldout{plan.heldout_side}"
    names = crop_heldout(split_dir / "heldout", exp.heldout_dir, plan.heldout_side, plan.heldout_count)
    exp.doc["setup"] = {
        "data": str(DATA),
        "train_images": sorted(p.name for p in exp.train_dir.iterdir()),
        "heldout_images": names,
        "heldout_crop": f"center {plan.heldout_side}×{plan.heldout_side}",
        "workdir": str(exp.workdir),
        "A": {"steps": args.steps_a, "batch_size": BATCH, "crop": plan.crop_a, "configs": list(plan.configs)},
        "B": {
            "steps": args.steps_b,
            "batch_size": BATCH,
            "crop": plan.crop_b,
            "configs": list(plan.configs),
            "denoiser": "builtin",
            "denoiser_run": "({0},{1}), train.init = the ({0},{1}) (σ,τ) run".format(*plan.configs[-1]),
        },
        "initial_checkpoint": "checkpoint.save of build_scheme(preset config) untrained, "
        f"K = T = {plan.configs[-1][0]}",
        "train_seed": TRAIN_SEED,
        "eval_seed": EVAL_SEED,
        "T_equilibrium": plan.t_eq,
        "T_K1_supplement": plan.t_k1,
        "machine": machine_info(torch.device("cpu")),
        "total_seconds": None,
    }
    exp.stage("data ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-a", type=int, default=100, help="Adam steps per wavelet run (default 100)")
    parser.add_argument("--steps-b", type=int, default=40, help="Adam steps per PnP run (default 40)")
    parser.add_argument("--blocks", default="A,B,S", help="A (wavelet), B (PnP, needs A), S (K=1 at T=1000)")
    parser.add_argument("--workdir", type=Path, default=None, help="run folders (reused when finished)")
    args = parse_args(parser, "experiment_restoration.json", {"steps_a": 1, "steps_b": 1})
    exp = Experiment(args)
    prepare(exp)
    blocks = args.blocks.split(",")
    for block, run in (("A", block_a), ("B", block_b), ("S", supplement_k1)):
        if block in blocks:
            for name in PHYSICS:
                run(exp, name)
                if block == "B":
                    tables(exp.doc)
    tables(exp.doc)
    exp.doc["status"] = "complete"
    exp.stage("done")
    print_tables(exp.doc)
    print(f"\nwrote {args.json}; run folders in {exp.workdir}")


if __name__ == "__main__":
    main()
