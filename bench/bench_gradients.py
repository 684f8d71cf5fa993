"""Cost of the exact DEQ hypergradient against ReTune at equal accuracy.

θ: denoise-wavelet-bc weights perturbed from the preset's (seeded), so that Φ_K contracts at
ω ≈ 0.84 per step (trained θ often contract slower still). Reference: the DEQ gradient solved to
1e-12 (GMRES) at a fixed point converged to 1e-13, float64, on a --crop² crop of the built-in
astronaut. For each target relative accuracy ε, we time (median of --rounds):

* DEQ: fixed point to ε (restarts of Φ_1 without a graph) + GMRES adjoint to ε + the θ-VJP;
* ReTune: the cheapest (K, T) of a grid whose gradient is within ε of the reference.

Both are the engine's gradient modes (``retune_cli.gradients.mode_gradient``: ``solve`` with mode
``"deq"`` resp. ``"retune"``, then the flat θ-gradient of the loss). Memory: bytes autograd saves for
backward (retune_cli.core.memory.saved_tensor_bytes), plus, for DEQ, the Krylov basis GMRES holds
(restart + 1 vectors of the iterate's size). Writes bench/results/gradients.json.

    python bench/bench_gradients.py [--crop 128] [--rounds 3] [--json PATH] [--quick]

``--quick``: a smoke run (crop 32, 1 round, output in /tmp/retune-bench/gradients.json).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import flags, limit_threads, machine_info, parse_args, write_json

from retune_cli.config import resolve
from retune_cli.core.hypergrad import SolveOptions
from retune_cli.core.memory import saved_tensor_bytes
from retune_cli.data import sample_dir
from retune_cli.gradients import mode_gradient
from retune_cli.images import read_image
from retune_cli.models import build_scheme

TARGETS = (1e-1, 1e-2, 1e-3, 1e-4)
GRID = [(K, T) for K in (1, 5, 10, 20, 50, 100) for T in (1, 2, 5, 10, 20, 50)]
GMRES_RESTART = 30  # retune_cli.core.adjoint.solve_adjoint_gmres's default


def problem(crop: int):
    scheme = build_scheme(resolve("denoise-wavelet-bc", {"model.init_lambda": 0.3})).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in scheme.theta.parameters():
            p.add_(0.25 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    clean = read_image(sample_dir() / "astronaut.png")[:, 128 : 128 + crop, 128 : 128 + crop]
    clean = clean.unsqueeze(0).double()
    return scheme, clean, scheme.physics.simulate(clean, 0)


def deq(scheme, obs, loss, tol: float) -> tuple[torch.Tensor, int, int]:
    """DEQ gradient with every solve at ``tol``; (gradient, saved bytes, Krylov basis bytes)."""
    options = SolveOptions(1, 1, tol=tol, max_restarts=100000, adjoint_solver="gmres", adjoint_tol=tol,
                           adjoint_max_iter=100000)
    with saved_tensor_bytes() as saved:
        gradient, solution = mode_gradient(scheme, obs, options, "deq", loss)
    basis = (GMRES_RESTART + 1) * sum(t.numel() * t.element_size() for t in solution.adjoint.v)
    return gradient, saved[0], basis


def retune(scheme, obs, loss, K: int, T: int) -> tuple[torch.Tensor, int]:
    with saved_tensor_bytes() as saved:
        gradient, _ = mode_gradient(scheme, obs, SolveOptions(K, T), "retune", loss)
    return gradient, saved[0]


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
    args = parse_args(parser, "gradients.json", {"crop": 32, "rounds": 1})
    limit_threads()
    scheme, clean, obs = problem(args.crop)

    def loss(x):
        return torch.mean((x - clean) ** 2)

    reference, _, _ = deq(scheme, obs, loss, 1e-13)
    with torch.no_grad():
        omega = float(scheme.contraction(scheme.prepare(obs)))

    def error(g):
        return float((g - reference).norm() / reference.norm())

    grid = []
    for K, T in GRID:
        (g, saved), seconds = timed(lambda K=K, T=T: retune(scheme, obs, loss, K, T), args.rounds)
        grid.append({"K": K, "T": T, "rel_err": error(g), "seconds": seconds, "saved_bytes": saved})
    rows = []
    for eps in TARGETS:
        (g, saved, basis), seconds = timed(lambda eps=eps: deq(scheme, obs, loss, eps), args.rounds)
        rows.append(row(eps, error(g), seconds, saved, basis, grid))
    write_json(
        args.json,
        {
            "benchmark": "DEQ backward vs ReTune at equal accuracy",
            "machine": machine_info(torch.device("cpu")),
            "setup": {**flags(args), "preset": "denoise-wavelet-bc", "omega": omega, "dtype": "float64"},
            "grid": grid,
            "rows": rows,
        },
    )


def row(eps: float, rel_err: float, seconds: float, saved: int, basis: int, grid: list[dict]) -> dict:
    """DEQ at target ``eps`` against the fastest ReTune (K, T) of ``grid`` that reaches it (printed too)."""
    reaching = [r for r in grid if r["rel_err"] <= eps]
    best = min(reaching, key=lambda r: r["seconds"]) if reaching else None
    line = f"ε={eps:.0e}  DEQ {seconds:.3f}s {(saved + basis) / 2**20:.1f} MiB"
    if best:
        line += f" | ReTune (K={best['K']},T={best['T']}) {best['seconds']:.3f}s {best['saved_bytes'] / 2**20:.1f} MiB"
    print(line)
    return {
        "target": eps,
        "deq": {"rel_err": rel_err, "seconds": seconds, "saved_bytes": saved, "krylov_bytes": basis},
        "retune": best,
        "time_retune_over_deq": best["seconds"] / seconds if best else None,
        "memory_retune_over_deq": best["saved_bytes"] / (saved + basis) if best else None,
    }


if __name__ == "__main__":
    main()
