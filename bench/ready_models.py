"""Train the ready-made models shipped in the wheel (``retune models``, ``retune restore IMAGE --model NAME``).

Each is a preset (with the overrides below) trained with ReTune on public photographs — the first 60
images of CBSD68 (Berkeley Segmentation Dataset, colour test set; the last 8 are held out) — for the
steps below, batch 4, the preset's crop (128, or 96 for ``inpaint-filters``), seed 0, CPU. The held-out PSNR is
:func:`retune_cli.evaluate.evaluate` on 128² center crops of the 8 held-out images, degraded as the
training degrades them (seed 0). Writes
``retune_cli/ready/<name>.safetensors`` (θ: kilobytes), ``retune_cli/ready/catalog.yaml`` (what
``retune models`` lists) and ``bench/results/ready_models.json``.
Run: ``CBSD68=FOLDER .venv/bin/python bench/ready_models.py [--only denoise]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import yaml
from experiment_common import heldout_setup, scores, train_run
from safetensors import safe_open
from safetensors.torch import save_file

from retune_cli.config import resolve
from retune_cli.evaluate import evaluate
from retune_cli.ready import CATALOG, READY

# ×4: TV beat θ_BC by 0.4 dB on PIL-downscaled photos; on opponent colours +0.12 dB more (held out)
SR4 = {"model.prior": "tv", "model.scheme": "pd", "train.K": 40, "model.colour": "opponent"}
OPPONENT = {"model.colour": "opponent"}  # TV on opponent colours: +2.3 dB (denoising), +2.6 dB (deblurring) held out
MODELS = {  # name: (preset, overrides, steps, what it restores and how to use it)
    "denoise": ("denoise-tv", OPPONENT, 200, "Gaussian noise of any level (trained at σ = 0.08): --sigma auto (the "
                "default with --model) or --sigma S"),
    "inpaint": ("inpaint-tv", {}, 100, "missing pixels: --mask FILE (white = known; --invert-mask for white = "
                "holes)"),
    "scratches": ("inpaint-filters", {}, 120, "holes several pixels wide (brush strokes, scratches, text): --mask "
                  "FILE (white = known; --invert-mask for white = holes); about 10× slower than inpaint"),
    "deblur": ("deblur-tv", OPPONENT, 100, "a known blur: --kernel FILE.npy (the blur of your camera or tool)"),
    "sr4": ("sr4-wavelet", SR4, 60, "×4 super-resolution of a small photo (downscaled as PIL and torchvision "
            "resize do): the result is 4× larger"),
    "sr2": ("sr2-wavelet", {}, 60, "×2 super-resolution of a small photo (downscaled as PIL and torchvision "
            "resize do): the result is 2× larger"),
}
TRAINED_ON = "CBSD68 images 1–60 (public BSD photographs), {crop}² crops"


def _described(preset: str, overrides: dict) -> str:
    """The preset and the overrides it was trained with, as ``retune models`` shows them."""
    changes = ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in overrides.items())
    return f"{preset} with {changes}" if changes else preset


def publish(source: Path, target: Path, trained_on: str) -> None:
    """Ship a run's checkpoint: its ``data`` metadata (the temporary training folder) replaced by what it was
    trained on, which ``retune show`` prints."""
    with safe_open(str(source), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file(tensors, str(target), metadata=metadata | {"data": trained_on})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(MODELS))
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "ready_models.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="retune-ready-"))
    train_dir, heldout, names = heldout_setup(work, 128)
    catalog = yaml.safe_load(CATALOG.read_text()) if CATALOG.is_file() else {}
    results = json.loads(args.json.read_text())["models"] if args.json.is_file() else {}
    for name in args.only.split(","):
        preset, overrides, steps, use = MODELS[name]
        config = resolve(preset, overrides | {"train.steps": steps})
        seconds, _, _ = train_run(config, work / name, train_dir)
        result = evaluate([work / name / "theta.safetensors"], data=heldout, seed=0)
        learned, observation = scores(result, result.labels[0]), scores(result, "observation")
        trained_on = f"{TRAINED_ON.format(crop=config.train.crop)}, {steps} steps"
        publish(work / name / "theta.safetensors", READY / f"{name}.safetensors", trained_on)
        catalog[name] = {"file": f"{name}.safetensors", "preset": _described(preset, overrides), "restores": use,
                         "trained_on": trained_on,
                         "heldout": f"{learned['psnr']:.2f} dB (observation {observation['psnr']:.2f} dB), "
                                    "CBSD68 images 61–68"}
        results[name] = {"preset": preset, "overrides": overrides, "steps": steps, "train_seconds": seconds,
                         "heldout": names, "psnr": learned["psnr"], "ssim": learned["ssim"], "observation": observation}
        print(f"{name}: {learned['psnr']:.2f} dB held out (observation {observation['psnr']:.2f} dB)", flush=True)
    CATALOG.write_text(yaml.safe_dump(catalog, sort_keys=False, allow_unicode=True))
    args.json.write_text(json.dumps({"experiment": "ready models", "threads": 1, "models": results}, indent=1))


if __name__ == "__main__":
    main()
