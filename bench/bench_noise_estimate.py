"""Accuracy and speed of the single-image noise-level estimator (``restore --sigma auto``,
:func:`retune_cli.noise_estimate.estimate_noise`) on the held-out CBSD68 photographs.

Each held-out photo (the last 8 PNGs of ``$CBSD68`` sorted by name, default /work/shared/data/CBSD68, the
split of the experiments) gets seeded Gaussian noise σ ∈ {0.03, 0.05, 0.08, 0.10, 0.15}, is clipped to
[0, 1] and quantized to 8 bits as a saved PNG would be, and σ is estimated per channel. Per σ: the mean
and the worst relative error ``σ̂/σ − 1`` over images × channels (goal: worst ≤ 10 %), and the seconds
per image (median, CPU, one thread). Also measured: the same noise without clipping and quantization
(what 8-bit files cost), and the estimate on each clean photo, σ₀ — the photographs' own film grain and
fine texture, which an estimator of white noise sees as well: even an exact one would read
``√(σ² + σ₀²)``; ``worst_vs_grain`` is the worst error against that.

    python bench/bench_noise_estimate.py [--patch 7] [--json PATH] [--quick]

``--quick``: a smoke run (2 photos, 2 noise levels, output in /tmp/retune-bench/noise_estimate.json).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from common import flags, limit_threads, machine_info, parse_args, write_json

from retune_cli.noise_estimate import estimate_noise

DATA = Path(os.environ.get("CBSD68", "/work/shared/data/CBSD68"))
SIGMAS = (0.03, 0.05, 0.08, 0.10, 0.15)
HELD_OUT = 8
GOAL = 0.10  # worst relative error


def read_photo(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


def noisy(x: torch.Tensor, sigma: float, seed: int, stored: bool) -> torch.Tensor:
    """``x`` + seeded noise σ; ``stored``: clipped to [0, 1] and quantized to 1/255 (an 8-bit PNG)."""
    y = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return ((y.clamp(0, 1) * 255).round() / 255) if stored else y


def errors_summary(errors: list[tuple[str, int, float]]) -> dict:
    """Mean |error|, mean signed error (bias) and the worst one (largest |error|, with its photo and channel)."""
    values = np.array([e for _, _, e in errors])
    name, channel, worst = max(errors, key=lambda t: abs(t[2]))
    return {"mean_rel_error": float(np.abs(values).mean()), "bias": float(values.mean()),
            "worst_rel_error": worst, "worst_at": f"{name} channel {'RGB'[channel]}"}


def measure(photos: dict[str, torch.Tensor], sigmas: tuple[float, ...], patch: int,
            clean: dict[str, list[float]]) -> dict:
    results = {}
    for k, sigma in enumerate(sigmas):
        row: dict = {}
        for stored in (True, False):
            errors, seconds, grain = [], [], []
            for i, (name, x) in enumerate(photos.items()):
                y = noisy(x, sigma, seed=1000 * k + i, stored=stored)
                start = time.perf_counter()
                estimate = estimate_noise(y, patch=patch)
                seconds.append(time.perf_counter() - start)
                errors += [(name, c, s / sigma - 1) for c, s in enumerate(estimate)]
                grain += [(name, c, s / np.hypot(sigma, clean[name][c]) - 1) for c, s in enumerate(estimate)]
            if stored:
                row = {**errors_summary(errors), "seconds_per_image": statistics.median(seconds),
                       "goal_met": abs(errors_summary(errors)["worst_rel_error"]) <= GOAL,
                       "worst_vs_grain": errors_summary(grain)["worst_rel_error"],
                       "worst_vs_grain_at": errors_summary(grain)["worst_at"]}
            else:
                row["float_unclipped"] = errors_summary(errors)
        results[f"{sigma:.2f}"] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patch", type=int, default=7, help="patch side (default 7)")
    parser.add_argument("--data", type=Path, default=DATA, help=f"the CBSD68 folder (default $CBSD68 or {DATA})")
    args = parse_args(parser, "noise_estimate.json")
    limit_threads()
    started = time.perf_counter()
    files = sorted(p for p in args.data.iterdir() if p.suffix.lower() == ".png")[-HELD_OUT:]
    sigmas = SIGMAS[1::3] if args.quick else SIGMAS
    if args.quick:
        files = files[:2]
    photos = {p.name: read_photo(p) for p in files}
    clean = {name: list(estimate_noise((x * 255).round() / 255, patch=args.patch)) for name, x in photos.items()}
    results = measure(photos, sigmas, args.patch, clean)
    result = {
        "benchmark": "noise-level estimation",
        "machine": machine_info(torch.device("cpu")),
        "setup": {**flags(args), "data": str(args.data), "images": list(photos), "sigmas": list(sigmas),
                  "noise": "seeded Gaussian, clipped to [0, 1], quantized to 8 bits (float_unclipped: neither)",
                  "goal": f"worst relative error ≤ {GOAL:.0%} per σ"},
        "results": results,
        "clean_sigma": clean,
        "wall_s": time.perf_counter() - started,
    }
    path = write_json(args.json, result)
    print(f"noise-level estimation, {len(photos)} held-out CBSD68 photos × 3 channels, patch {args.patch}:")
    print(f"  {'σ':>5}  {'mean err':>8}  {'bias':>7}  {'worst err':>9}  {'vs √(σ²+σ₀²)':>12}  "
          f"{'float/unclipped worst':>21}  {'s/image':>7}")
    for sigma, row in results.items():
        print(f"  {sigma:>5}  {row['mean_rel_error']:8.1%}  {row['bias']:+7.1%}  {row['worst_rel_error']:+9.1%}  "
              f"{row['worst_vs_grain']:+12.1%}  "
              f"{row['float_unclipped']['worst_rel_error']:+21.1%}  {row['seconds_per_image']:7.3f}"
              + ("" if row["goal_met"] else f"   > {GOAL:.0%}: {row['worst_at']}"))
    print("  clean photos' own σ₀ (max over channels): "
          + ", ".join(f"{name} {max(s):.4f}" for name, s in clean.items()))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
