"""CBSD68: ReTune training with Anderson-accelerated restarts against plain ReTune (issue 12 part 3).

For wavelet inpainting and deblurring (θ_BC), train ReTune (K, T) = (10, 10) twice on the first 60
images of CBSD68 (sorted names), 128² crops, the same seed and steps: with plain restarts
(``train.accelerate: none``) and with Anderson-accelerated ones (``anderson``: the T − 1 graph-free
restarts become (T − 1)·K accelerated steps, then the recorded Φ_K). Then evaluate the last 8 images
(center 128² crops) with ``retune eval``'s workflow at each run's own T and at T = 100 restarts.

Gradients: ``compare-grads``' workflow on the plain run's θ (first held-out crop, 64², float64), K = 10,
T = 1, 2, 5, 10, rows ``retune`` and ``retune-anderson``: cosine to the exact DEQ gradient and relative
error, at the same K·T. Goals: held-out PSNR with acceleration ≥ plain at the same steps; cosine to
DEQ ≥ plain's at the same K·T. One thread (CPU).

    python bench/experiment_accelerate.py --data PATH/TO/CBSD68 [--steps 100] [--quick]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import limit_threads, machine_info, parse_args, write_json
from experiment_common import crop_heldout, split
from experiment_gradients import held_out, run_mode

from retune_cli.gradients import compare_gradients
from retune_cli.restore import load_model

PROBLEMS = {"inpaint-wavelet": {}, "deblur-wavelet": {}}
VARIANTS = ("none", "anderson")


def gradient_rows(checkpoint: Path, image: Path, Ts: list[int], crop: int) -> list[dict]:
    """compare-grads rows retune / retune-anderson at K = 10 (cosine and error to DEQ)."""
    model = load_model(checkpoint)
    result = compare_gradients(model.scheme, model.config, image, crop=crop, Ks=[10], Ts=Ts, accelerate=True)
    keep = ("method", "K", "T", "cosine_deq", "rel_err_deq", "seconds")
    return [{k: row[k] for k in keep} for row in result.rows if row["method"] in ("retune", "retune-anderson")]


def verdict(runs: dict, rows: list[dict]) -> dict:
    """The two goals, checked."""
    by = {(r["method"], r["T"]): r for r in rows}
    Ts = sorted({r["T"] for r in rows})
    return {
        "heldout_psnr_gain_db_own_T": runs["anderson"]["heldout_psnr_own_T"] - runs["none"]["heldout_psnr_own_T"],
        "heldout_psnr_gain_db_T100": runs["anderson"]["heldout_psnr_T100"] - runs["none"]["heldout_psnr_T100"],
        "cosine_gain_per_T": {T: by[("retune-anderson", T)]["cosine_deq"] - by[("retune", T)]["cosine_deq"]
                              for T in Ts},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="CBSD68 folder")
    parser.add_argument("--work", type=Path, default=Path("/tmp/retune-bench/accelerate"), help="run folders")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--crop", type=int, default=128)
    args = parse_args(parser, "experiment_accelerate.json", quick={"steps": 2, "crop": 32})
    limit_threads()
    train_dir, held_full, _, _ = split(args.data, args.work)
    held = args.work / "heldout-crops"
    names = crop_heldout(held_full, held, args.crop, 1 if args.quick else None)
    import torch

    device = torch.device("cpu")
    results = {"machine": machine_info(device), "steps": args.steps, "crop": args.crop, "problems": {}}
    for preset, extra in PROBLEMS.items():
        overrides = extra | {"train.steps": args.steps, "train.checkpoint_every": args.steps, "train.crop": args.crop}
        runs = {}
        for variant in VARIANTS:
            print(f"{preset} · accelerate {variant}", flush=True)
            runs[variant] = run_mode(preset, overrides | {"train.accelerate": variant}, "retune",
                                     args.work / preset / variant, train_dir, device)
        held_out(runs, held, device)
        print(f"{preset} · gradients", flush=True)
        Ts = [1, 2] if args.quick else [1, 2, 5, 10]
        rows = gradient_rows(Path(runs["none"]["checkpoint"]), held / names[0], Ts, min(64, args.crop))
        results["problems"][preset] = {"runs": runs, "gradients_K10": rows, "verdict": verdict(runs, rows)}
        write_json(args.json, results)
    print(f"→ {args.json}")


if __name__ == "__main__":
    main()
