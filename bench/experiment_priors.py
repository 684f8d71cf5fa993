"""Held-out comparison of the priors (README: priors): each learned with ReTune against the same prior with
its best single hand-tuned weight.

CBSD68 sorted by name: the first 60 images train, the last 8 are held out (center crops of ``--side``
pixels). Tasks: colour denoising at σ = 0.08, the paper's inpainting (90 % missing, σ = 0.05) and
deblurring (channel-wise uniform blur of width 25, σ = 0.05). For each task and prior preset (a label
``preset+variant`` adds the overrides of :data:`VARIANTS`, e.g. ``denoise-tv+opponent``):

* ``learned``: θ trained with the preset's gradient, (K, T) and acceleration for ``--steps`` Adam steps
  (batch 4, crop ``--crop``, seed 0) through :func:`retune_cli.train.train`;
* ``hand-tuned``: the prior's uniform start ``model.init: paper`` (every weight = ``init_lambda``) swept
  over a log grid (factor 2, then √2 around the best), the weight chosen as a user would, on images they
  have (center crops of the first 8 training images), and scored on the held-out images; ``oracle``:
  the best weight on the held-out images themselves (a choice in the classic's favour);
* ``observation``: the degraded input.

Every row is scored by :func:`retune_cli.evaluate.evaluate` (seed 0: every row sees the same observations)
at the checkpoint's own T and restarts, or with ``--eval-T N --eval-accelerate anderson`` near the fixed
point (what ReTune's gradient aims at). Output ``bench/results/experiment_priors.json``::

    {"experiment", "setup": {...}, "tasks": {task: {"observation": {"psnr", "ssim"},
       "priors": {preset: {"learned": {"psnr", "ssim", "steps", "train_seconds", "final_train_psnr"},
                           "hand_tuned": {"best"|"oracle": {"init_lambda", "psnr", "ssim", "psnr_tune"},
                                          "grid": [...]}}}}},
     "table": [{"task", "preset", "learned_psnr", "hand_tuned_psnr", "hand_tuned_oracle_psnr", "gain_db",
                "observation_psnr",
                "vs_hand_tuned_tv_db", "vs_oracle_tv_db"}]}

and ``bench/results/experiment_priors.png`` (held-out PSNR per task and prior, learned beside hand-tuned).
Run: ``CBSD68=FOLDER .venv/bin/python bench/experiment_priors.py [--steps 60] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import torch
from experiment_common import N_HELDOUT, crop_heldout, heldout_setup, read_log, save_initial, scores, train_run

from retune_cli.config import resolve, with_overrides
from retune_cli.evaluate import evaluate

TASKS = {
    "denoise σ=0.08": (["denoise-wavelet-bc", "denoise-tv", "denoise-tv+opponent", "denoise-wavelet-union",
                        "denoise-filters"],
                       {"physics.sigma": [0.08]}),
    "inpaint": (["inpaint-wavelet", "inpaint-tv", "inpaint-wavelet-union"], {}),
    "deblur": (["deblur-wavelet", "deblur-tv", "deblur-tv+opponent", "deblur-filters+rgb", "deblur-filters"], {}),
}
VARIANTS = {"opponent": {"model.colour": "opponent"}, "rgb": {"model.colour": "rgb"}}  # label "preset+variant"
GRID = [0.001 * 2**i for i in range(11)]  # 0.001 … 1.024, a factor 2 apart; the best is refined by √2


def _score(path: Path, heldout: Path, solve: dict) -> dict:
    result = evaluate([path], data=heldout, seed=0, **solve)
    return scores(result, result.labels[0]) | {"observation": scores(result, "observation")}


def hand_tuned(config, work: Path, heldout: Path, tune: Path, grid: list[float], solve: dict) -> dict:
    """The uniform start ``init_lambda = w`` for each w of ``grid``, then the √2 neighbours of the best
    on ``tune``; each scored on ``tune`` (``psnr_tune``) and on the held-out images (``psnr``). ``best``:
    chosen on ``tune``; ``oracle``: the best held-out score."""
    rows = []

    def score(w: float) -> None:
        path = work / f"lambda-{w:.4g}.safetensors"
        save_initial(path, with_overrides(config, {"model.init": "paper", "model.init_lambda": w}, "sweep"))
        rows.append({"init_lambda": w, **_score(path, heldout, solve),
                     "psnr_tune": _score(path, tune, solve)["psnr"]})
        print(f"    λ = {w:.4g}: {rows[-1]['psnr_tune']:.2f} dB tuning, {rows[-1]['psnr']:.2f} dB held out", flush=True)

    def best(key: str) -> dict:
        return max(rows, key=lambda r: r[key] if math.isfinite(r[key]) else -1)

    for w in grid:
        score(w)
    for w in (best("psnr_tune")["init_lambda"] / math.sqrt(2), best("psnr_tune")["init_lambda"] * math.sqrt(2)):
        score(w)
    keep = ("init_lambda", "psnr", "ssim", "psnr_tune")
    return {"best": {k: best("psnr_tune")[k] for k in keep}, "oracle": {k: best("psnr")[k] for k in keep},
            "grid": sorted(rows, key=lambda r: r["init_lambda"])}


def run_prior(label: str, overrides: dict, args, train_dir: Path, heldout: Path, tune: Path, work: Path) -> dict:
    """Learned and hand-tuned scores of one preset, ``label`` = ``preset`` or ``preset+variant``
    (:data:`VARIANTS`: overrides on top of the preset's)."""
    preset, _, variant = label.partition("+")
    steps = args.steps_for.get(label, args.steps)
    config = resolve(preset, overrides | VARIANTS.get(variant, {}) | {"train.steps": steps, "train.crop": args.crop})
    print(f"{label}:", flush=True)
    seconds, _, log = train_run(config, work / label, train_dir, reuse=args.keep)
    learned = _score(work / label / "theta.safetensors", heldout, args.solve)
    print(f"  learned: {learned['psnr']:.2f} dB", flush=True)
    sweep = hand_tuned(config, work / f"{label}-sweep", heldout, tune, GRID[::4] if args.quick else GRID, args.solve)
    final = read_log(work / label / "log.csv")[-1][2]
    return {"learned": learned | {"steps": steps, "train_seconds": seconds, "final_train_psnr": final, "log": log},
            "hand_tuned": sweep}


def plot(path: Path, table: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in table))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = [r for r in table if r["task"] == task]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r["hand_tuned_psnr"] for r in rows], 0.4, label="best single weight")
        ax.bar([i + 0.2 for i in x], [r["learned_psnr"] for r in rows], 0.4, label="learned (ReTune)")
        low = min(min(r["hand_tuned_psnr"], r["learned_psnr"]) for r in rows)
        ax.set_ylim(low - 2, None)
        ax.set_xticks(list(x), [r["preset"].split("-", 1)[1] for r in rows], rotation=30, ha="right")
        ax.set_title(f"{task} (observation {rows[0]['observation_psnr']:.1f} dB)")
        ax.set_ylabel("held-out PSNR (dB)")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _steps_for(text: str) -> dict[str, int]:
    """``"denoise-filters=300,denoise-tv=200"`` → ``{preset: steps}``."""
    return {k: int(v) for k, v in (item.split("=") for item in text.split(",") if item)}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--steps-for", type=_steps_for, default={},
                        help="steps of some presets, e.g. denoise-filters=300,denoise-tv=200")
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--side", type=int, default=128, help="held-out center crops")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "experiment_priors.json")
    parser.add_argument("--keep", action="store_true", help="reuse finished runs in --work")
    parser.add_argument("--eval-T", type=int, default=None, help="restarts when scoring (default: the run's T)")
    parser.add_argument("--eval-accelerate", default=None, help="none or anderson (default: the run's)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 steps, 2 held-out 32² crops")
    parser.add_argument("--merge", action="store_true", help="keep the other tasks of an existing --json")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.crop, args.side, args.json = 2, 32, 32, Path("/tmp/retune-bench/experiment_priors.json")
    args.solve = {"T": args.eval_T, "accelerate": args.eval_accelerate}
    return args


