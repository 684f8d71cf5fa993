"""One 2-D DWT + IDWT (analysis then synthesis) of a 4×3×256×256 float32 batch, 4 levels of db4.

* ours: ``retune_cli.core.wavelets.WaveletTransform`` (orthonormal, periodized), without autograd;
  also its analysis and synthesis alone, and forward + backward under autograd;
* PyWavelets: ``wavedec2`` / ``waverec2``, ``mode="periodization"``, ``axes=(-2, -1)``, on the numpy array
  (the reference our coefficients must equal);
* ptwt: ``wavedec2`` / ``waverec2``. ptwt has no periodization mode (its "periodic" pads periodically and
  keeps redundant coefficients), so it runs with its default ``"reflect"`` and with ``"zero"`` (deepinv's
  default): neither transform is orthonormal, and both make more coefficients than the input has.
  ptwt's forward + backward ("reflect") is timed too.

Also recorded: a torch.profiler table (self CPU time per op) of our analysis and of our synthesis.

Median of ``--runs`` (≥ 20) timings after a warm-up, the methods interleaved in a shuffled order each
round so that drift of the machine hits them alike; ``torch.set_num_threads(1)``.

    python bench/bench_wavelets.py [--runs 30]
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
from common import limit_threads, machine_info, pick_device, summary, synchronize, time_call, write_json

from retune_cli.core.wavelets import Coefficients, WaveletTransform

SHAPE = (4, 3, 256, 256)
WAVELET, LEVELS = "db4", 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per method (≥20); default 30")
    args = parser.parse_args()
    if args.runs < 20:
        parser.error("--runs must be at least 20")
    limit_threads()
    device = pick_device()
    import ptwt
    import pywt

    started = time.perf_counter()
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float32).to(device)
    cotangent = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float32).to(device)
    x_np = x.cpu().numpy()
    ours = WaveletTransform(WAVELET, LEVELS)
    wavelet = pywt.Wavelet(WAVELET)

    def ours_roundtrip():
        with torch.no_grad():
            return ours.synthesis(ours.analysis(x))

    with torch.no_grad():
        coeffs = ours.analysis(x)

    def ours_analysis():
        with torch.no_grad():
            return ours.analysis(x)

    def ours_synthesis():
        with torch.no_grad():
            return ours.synthesis(coeffs)

    def ours_forward_backward():
        xg = x.detach().requires_grad_(True)
        ours.synthesis(ours.analysis(xg)).backward(cotangent)
        return xg.grad

    def pywt_roundtrip():
        c = pywt.wavedec2(x_np, wavelet, mode="periodization", level=LEVELS, axes=(-2, -1))
        return pywt.waverec2(c, wavelet, mode="periodization", axes=(-2, -1))

    def ptwt_roundtrip(mode: str):
        def run():
            with torch.no_grad():
                return ptwt.waverec2(ptwt.wavedec2(x, wavelet, mode=mode, level=LEVELS), wavelet)

        return run

    def ptwt_forward_backward():
        xg = x.detach().requires_grad_(True)
        ptwt.waverec2(ptwt.wavedec2(xg, wavelet, mode="reflect", level=LEVELS), wavelet).backward(cotangent)
        return xg.grad

    methods = {
        "ours_roundtrip": ours_roundtrip,
        "ours_analysis": ours_analysis,
        "ours_synthesis": ours_synthesis,
        "ours_forward_backward": ours_forward_backward,
        "pywt_periodization_roundtrip": pywt_roundtrip,
        "ptwt_reflect_roundtrip": ptwt_roundtrip("reflect"),
        "ptwt_zero_roundtrip": ptwt_roundtrip("zero"),
        "ptwt_reflect_forward_backward": ptwt_forward_backward,
    }

    # correctness, recorded next to the timings: ours against PyWavelets, reconstructions
    ref = pywt.wavedec2(x_np, wavelet, mode="periodization", level=LEVELS, axes=(-2, -1))
    ours_coeffs = ours.analysis(x)
    diffs = [np.abs(ours_coeffs.approx.cpu().numpy() - ref[0]).max()]
    for d, r in zip(ours_coeffs.details, ref[1:]):
        diffs.append(np.abs(d.cpu().numpy() - np.stack(r, axis=2)).max())
    n_ptwt = {
        mode: sum(
            c.numel() if isinstance(c, torch.Tensor) else sum(b.numel() for b in c)
            for c in ptwt.wavedec2(x, wavelet, mode=mode, level=LEVELS)
        )
        for mode in ("reflect", "zero")
    }
    checks = {
        "max_abs_coeff_diff_ours_vs_pywt": float(max(diffs)),
        "max_abs_reconstruction_error": {
            "ours": float((ours_roundtrip() - x).abs().max()),
            "pywt_periodization": float(np.abs(pywt_roundtrip() - x_np).max()),
            "ptwt_reflect": float((ptwt_roundtrip("reflect")()[..., :256, :256] - x).abs().max()),
            "ptwt_zero": float((ptwt_roundtrip("zero")()[..., :256, :256] - x).abs().max()),
        },
        "coefficients_per_batch": {"input": x.numel(), "ours_and_pywt_periodization": x.numel(), **n_ptwt},
        "adjoint_gap_ours": float(
            abs(
                sum((a * b).sum() for a, b in zip(_flat(ours_coeffs), _flat(ours.analysis(cotangent))))
                - (x * cotangent).sum()
            )
            / (x * cotangent).sum().abs()
        ),
    }

    for fn in methods.values():  # warm-up
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in methods}
    rng = random.Random(0)
    for _ in range(args.runs):
        order = list(methods)
        rng.shuffle(order)
        for name in order:
            samples[name].append(time_call(methods[name], device))
    timings = {name: summary(s) for name, s in samples.items()}
    profiles = {name: op_profile(methods[name], device) for name in ("ours_analysis", "ours_synthesis")}
    med = {name: t["median_s"] for name, t in timings.items()}
    ratios = {
        "ours_over_pywt": med["ours_roundtrip"] / med["pywt_periodization_roundtrip"],
        "ours_over_ptwt_reflect": med["ours_roundtrip"] / med["ptwt_reflect_roundtrip"],
        "ours_over_ptwt_zero": med["ours_roundtrip"] / med["ptwt_zero_roundtrip"],
        "ours_forward_backward_over_ours_roundtrip": med["ours_forward_backward"] / med["ours_roundtrip"],
        "ours_forward_backward_over_ptwt_reflect_forward_backward": med["ours_forward_backward"]
        / med["ptwt_reflect_forward_backward"],
    }
    info = machine_info(device)
    result = {
        "benchmark": "wavelet analysis + synthesis",
        "machine": info,
        "setup": {
            "shape": list(SHAPE),
            "dtype": "float32",
            "wavelet": WAVELET,
            "levels": LEVELS,
            "runs": args.runs,
            "notes": "ptwt has no periodization mode: timed with 'reflect' (its default) and 'zero' (deepinv's "
            "default); its transforms are then not orthonormal and redundant. pywt runs on the numpy array.",
        },
        "timings": timings,
        "ratios": ratios,
        "checks": checks,
        "profiles": profiles,
        "wall_s": time.perf_counter() - started,
    }
    path = write_json("wavelets.json", result)
    print(
        f"DWT+IDWT, {'×'.join(map(str, SHAPE))} float32, {WAVELET} × {LEVELS} levels, "
        f"{info['torch_threads']} thread(s):"
    )
    for name in methods:
        print(f"  {name:32s} {med[name] * 1e3:8.2f} ms (median of {args.runs})")
    for name, r in ratios.items():
        print(f"  {name:58s} {r:6.2f}")
    print(f"  max |ours − pywt| coefficient: {checks['max_abs_coeff_diff_ours_vs_pywt']:.2e}")
    for name, rows in profiles.items():
        print(f"  {name} top ops: " + ", ".join(f"{r['op']} {r['share']:.0%}" for r in rows[:3]))
    print(f"wrote {path}")


def op_profile(fn, device: torch.device, top: int = 8) -> list[dict]:
    """Self CPU time per op over 5 calls of ``fn`` (torch.profiler), largest first: where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    with profile(activities=activities) as prof:
        for _ in range(5):
            fn()
        synchronize(device)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    return [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_ms_per_call_of_fn": e.self_cpu_time_total / 5e3,
            "share": e.self_cpu_time_total / total,
        }
        for e in rows[:top]
    ]


def _flat(c: Coefficients) -> list[torch.Tensor]:
    return [c.approx, *c.details]


if __name__ == "__main__":
    main()
