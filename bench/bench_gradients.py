"""Cost of the exact DEQ hypergradient against ReTune at equal accuracy.

θ: denoise-wavelet-bc weights perturbed from the preset's (seeded), so that Φ_K contracts at
ω ≈ 0.84 per step (trained θ often contract slower still). Reference: the DEQ gradient solved to
1e-12 (GMRES) at a fixed point converged to 1e-13, float64, on a --crop² crop of the built-in
astronaut. For each target relative accuracy ε, we time (median of --rounds):

* DEQ: fixed point to ε (restarts of Φ_1 without a graph) + GMRES adjoint to ε + the θ-VJP;
* ReTune: the cheapest (K, T) of a grid whose gradient is within ε of the reference.

Memory: bytes autograd saves for backward (retune_cli.core.memory.saved_tensor_bytes), plus, for
DEQ, the Krylov basis GMRES holds (restart + 1 vectors of the image's size). Writes
bench/results/gradients.json.

    python bench/bench_gradients.py [--crop 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import limit_threads, machine_info, write_json

from retune_cli.config import resolve
from retune_cli.core import implicit
from retune_cli.core.hypergrad import solve
from retune_cli.core.memory import saved_tensor_bytes
from retune_cli.core.physics import simulate
from retune_cli.data import sample_dir
from retune_cli.images import read_image
from retune_cli.models import build_scheme

TARGETS = (1e-1, 1e-2, 1e-3, 1e-4)
GRID = [(K, T) for K in (1, 5, 10, 20, 50, 100) for T in (1, 2, 5, 10, 20, 50)]
GMRES_RESTART = 30


def problem(crop: int):
    scheme = build_scheme(resolve("denoise-wavelet-bc", {"model.init_lambda": 0.3})).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in scheme.theta.parameters():
            p.add_(0.25 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    clean = read_image(sample_dir() / "astronaut.png")[:, 128 : 128 + crop, 128 : 128 + crop]
    clean = clean.unsqueeze(0).double()
    y = simulate(scheme.physics, clean, 0)
    return scheme, clean, y


def deq(scheme, y, loss, tol: float) -> tuple[torch.Tensor, int, int]:
    """DEQ gradient with every solve at ``tol``; (gradient, saved bytes, Krylov basis bytes)."""
    ctx = scheme.prepare(y)
    u_hat, _, _ = implicit.fixed_point(scheme, ctx, scheme.init(ctx), 1, tol, 100000)
    with saved_tensor_bytes() as saved:
        lin = implicit.linearize(scheme, y, u_hat, 1, loss)
    gradient, _ = implicit.deq_gradient(lin, "gmres", tol, 100000)
    basis = (GMRES_RESTART + 1) * sum(t.numel() * t.element_size() for t in lin.point)
    return gradient, saved[0], basis


def retune(scheme, y, loss, K: int, T: int) -> tuple[torch.Tensor, int]:
    with saved_tensor_bytes() as saved:
        value = loss(solve(scheme, y, K, T, "retune"))
    params = implicit.theta_parameters(scheme)
    return implicit.flatten_grads(torch.autograd.grad(value, params), params), saved[0]


def timed(fn, rounds: int):
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    limit_threads()
    scheme, clean, y = problem(args.crop)

    def loss(x):
        return torch.mean((x - clean) ** 2)

    reference, _, _ = deq(scheme, y, loss, 1e-13)
    ctx = scheme.prepare(y)
    omega = float(scheme.contraction(ctx).detach())

    def error(g):
        return float((g - reference).norm() / reference.norm())

    grid = []
    for K, T in GRID:
        (g, saved), seconds = timed(lambda K=K, T=T: retune(scheme, y, loss, K, T), args.rounds)
        grid.append({"K": K, "T": T, "rel_err": error(g), "seconds": seconds, "saved_bytes": saved})
    rows = []
    for eps in TARGETS:
        (g, saved, basis), seconds = timed(lambda eps=eps: deq(scheme, y, loss, eps), args.rounds)
        reaching = [r for r in grid if r["rel_err"] <= eps]
        best = min(reaching, key=lambda r: r["seconds"]) if reaching else None
        rows.append(
            {
                "target": eps,
                "deq": {"rel_err": error(g), "seconds": seconds, "saved_bytes": saved, "krylov_bytes": basis},
                "retune": best,
                "time_retune_over_deq": best["seconds"] / seconds if best else None,
                "memory_retune_over_deq": best["saved_bytes"] / (saved + basis) if best else None,
            }
        )
        line = f"ε={eps:.0e}  DEQ {seconds:.3f}s {(saved + basis) / 2**20:.1f} MiB"
        if best:
            line += (
                f" | ReTune (K={best['K']},T={best['T']}) {best['seconds']:.3f}s {best['saved_bytes'] / 2**20:.1f} MiB"
            )
        print(line)
    write_json(
        "gradients.json",
        {
            "benchmark": "DEQ backward vs ReTune at equal accuracy",
            "machine": machine_info(torch.device("cpu")),
            "setup": {**vars(args), "preset": "denoise-wavelet-bc", "omega": omega, "dtype": "float64"},
            "grid": grid,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
