"""Gradients at the fixed point (DEQ, JFB, finite differences), the paper's Lemma 1 bound, compare-grads
and train --check-gradient-every (README: compare-grads).

The DEQ and JFB gradients are those of the registered gradient modes (``mode_gradient``), started at
the fixed point û as compare-grads does."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from numerics import center_crop, rel
from torch import nn
from typer.testing import CliRunner

from retune_cli.cli import app
from retune_cli.config import resolve
from retune_cli.core import implicit
from retune_cli.core.adjoint import ADJOINT_SOLVERS, solve_adjoint_gmres
from retune_cli.core.fixed_point import fixed_point
from retune_cli.core.hypergrad import SolveOptions
from retune_cli.core.pytree import leaves, norm, rebuild
from retune_cli.data import sample_dir
from retune_cli.gradients import DEFAULT_IMAGE, compare_gradients, mode_gradient
from retune_cli.images import read_image
from retune_cli.models import build_scheme

WIDE = {"COLUMNS": "400"}
KS = (1, 2, 5, 10, 20)
ROW_KEYS = {"method", "K", "T", "gradient", "rel_err_deq", "rel_err_fd", "cosine_deq", "bound", "seconds", "peak_bytes"}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


def perturbed_scheme(preset: str, scale: float = 0.3, seed: int = 0):
    """The preset's scheme in float64 with its log-weights moved by a seeded random vector: at uniform
    weights the optimal step gives ω = 0 and every gradient is trivially exact."""
    scheme = build_scheme(resolve(preset)).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in scheme.theta.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return scheme


def params(scheme) -> list[torch.nn.Parameter]:
    return implicit.theta_parameters(scheme)


def autograd_gradient(scheme, y, loss, K: int, T: int, mode: str = "retune") -> torch.Tensor:
    """The gradient of a restart mode (retune, unrolled) from u_0."""
    return mode_gradient(scheme, y, SolveOptions(K, T), mode, loss)[0]


def at_fixed_point(K: int, solver: str = "gmres", tol: float = 1e-12, max_iter: int = 1000) -> SolveOptions:
    """Options of the equilibrium modes started at û (converged to 1e-14): compare-grads' own."""
    return SolveOptions(K, 1, tol=1e-14, max_restarts=100000, adjoint_solver=solver, adjoint_tol=tol,
                        adjoint_max_iter=max_iter)


class Problem:
    """One denoising problem at a non-uniform θ: 64×64 crop, float64, its fixed point and reference gradients."""

    def __init__(self, preset: str, crop: int = 64):
        self.scheme = perturbed_scheme(preset)
        self.clean = center_crop(read_image(sample_dir() / DEFAULT_IMAGE), crop).unsqueeze(0).double()
        with torch.no_grad():
            self.y = self.scheme.physics.simulate(self.clean, 0)
            ctx = self.scheme.prepare(self.y)
            self.omega = float(self.scheme.contraction(ctx))
            self.u_hat, stats = fixed_point(lambda u: self.scheme.restart(u, ctx, 10), self.scheme.init(ctx), 1e-14,
                                            10000)
            self.residual = stats.residual
        self.fd = implicit.finite_difference_gradient(self.scheme, self.y, 10, self.loss)
        self.deq, _ = self.gradient("deq", 1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mean((x - self.clean) ** 2)

    def linearize(self, K: int) -> implicit.Linearization:
        return implicit.linearize(self.scheme, self.y, self.u_hat, K, self.loss)

    def gradient(self, mode: str, K: int, solver: str = "gmres", tol: float = 1e-12):
        """``(g, Solution)`` of equilibrium ``mode`` (jfb, deq) from û."""
        return mode_gradient(self.scheme, self.y, at_fixed_point(K, solver, tol), mode, self.loss, start=self.u_hat)


@pytest.fixture(scope="module")
def problems() -> dict[str, Problem]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"b": Problem("denoise-wavelet-b"), "bc": Problem("denoise-wavelet-bc")}
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- DEQ against finite differences