def _run_tasks(args, work: Path, train_dir: Path, heldout: Path, tune: Path) -> tuple[dict, list[dict]]:
    """``(results per task, table rows)`` of ``--tasks``, with the other tasks of ``--json`` under ``--merge``."""
    results, table = {}, []
    if args.merge and args.json.is_file():
        kept = json.loads(args.json.read_text())
        results = {t: v for t, v in kept["tasks"].items() if t not in args.tasks.split(",")}
        table = [r for r in kept["table"] if r["task"] in results]
    for task in args.tasks.split(","):
        presets, overrides = TASKS[task]
        results[task] = {"priors": {}}
        for preset in presets:
            r = run_prior(preset, overrides, args, train_dir, heldout, tune, work / task.split()[0])
            results[task]["priors"][preset] = r
            results[task]["observation"] = r["learned"].pop("observation")
            table.append({"task": task, "preset": preset, "learned_psnr": r["learned"]["psnr"],
                          "hand_tuned_psnr": r["hand_tuned"]["best"]["psnr"],
                          "hand_tuned_oracle_psnr": r["hand_tuned"]["oracle"]["psnr"],
                          "gain_db": r["learned"]["psnr"] - r["hand_tuned"]["best"]["psnr"],
                          "observation_psnr": results[task]["observation"]["psnr"]})
    for r in table:  # the yardstick: each learned prior against total variation with its best weight
        tvs = [t for t in table if t["task"] == r["task"] and t["preset"].endswith("-tv")]
        tv, oracle = [t["hand_tuned_psnr"] for t in tvs], [t.get("hand_tuned_oracle_psnr") for t in tvs]
        r["vs_hand_tuned_tv_db"] = r["learned_psnr"] - tv[0] if tv else None
        r["vs_oracle_tv_db"] = r["learned_psnr"] - oracle[0] if oracle and oracle[0] is not None else None
    table.sort(key=lambda r: list(TASKS).index(r["task"]))
    return results, table


