"""The built-in denoiser alone: PSNR of ``D_σ(x + σn)`` and of ``D_σ(x)`` (a clean photo must come back)
on held-out CBSD68 photographs (the last 8 by name, 192² center crops), for the shipped weights and any
other weight files given, at σ ∈ {0, 0.03, 0.05, 0.08, 0.10, 0.15} (seeded noise, one draw per photo);
and the PnP presets with each weight file, at their initial θ (σ = 0.2, τ = 0.5) and with θ = (σ, τ) trained
as the preset trains it (ReTune (10, 10), first 60 photographs): held-out PSNR by
:func:`retune_cli.evaluate.evaluate` on 128² center crops of the same photographs.

Output ``bench/results/builtin_denoiser.json``. One torch thread. Run:
``CBSD68=FOLDER .venv/bin/python bench/builtin_denoiser.py [--weights OLD.safetensors ...]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from experiment_common import heldout_setup, save_initial, scores, train_run

from retune_cli.config import resolve
from retune_cli.denoisers import builtin_weights, load_denoiser
from retune_cli.evaluate import evaluate
from retune_cli.images import read_image

SIGMAS = (0.0, 0.03, 0.05, 0.08, 0.10, 0.15)
PRESETS = ("inpaint-pnp", "sr4-pnp")


def psnr(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float(-10 * torch.log10(torch.mean((x.clamp(0, 1) - reference) ** 2)))


def denoised(weights: Path, clean: list[torch.Tensor]) -> dict[str, float]:
    """Mean PSNR of the denoised photos per σ (``σ=0``: the clean photo given at σ = 0.03, returned)."""
    denoiser = load_denoiser(str(weights)).eval()
    out = {}
    with torch.no_grad():
        for sigma in SIGMAS:
            values = []
            for i, x in enumerate(clean):
                noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
                level = sigma if sigma > 0 else 0.03
                values.append(psnr(denoiser(x + sigma * noise, torch.tensor([level])), x))
            out["clean, σ=0.03" if sigma == 0 else f"σ={sigma:g}"] = sum(values) / len(values)
    return out


def presets(weights: dict[str, str], work: Path) -> dict[str, dict[str, float]]:
    """Held-out PSNR of each PnP preset per weight file, initial and trained θ (and the observation)."""
    train_dir, crops, _ = heldout_setup(work, 128)
    out = {}
    for preset in PRESETS:
        paths, labels = [], []
        for label, path in weights.items():
            config = resolve(preset, {"model.denoiser": path})
            paths.append(work / f"{preset}-{label}.safetensors")
            save_initial(paths[-1], config)
            train_run(config, work / f"{preset}-{label}", train_dir)
            paths.append(work / f"{preset}-{label}" / "theta.safetensors")
            labels += [f"{label}, initial θ", f"{label}, trained θ"]
        result = evaluate(paths, data=crops, seed=0)
        out[preset] = {"observation": scores(result, "observation")["psnr"]}
        out[preset] |= {label: scores(result, result.labels[i])["psnr"] for i, label in enumerate(labels)}
        print(preset, {k: round(v, 2) for k, v in out[preset].items()}, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, nargs="*", default=[], help="other weight files to compare")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "builtin_denoiser.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="retune-denoiser-"))
    _, crops, names = heldout_setup(work / "denoise", 192)
    clean = [read_image(f)[None] for f in sorted(crops.iterdir())]
    noisy = {f"σ={s:g}": sum(psnr(x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(i)), x)
                             for i, x in enumerate(clean)) / len(clean) for s in SIGMAS if s > 0}
    weights = {"builtin": str(builtin_weights())} | {path.name: str(path) for path in args.weights}
    results = {"observation": noisy} | {label: denoised(Path(path), clean) for label, path in weights.items()}
    for name, row in results.items():
        print(name, {k: round(v, 2) for k, v in row.items()}, flush=True)
    pnp = presets(weights, work / "presets")
    args.json.write_text(json.dumps({"experiment": "built-in denoiser", "images": names, "side": 192, "threads": 1,
                                     "torch": torch.__version__, "psnr": results, "pnp_presets_initial": pnp},
                                    indent=1))


if __name__ == "__main__":
    main()
