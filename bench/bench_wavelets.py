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

    python bench/bench_wavelets.py [--runs 30] [--json PATH] [--quick]

``--quick``: a smoke run (a 1×3×128×128 batch, 3 runs, output in /tmp/retune-bench/wavelets.json).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import (
    interleaved,
    limit_threads,
    machine_info,
    op_profile,
    parse_args,
    pick_device,
    summary,
    time_call,
    write_json,
)

from retune_cli.core.wavelets import Coefficients, WaveletTransform

SHAPE = (4, 3, 256, 256)
QUICK_SHAPE = (1, 3, 128, 128)
WAVELET, LEVELS = "db4", 4


class Inputs:
    """The batch, a cotangent for the backward, the transforms."""

    def __init__(self, shape: tuple[int, ...], device: torch.device):
        import pywt

        self.shape = shape
        self.x = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float32).to(device)
        self.cotangent = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float32).to(device)
        self.x_np = self.x.cpu().numpy()
        self.ours = WaveletTransform(WAVELET, LEVELS)
        self.wavelet = pywt.Wavelet(WAVELET)
        with torch.no_grad():
            self.coeffs = self.ours.analysis(self.x)


def methods(i: Inputs) -> dict:
    import ptwt
    import pywt

    ours, x, wavelet = i.ours, i.x, i.wavelet

    @torch.no_grad()
    def ours_roundtrip():
        return ours.synthesis(ours.analysis(x))

    def forward_backward(roundtrip):
        def run():
            xg = x.detach().requires_grad_(True)
            roundtrip(xg).backward(i.cotangent)
            return xg.grad

        return run

    def pywt_roundtrip():
        c = pywt.wavedec2(i.x_np, wavelet, mode="periodization", level=LEVELS, axes=(-2, -1))
        return pywt.waverec2(c, wavelet, mode="periodization", axes=(-2, -1))

    def ptwt_roundtrip(mode: str, xx=None):
        return ptwt.waverec2(ptwt.wavedec2(x if xx is None else xx, wavelet, mode=mode, level=LEVELS), wavelet)

    return {
        "ours_roundtrip": ours_roundtrip,
        "ours_analysis": torch.no_grad()(lambda: ours.analysis(x)),
        "ours_synthesis": torch.no_grad()(lambda: ours.synthesis(i.coeffs)),
        "ours_forward_backward": forward_backward(lambda xg: ours.synthesis(ours.analysis(xg))),
        "pywt_periodization_roundtrip": pywt_roundtrip,
        "ptwt_reflect_roundtrip": torch.no_grad()(lambda: ptwt_roundtrip("reflect")),
        "ptwt_zero_roundtrip": torch.no_grad()(lambda: ptwt_roundtrip("zero")),
        "ptwt_reflect_forward_backward": forward_backward(lambda xg: ptwt_roundtrip("reflect", xg)),
    }


def checks(i: Inputs, run: dict) -> dict:
    """Ours against PyWavelets, reconstruction errors, coefficient counts, ⟨Dx, Dy⟩ = ⟨x, y⟩."""
    import ptwt
    import pywt

    x, x_np, h, w = i.x, i.x_np, i.shape[-2], i.shape[-1]
    ref = pywt.wavedec2(x_np, i.wavelet, mode="periodization", level=LEVELS, axes=(-2, -1))
    ours_coeffs = i.ours.analysis(x)
    diffs = [np.abs(ours_coeffs.approx.cpu().numpy() - ref[0]).max()]
    for d, r in zip(ours_coeffs.details, ref[1:]):
        diffs.append(np.abs(d.cpu().numpy() - np.stack(r, axis=2)).max())
    n_ptwt = {
        mode: sum(
            c.numel() if isinstance(c, torch.Tensor) else sum(b.numel() for b in c)
            for c in ptwt.wavedec2(x, i.wavelet, mode=mode, level=LEVELS)
        )
        for mode in ("reflect", "zero")
    }
    inner = (x * i.cotangent).sum()
    return {
        "max_abs_coeff_diff_ours_vs_pywt": float(max(diffs)),
        "max_abs_reconstruction_error": {
            "ours": float((run["ours_roundtrip"]() - x).abs().max()),
            "pywt_periodization": float(np.abs(run["pywt_periodization_roundtrip"]() - x_np).max()),
            "ptwt_reflect": float((run["ptwt_reflect_roundtrip"]()[..., :h, :w] - x).abs().max()),
            "ptwt_zero": float((run["ptwt_zero_roundtrip"]()[..., :h, :w] - x).abs().max()),
        },
        "coefficients_per_batch": {"input": x.numel(), "ours_and_pywt_periodization": x.numel(), **n_ptwt},
        "adjoint_gap_ours": float(
            abs(sum((a * b).sum() for a, b in zip(_flat(ours_coeffs), _flat(i.ours.analysis(i.cotangent)))) - inner)
            / inner.abs()
        ),
    }