def main() -> None:
    args = _arguments()
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="retune-priors-"))
    train_dir, heldout, names = heldout_setup(work, args.side, 2 if args.quick else None)
    tune = work / "tune-crops"  # where a user would choose the single weight: images they have
    crop_heldout(train_dir, tune, args.side, 2 if args.quick else N_HELDOUT)
    results, table = _run_tasks(args, work, train_dir, heldout, tune)
    setup = {"data": "CBSD68 (first 60 train, last 8 held out)", "heldout": names, "steps": args.steps,
             "steps_for": args.steps_for, "tune": "center crops of the first 8 training images",
             "crop": args.crop, "side": args.side, "batch": 4, "seed": 0, "threads": 1, "grid": GRID,
             "eval": args.solve, "torch": torch.__version__}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"experiment": "priors", "setup": setup, "tasks": results, "table": table},
                                    indent=1))
    plot(args.json.with_suffix(".png"), table)
    for r in table:
        vs_tv = "" if r["vs_hand_tuned_tv_db"] is None else f"  vs hand-tuned TV {r['vs_hand_tuned_tv_db']:+.2f} dB"
        print(f"{r['task']:16s} {r['preset']:24s} learned {r['learned_psnr']:.2f}  hand-tuned "
              f"{r['hand_tuned_psnr']:.2f} (oracle {r.get('hand_tuned_oracle_psnr') or float('nan'):.2f})  "
              f"({r['gain_db']:+.2f} dB){vs_tv}")


if __name__ == "__main__":
    main()