@pytest.mark.parametrize("weights", ["b", "bc"])
@pytest.mark.parametrize("solver", ["gmres", "fixed-point"])
def test_deq_gradient_matches_finite_differences(problems, weights, solver):
    p = problems[weights]
    assert p.residual <= 1e-14
    assert 0.5 < p.omega < 1  # a real contraction, far from the trivial ω = 0 of uniform weights
    d = 7 if weights == "b" else 13
    assert p.fd.shape == (d,) and float(p.fd.norm()) > 0
    for K in (1, 5):
        tol = 1e-12
        g, solution = p.gradient("deq", K, solver, tol)
        solved = solution.adjoint
        assert rel(g, p.fd) <= 1e-5, (K, rel(g, p.fd))
        assert solved.residual <= tol and solved.iterations >= 1
        assert rel(g, p.deq) <= 1e-9  # the fixed point of Φ_K, hence the DEQ gradient, does not depend on K


def test_deq_at_equilibrium_matches_the_reference(problems):
    """The deq mode from u_0 (its own restarts to the fixed point, then GMRES), as training runs it."""
    p = problems["b"]
    options = SolveOptions(10, 1, tol=1e-12, max_restarts=500, adjoint_tol=1e-12, adjoint_max_iter=500)
    g, solution = mode_gradient(p.scheme, p.y, options, "deq", p.loss)
    assert solution.residual <= 1e-12 and solution.adjoint.residual <= 1e-12
    assert rel(g, p.fd) <= 1e-5


def test_adjoint_solvers_report_their_residual(problems):
    """The GMRES residual is the true one, ‖a − (I − Jᵀ) v‖/‖a‖; a budget too small leaves it above tol."""
    p = problems["b"]
    lin = p.linearize(1)
    a = lin.loss_gradient()
    solved = solve_adjoint_gmres(lin.vjp_u, a, 1e-12, 1000)
    true = [ai - (vi - ji) for ai, vi, ji in zip(a, solved.v, lin.vjp_u(solved.v))]
    assert norm(true) / norm(a) == pytest.approx(solved.residual, rel=1e-3, abs=1e-14)
    for solver in ADJOINT_SOLVERS.values():
        short = solver(lin.vjp_u, a, 1e-12, 3)
        assert short.iterations <= 3 and short.residual > 1e-12


# --------------------------------------------------------------------------- JFB, Lemma 1, δ_K, ReTune


@pytest.mark.parametrize("weights", ["b", "bc"])
def test_jfb_error_within_lemma_1_bound(problems, weights):
    p = problems[weights]
    errors = []
    for K in KS:
        lin = p.linearize(K)
        theory = p.omega**K
        measured = implicit.jacobian_u_norm(lin)
        assert measured <= theory + 1e-6, (K, measured, theory)
        assert measured >= 0.9 * theory  # the local constant is close to ω^K here (a broken power iteration is not)
        bound = implicit.lemma1_bound(theory, norm(lin.loss_gradient()), implicit.jacobian_theta_norm(lin))
        error = float(torch.linalg.vector_norm(p.gradient("jfb", K)[0] - p.deq))
        assert bound is not None and error <= bound, (K, error, bound)
        errors.append(error)
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[0] / float(p.deq.norm()) > 1  # K = 1: JFB is far off at this θ
    assert errors[-1] / float(p.deq.norm()) < 0.2


def test_lemma1_bound_needs_a_contraction():
    assert implicit.lemma1_bound(1.0, 1.0, 1.0) is None
    assert implicit.lemma1_bound(1.5, 1.0, 1.0) is None
    assert implicit.lemma1_bound(0.5, 2.0, 3.0) == pytest.approx(6.0)