def ratios(med: dict) -> dict:
    return {
        "ours_over_pywt": med["ours_roundtrip"] / med["pywt_periodization_roundtrip"],
        "ours_over_ptwt_reflect": med["ours_roundtrip"] / med["ptwt_reflect_roundtrip"],
        "ours_over_ptwt_zero": med["ours_roundtrip"] / med["ptwt_zero_roundtrip"],
        "ours_forward_backward_over_ours_roundtrip": med["ours_forward_backward"] / med["ours_roundtrip"],
        "ours_forward_backward_over_ptwt_reflect_forward_backward": med["ours_forward_backward"]
        / med["ptwt_reflect_forward_backward"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs per method (≥20); default 30")
    args = parse_args(parser, "wavelets.json", {"runs": 3}, at_least={"runs": 20})
    limit_threads()
    device = pick_device()
    started = time.perf_counter()
    shape = QUICK_SHAPE if args.quick else SHAPE
    inputs = Inputs(shape, device)
    run = methods(inputs)
    checked = checks(inputs, run)
    for fn in run.values():  # warm-up
        fn()
        fn()
    samples = interleaved({name: (lambda fn=fn: time_call(fn, device)) for name, fn in run.items()}, args.runs)
    timings = {name: summary(s) for name, s in samples.items()}
    profiles = {name: profile_rows(run[name], device) for name in ("ours_analysis", "ours_synthesis")}
    med = {name: t["median_s"] for name, t in timings.items()}
    info = machine_info(device)
    result = {
        "benchmark": "wavelet analysis + synthesis",
        "machine": info,
        "setup": {
            "shape": list(shape),
            "dtype": "float32",
            "wavelet": WAVELET,
            "levels": LEVELS,
            "runs": args.runs,
            "notes": "ptwt has no periodization mode: timed with 'reflect' (its default) and 'zero' (deepinv's "
            "default); its transforms are then not orthonormal and redundant. pywt runs on the numpy array.",
        },
        "timings": timings,
        "ratios": ratios(med),
        "checks": checked,
        "profiles": profiles,
        "wall_s": time.perf_counter() - started,
    }
    path = write_json(args.json, result)
    report(result, med, args.runs)
    print(f"wrote {path}")


def report(result: dict, med: dict, runs: int) -> None:
    print(
        f"DWT+IDWT, {'×'.join(map(str, result['setup']['shape']))} float32, {WAVELET} × {LEVELS} levels, "
        f"{result['machine']['torch_threads']} thread(s):"
    )
    for name in med:
        print(f"  {name:32s} {med[name] * 1e3:8.2f} ms (median of {runs})")
    for name, r in result["ratios"].items():
        print(f"  {name:58s} {r:6.2f}")
    print(f"  max |ours − pywt| coefficient: {result['checks']['max_abs_coeff_diff_ours_vs_pywt']:.2e}")
    for name, rows in result["profiles"].items():
        print(f"  {name} top ops: " + ", ".join(f"{r['op']} {r['share']:.0%}" for r in rows[:3]))


def profile_rows(fn, device: torch.device, top: int = 8) -> list[dict]:
    """Self CPU time per op over 5 calls of ``fn`` (torch.profiler), largest first: where the time goes."""
    fn()
    rows, total = op_profile(fn, device, calls=5)
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
