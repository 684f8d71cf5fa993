"""Photographs degraded outside retune, restored with the ready-made models, against what a user would
try instead (README: "Restore your own photos").

Held-out CBSD68 photographs (the last 8 by name, 192² center crops) are degraded with numpy and Pillow,
clipped and quantized to 8-bit PNGs as a user's files arrive, then restored through the workflow
``retune restore`` calls (:func:`retune_cli.restore.restore_file`, the written PNG scored):

* ``denoise σ=S``: Gaussian noise S ∈ {0.03, 0.05, 0.08, 0.10, 0.15}; the ``denoise`` model with
  ``--sigma auto`` and with the true S; the estimate's relative error per channel; baseline: deepinv's
  TV denoiser with its best weight γ on these photos (swept, an oracle);
* ``deblur gaussian`` / ``deblur motion``: a Gaussian kernel (σ = 1.6 px, 13×13) or a seeded camera-shake
  kernel (deepinv's generator, 13×13), applied with reflected edges (as editors blur), noise 0.01; the
  ``deblur`` model with ``--kernel --sigma auto`` (as ``--model`` restores) and the default ``reflect``
  boundary, and with ``circular``;
  baseline: the blurred photo itself;
* ``inpaint strokes`` / ``inpaint text``: 6–10 px brush strokes or large text drawn white on black with
  Pillow (a mask as drawing tools make it, white = hole), the holes black in the photo; the ``inpaint``
  and ``scratches`` models with ``--invert-mask --sigma auto --tol 1e-3`` (holes of 10 px need more restarts than random
  pixels); baseline: the harmonic fill (Laplace equation on the holes,
  the known pixels as boundary values, Jacobi to convergence);
* ``sr ×2`` / ``sr ×4``: the photo downscaled by Pillow's bicubic resize; the ``sr2``/``sr4`` models with
  ``--sigma auto`` (as ``--model`` restores) and at their training σ; baseline: Pillow's bicubic upsampling.

Output ``bench/results/real_photos.json`` (mean PSNR per task and method, σ errors, seconds) and a printed
table. One torch thread. Run: ``CBSD68=FOLDER .venv/bin/python bench/real_photos.py [--count 8]``; only
some rows: ``--tasks inpaint`` (the other rows of the JSON kept); another inpainting checkpoint:
``--inpaint-model PATH --json OTHER.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from experiment_common import heldout_setup
from PIL import Image, ImageDraw

from retune_cli.images import read_image
from retune_cli.ready import ready_model
from retune_cli.restore import Output, load_model, restore_file

SIGMAS = (0.03, 0.05, 0.08, 0.10, 0.15)
TV_FACTORS = (0.35, 0.5, 0.7, 1.0, 1.4)  # deepinv TV's γ = κσ swept (the best κ measured 0.6–0.8)


def save_png(path: Path, x: np.ndarray) -> Path:
    """``x`` (H×W×3 floats) clipped and quantized to an 8-bit PNG."""
    Image.fromarray((np.clip(x, 0, 1) * 255).round().astype(np.uint8)).save(path)
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a - b) ** 2)))


def reflect_blur(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``x`` convolved with ``kernel`` (odd sides), edges reflected, the result the size of ``x``."""
    h, w = kernel.shape
    padded = np.pad(x, ((h // 2, h // 2), (w // 2, w // 2), (0, 0)), mode="reflect")
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            out += kernel[h - 1 - i, w - 1 - j] * padded[i:i + x.shape[0], j:j + x.shape[1]]
    return out


def kernels() -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[-6:7, -6:7]
    gaussian = np.exp(-(yy**2 + xx**2) / (2 * 1.6**2))
    from deepinv.physics.generator import MotionBlurGenerator

    motion = MotionBlurGenerator((13, 13), rng=torch.Generator().manual_seed(3)).step(1, seed=3)["filter"]
    return {"gaussian": gaussian / gaussian.sum(), "motion": motion[0, 0].double().numpy()}


def hole_mask(kind: str, side: int, seed: int) -> np.ndarray:
    """White-on-black holes (H×W bool, True = hole): brush strokes or text."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (side, side))
    draw = ImageDraw.Draw(image)
    if kind == "strokes":
        for _ in range(6):
            points = [tuple(int(v) for v in rng.integers(0, side, 2)) for _ in range(4)]
            draw.line(points, fill=255, width=int(rng.integers(6, 11)), joint="curve")
    else:
        from PIL import ImageFont

        font = ImageFont.load_default(size=26)
        for row in range(4):
            draw.text((8, 10 + 45 * row), "retune 2026", fill=255, font=font)
    return np.asarray(image) > 127


def harmonic_fill(x: np.ndarray, holes: np.ndarray, iterations: int = 4000) -> np.ndarray:
    """The Laplace equation on the holes (Jacobi), the known pixels fixed: the classic fill."""
    out = x.copy()
    out[holes] = x[~holes].mean(axis=0)
    for _ in range(iterations):
        padded = np.pad(out, ((1, 1), (1, 1), (0, 0)), mode="edge")
        mean = (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]) / 4
        out[holes] = mean[holes]
    return out


def restore(model, image: Path, out: Path, clean: Path, **options) -> dict:
    start = time.perf_counter()
    result = restore_file(model, image, output=Output(out), reference=clean, **options)
    return {"psnr": result.psnr, "seconds": time.perf_counter() - start,
            "sigma": None if result.noise is None else list(result.noise.given)}


def deepinv_tv(noisy: list[Path], clean: list[np.ndarray], sigma: float) -> tuple[float, float]:
    """deepinv's TV denoiser ``argmin ½‖x − y‖² + γ‖Dx‖₁,₂`` (isotropic, per channel, to its 1e-5 criterion)
    with the γ = κσ of :data:`TV_FACTORS` best on these photos (an oracle, in the classic's favour), the
    result quantized to 8 bits as a written PNG: ``(mean PSNR, γ)``."""
    from deepinv.models import TVDenoiser

    def score(gamma: float) -> float:
        values = []
        for path, x in zip(noisy, clean):
            with torch.no_grad():
                out = TVDenoiser(n_it_max=1000)(read_image(path)[None].double(), ths=gamma)[0].numpy()
            values.append(psnr(np.round(np.clip(out, 0, 1) * 255) / 255, x.transpose(2, 0, 1)))
        return float(np.mean(values))

    return max((score(k * sigma), k * sigma) for k in TV_FACTORS)


def denoise_rows(clean: dict[str, np.ndarray], crops: Path, work: Path) -> dict:
    model = load_model(ready_model("denoise").path)
    rows = {}
    for sigma in SIGMAS:
        runs = {"observation": [], "auto": [], "true σ": [], "σ error": [], "seconds": []}
        noisy_files = []
        for i, (name, x) in enumerate(clean.items()):
            noisy = save_png(work / f"n{sigma}-{name}", x + np.random.default_rng(i).normal(0, sigma, x.shape))
            noisy_files.append(noisy)
            runs["observation"].append(psnr(read_image(noisy).numpy(), x.transpose(2, 0, 1)))
            auto = restore(model, noisy, work / "auto.png", crops / name, sigma="auto")
            true = restore(load_model(ready_model("denoise").path, sigma=sigma), noisy, work / "t.png", crops / name)
            runs["auto"].append(auto["psnr"])
            runs["true σ"].append(true["psnr"])
            runs["σ error"] += [abs(s / sigma - 1) for s in auto["sigma"]]
            runs["seconds"].append(auto["seconds"])
        tv, gamma = deepinv_tv(noisy_files, list(clean.values()), sigma)
        rows[f"denoise σ={sigma:g}"] = _summary(runs) | {"sigma_error_worst": max(runs["σ error"]),
                                                         "deepinv TV, best γ": tv, "deepinv TV γ": gamma}
        print(f"denoise σ={sigma:g}: {rows[f'denoise σ={sigma:g}']}", flush=True)
    return rows


def deblur_rows(clean: dict[str, np.ndarray], crops: Path, work: Path) -> dict:
    rows = {}
    for kind, kernel in kernels().items():
        np.save(work / "kernel.npy", kernel.astype(np.float32))
        runs = {"observation": [], "reflect": [], "circular": [], "seconds": []}
        for i, (name, x) in enumerate(clean.items()):
            blurred = reflect_blur(x, kernel) + np.random.default_rng(i).normal(0, 0.01, x.shape)
            path = save_png(work / f"b-{kind}-{name}", blurred)
            runs["observation"].append(psnr(read_image(path).numpy(), x.transpose(2, 0, 1)))
            for boundary in ("reflect", "circular"):
                model = load_model(ready_model("deblur").path, boundary=boundary)
                r = restore(model, path, work / "d.png", crops / name, operators={"kernel": work / "kernel.npy"},
                            sigma="auto")
                runs[boundary].append(r["psnr"])
            runs["seconds"].append(r["seconds"])
        rows[f"deblur {kind}"] = _summary(runs)
        print(f"deblur {kind}: {rows[f'deblur {kind}']}", flush=True)
    return rows


def inpaint_rows(clean: dict[str, np.ndarray], crops: Path, work: Path, model_path: Path | None = None) -> dict:
    """The inpainting rows with the ready ``inpaint`` and ``scratches`` models, or the checkpoint ``model_path``
    (column ``retune``)."""
    paths = {"retune": model_path} if model_path else {m: ready_model(m).path for m in ("inpaint", "scratches")}
    models = {column: load_model(path) for column, path in paths.items()}
    rows = {}
    for kind in ("strokes", "text"):
        runs = {"observation": [], "harmonic fill": [], **{c: [] for c in models},
                **{f"{c} seconds": [] for c in models}}
        for i, (name, x) in enumerate(clean.items()):
            holes = hole_mask(kind, x.shape[0], i)
            Image.fromarray((holes * 255).astype(np.uint8)).save(work / "holes.png")
            damaged = x.copy()
            damaged[holes] = 0
            path = save_png(work / f"h-{kind}-{name}", damaged)
            stored = read_image(path).numpy().transpose(1, 2, 0)
            runs["observation"].append(psnr(stored, x))
            runs["harmonic fill"].append(psnr(np.round(harmonic_fill(stored, holes) * 255) / 255, x))
            for column, model in models.items():
                r = restore(model, path, work / "i.png", crops / name, operators={"mask": work / "holes.png"},
                            invert_mask=True, sigma="auto", tol=1e-3)
                runs[column].append(r["psnr"])
                runs[f"{column} seconds"].append(r["seconds"])
        rows[f"inpaint {kind}"] = _summary(runs)
        print(f"inpaint {kind}: {rows[f'inpaint {kind}']}", flush=True)
    return rows


def sr_rows(clean: dict[str, np.ndarray], crops: Path, work: Path) -> dict:
    """×2 and ×4: the photo downscaled by Pillow's bicubic resize (antialiased, as editors and torchvision
    make small images), 8-bit; the ready ``sr2``/``sr4`` model as ``--model`` restores (``--sigma auto``) and
    at its training σ; baseline: Pillow's bicubic upsampling of the small PNG."""
    rows = {}
    for factor in (2, 4):
        path = ready_model(f"sr{factor}").path
        runs = {"bicubic": [], "auto": [], "trained σ": [], "seconds": []}
        for name, x in clean.items():
            side = x.shape[0] // factor
            small = Image.open(crops / name).convert("RGB").resize((side, side), Image.BICUBIC)
            small.save(work / f"s{factor}-{name}")
            bicubic = np.asarray(small.resize((x.shape[1], x.shape[0]), Image.BICUBIC), dtype=np.float64) / 255
            runs["bicubic"].append(psnr(bicubic, x))
            auto = restore(load_model(path), work / f"s{factor}-{name}", work / "sr.png", crops / name, sigma="auto",
                           scale=factor)
            trained = restore(load_model(path), work / f"s{factor}-{name}", work / "sr.png", crops / name,
                              scale=factor)
            runs["auto"].append(auto["psnr"])
            runs["trained σ"].append(trained["psnr"])
            runs["seconds"].append(auto["seconds"])
        rows[f"sr ×{factor}"] = _summary(runs)
        print(f"sr ×{factor}: {rows[f'sr ×{factor}']}", flush=True)
    return rows


def _summary(runs: dict[str, list[float]]) -> dict:
    return {k: float(np.mean(v)) for k, v in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8, help="held-out photographs")
    parser.add_argument("--side", type=int, default=192)
    parser.add_argument("--tasks", default="denoise,deblur,inpaint,sr")
    parser.add_argument("--inpaint-model", type=Path, help="a checkpoint to score instead of the ready inpaint model")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "real_photos.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="retune-real-"))
    _, crops, names = heldout_setup(work, args.side, args.count)
    clean = {f.name: read_image(f).numpy().transpose(1, 2, 0).astype(np.float64) for f in sorted(crops.iterdir())}
    tasks = {"denoise": denoise_rows, "deblur": deblur_rows, "sr": sr_rows,
             "inpaint": functools.partial(inpaint_rows, model_path=args.inpaint_model)}
    rows = json.loads(args.json.read_text())["tasks"] if args.json.is_file() else {}  # other tasks kept
    for task in args.tasks.split(","):
        rows |= tasks[task](clean, crops, work)
    setup = {"data": "CBSD68, the last 8 by name (held out from the ready models' training)",
             "images": names[:args.count], "side": args.side, "threads": 1, "torch": torch.__version__}
    args.json.write_text(json.dumps({"experiment": "real photos", "setup": setup, "tasks": rows}, indent=1))


if __name__ == "__main__":
    main()