def test_retune_tends_to_jfb_as_T_grows(problems):
    """‖g^R_T − g^JF‖ shrinks with T (x_K(T−1) → x̂), so ReTune's error to DEQ levels off at JFB's.

    (Its error to DEQ is not monotone in T: at K = 5 it approaches the JFB error from below.)
    """
    p = problems["b"]
    for K in KS:
        jfb, _ = p.gradient("jfb", K)
        jfb_error = float((jfb - p.deq).norm())
        to_jfb = [float((autograd_gradient(p.scheme, p.y, p.loss, K, T) - jfb).norm()) for T in (1, 2, 5, 10, 20)]
        floor = 1e-12 * float(jfb.norm())
        assert all(later <= earlier + floor for earlier, later in zip(to_jfb, to_jfb[1:])), (K, to_jfb)
        assert to_jfb[-1] < to_jfb[0]
        large = autograd_gradient(p.scheme, p.y, p.loss, K, 200 // K + 1)  # K·(T−1) ≥ 200 steps: ω^200 ≈ 1e-11
        assert rel(large, jfb) <= 1e-8, K
        assert abs(float((large - p.deq).norm()) - jfb_error) <= 1e-8 * float(p.deq.norm())


# --------------------------------------------------------------------------- ‖∂_θ Φ_K‖₂ and ‖∂_u Φ_K‖₂, dense


class PhiK(nn.Module):
    """``θ ↦ Φ_K(u, θ)`` (flattened) at a fixed point ``u``, so that θ can be swapped by functional_call."""

    def __init__(self, scheme, y, K, like):
        super().__init__()
        self.scheme, self.y, self.K, self.like = scheme, y, K, like

    def forward(self, point: list[torch.Tensor]) -> torch.Tensor:
        ctx = self.scheme.prepare(self.y)
        mapped = self.scheme.restart(rebuild(self.like, point), ctx, self.K)
        return torch.cat([t.flatten() for t in leaves(mapped)])


@pytest.fixture
def tiny():
    scheme = perturbed_scheme("denoise-wavelet-bc", seed=4)
    clean = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        y = scheme.physics.simulate(clean, 0)
        ctx = scheme.prepare(y)
        point = scheme.restart(scheme.init(ctx), ctx, 3)  # a generic point, not the fixed point
    return scheme, y, clean, point


def test_jacobian_theta_norm_against_a_dense_jacobian(tiny):
    scheme, y, clean, point = tiny
    K = 2
    phi = PhiK(scheme, y, K, point)
    names = [f"scheme.theta.{n}" for n, _ in scheme.theta.named_parameters()]
    values = tuple(p.detach().clone() for p in scheme.theta.parameters())
    at = [t.detach() for t in leaves(point)]

    def f(*theta):
        return torch.func.functional_call(phi, dict(zip(names, theta)), (at,))

    columns = torch.autograd.functional.jacobian(f, values)
    dense = torch.cat([c.reshape(c.shape[0], -1) for c in columns], dim=1)
    assert dense.shape[1] == 4 + 9
    lin = implicit.linearize(scheme, y, point, K, lambda x: torch.mean((x - clean) ** 2))
    assert implicit.jacobian_theta_norm(lin) == pytest.approx(float(torch.linalg.matrix_norm(dense, 2)), rel=1e-10)


def test_jacobian_u_norm_against_a_dense_jacobian(tiny):
    scheme, y, clean, point = tiny
    K = 2
    ctx = scheme.prepare(y)
    shapes = [t.shape for t in leaves(point)]
    sizes = [math.prod(s) for s in shapes]

    def f(flat):
        parts = [c.view(s) for c, s in zip(torch.split(flat, sizes), shapes)]
        mapped = scheme.restart(rebuild(point, parts), ctx, K)
        return torch.cat([t.flatten() for t in leaves(mapped)])

    flat = torch.cat([t.detach().flatten() for t in leaves(point)])
    dense = torch.autograd.functional.jacobian(f, flat, vectorize=True)
    exact = float(torch.linalg.matrix_norm(dense, 2))
    lin = implicit.linearize(scheme, y, point, K, lambda x: torch.mean((x - clean) ** 2))
    measured = implicit.jacobian_u_norm(lin, iterations=200)
    assert measured <= exact * (1 + 1e-9)
    assert measured == pytest.approx(exact, rel=1e-3)
    assert exact <= float(scheme.contraction(ctx).detach()) ** K + 1e-9


# --------------------------------------------------------------------------- compare-grads


@pytest.fixture(scope="module")
def comparison():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = resolve("denoise-wavelet-b")
        scheme = perturbed_scheme("denoise-wavelet-b", scale=0.2)
        return compare_gradients(scheme, config, crop=32, Ks=[1, 2], Ts=[1, 2, 3])
    finally:
        torch.set_num_threads(threads)


def test_compare_gradients_rows_and_schema(comparison):
    data = json.loads(json.dumps(comparison.to_json()))  # JSON-serializable as it is
    assert {"theta_names", "delta", "gradients", "rows"} <= set(data)
    names = data["theta_names"]
    assert names == [f"theta.log_lambda[{i}]" for i in range(4)] + [f"theta.log_Lambda[{i}]" for i in range(3)]
    assert [d["K"] for d in data["delta"]] == [1, 2]
    for d in data["delta"]:
        assert set(d) == {"K", "theory", "measured"} and d["measured"] <= d["theory"] + 1e-6
    assert set(data["gradients"]) == {"deq", "fd"}
    assert all(len(g) == len(names) for g in data["gradients"].values())
    methods = [(r["method"], r["K"], r["T"]) for r in data["rows"]]
    # every registered mode: the equilibrium ones once per K (deq at min K is the reference row), then the
    # restart ones per (K, T)
    expected = [("deq", 1, None), ("fd", None, None)]
    for K in (1, 2):
        equilibrium = [("jfb", K, None)] + ([("deq", K, None)] if K > 1 else [])
        expected += equilibrium + [(m, K, T) for T in (1, 2, 3) for m in ("retune", "unrolled")]
    assert methods == expected
    assert data["solver"]["residual"] <= data["solver"]["tol"] and data["solver"]["fixed_point_residual"] <= 1e-14
    for r in data["rows"]:
        assert ROW_KEYS <= set(r)
        assert len(r["gradient"]) == len(names)
        assert all(math.isfinite(v) for v in r["gradient"])
        assert r["seconds"] >= 0 and isinstance(r["peak_bytes"], int)
        assert r["bound"] is None or r["method"] == "jfb"
    rows = {(r["method"], r["K"], r["T"]): r for r in data["rows"]}
    assert rows["deq", 1, None]["rel_err_deq"] == 0 and rows["deq", 1, None]["rel_err_fd"] <= 1e-5
    assert rows["fd", None, None]["rel_err_fd"] == 0
    assert rows["deq", 2, None]["rel_err_deq"] <= 1e-9  # the fixed point of Φ_K, hence DEQ, does not depend on K
    for K in (1, 2):
        jfb = rows["jfb", K, None]
        assert jfb["bound"] is not None and jfb["abs_err_deq"] <= jfb["bound"]
        assert rows["retune", K, 1]["gradient"] == pytest.approx(rows["unrolled", K, 1]["gradient"], rel=1e-12)
        # ReTune records one Φ_K whatever T (T = 1 also records u_0 = θ D y); unrolled grows with T
        assert rows["retune", K, 2]["peak_bytes"] == rows["retune", K, 3]["peak_bytes"] > 0
        unrolled = [rows["unrolled", K, T]["peak_bytes"] for T in (1, 2, 3)]
        assert unrolled[0] < unrolled[1] < unrolled[2]
        assert rows["unrolled", K, 3]["peak_bytes"] > rows["retune", K, 3]["peak_bytes"]


def test_compare_gradients_measures_the_memory_of_deq_and_jfb(comparison):
    rows = {(r["method"], r["K"], r["T"]): r for r in comparison.rows}
    assert rows["fd", None, None]["peak_bytes"] == 0  # no graph: right
    for K in (1, 2):
        assert rows["jfb", K, None]["peak_bytes"] >= rows["retune", K, 2]["peak_bytes"] // 2 > 0
    assert rows["deq", 1, None]["peak_bytes"] > 0


def test_compare_grads_cli_writes_json_and_plot(tmp_path, comparison):
    out, figure = tmp_path / "grads.json", tmp_path / "errors.png"
    result = invoke("compare-grads", "--crop", 32, "--K", "1,2", "--T", "1,3", "--json", out, "--plot", figure,
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert figure.is_file() and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(out.read_text())
    assert {"theta_names", "delta", "gradients", "rows"} <= set(data)
    assert len(data["rows"]) == 2 + 2 * (1 + 2 * 2) + 1  # deq, fd; per K jfb and 2 × 2 restart rows; deq at K = 2
    assert {(r["method"], r["K"], r["T"]) for r in data["rows"] if r["method"] == "retune"} == {
        ("retune", K, T) for K in (1, 2) for T in (1, 3)
    }
    assert all(ROW_KEYS <= set(r) and len(r["gradient"]) == len(data["theta_names"]) for r in data["rows"])
    assert "deq" in result.stdout and "jfb" in result.stdout


@pytest.mark.parametrize(("flag", "value"), [("--K", "0"), ("--K", "a"), ("--T", "1,-2"), ("--K", ""),
                                             ("--fixed-point-tol", "0"), ("--fixed-point-tol", "2")])
def test_compare_grads_bad_lists_exit_2(flag, value):
    result = invoke("compare-grads", flag, value, "--crop", 32, "--device", "cpu")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0]


def test_compare_grads_refuses_a_preset_other_than_the_checkpoints(trained_run):
    result = invoke("compare-grads", "--checkpoint", trained_run / "theta.safetensors",
                    "--preset", "denoise-wavelet-bc", "--crop", 32, "--device", "cpu")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--preset denoise-wavelet-bc" in lines[0] and "denoise-wavelet-b" in lines[0]


# --------------------------------------------------------------------------- train --check-gradient-every


def read_log(folder: Path) -> list[dict]:
    with open(folder / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("clip", [None, "1e-9"])
def test_train_logs_the_gradient_check(image_folder, tmp_path, clip):
    """Every 2 steps, cos(g^R, g_DEQ) and the relative error; K = T = 10 is close to DEQ. The check is of the
    gradient itself, not of its clipped version (an earlier version compared the clipped one)."""
    out = tmp_path / "run"
    extra = ["--clip-grad-norm", clip] if clip else []
    result = invoke("train", "--steps", 4, "--K", 10, "--T", 10, "--crop", 32, "--batch-size", 1,
                    "--check-gradient-every", 2, "--data", image_folder, "--out", out, "--device", "cpu", *extra)
    assert result.exit_code == 0, result.output
    rows = read_log(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    for r in rows:
        checked = int(r["step"]) % 2 == 0
        assert (r["grad_cosine"] != "") == checked and (r["grad_rel_err"] != "") == checked, r
        if checked:
            assert float(r["grad_cosine"]) > 0.999
            assert 0 <= float(r["grad_rel_err"]) < 1e-2


def test_compare_grads_fixed_point_tolerance_and_skipped_finite_differences():
    """A looser fixed point is honoured (and recorded); θ with more than FD_MAX_PARAMETERS entries skips
    finite differences, saying so, with DEQ the reference of every row."""
    from retune_cli.gradients import FD_MAX_PARAMETERS

    config = resolve("denoise-filters", {"model.filters": 6, "model.filter_size": 5})
    scheme = build_scheme(config)
    assert sum(p.numel() for p in scheme.parameters() if p.requires_grad) > FD_MAX_PARAMETERS
    result = compare_gradients(scheme, config, crop=16, Ks=[5], Ts=[2], fixed_point_tol=1e-8)
    assert result.solver["fixed_point_residual"] <= 1e-8 and not result.solver["finite_differences"]
    assert "fd" not in result.gradients and all(r["rel_err_fd"] is None for r in result.rows)
    assert {r["method"] for r in result.rows} == {"deq", "jfb", "retune", "unrolled"}
    assert all(0.5 < r["cosine_deq"] <= 1 + 1e-9 for r in result.rows)
