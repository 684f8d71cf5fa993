"""The registry of gradient modes (retune, unrolled, jfb, deq): contents, extension, the equilibrium
modes' gradients (DEQ against finite differences, JFB against its formula), training's gradient equal
to compare-grads' on the same batch, and the backward memory of the equilibrium modes (float64, ≤ 32×32)."""

from __future__ import annotations

import pytest
import torch
from numerics import center_crop, rel

from retune_cli.config import resolve
from retune_cli.core import implicit
from retune_cli.core.fixed_point import fixed_point
from retune_cli.core.hypergrad import GRADIENT_MODES, Solution, SolveOptions, register_gradient, solve
from retune_cli.core.memory import saved_tensor_bytes
from retune_cli.data import ImageFolder, sample_dir, training_batch
from retune_cli.gradients import DEFAULT_IMAGE, mode_gradient
from retune_cli.images import read_image
from retune_cli.models import build_scheme, solve_options
from retune_cli.train import new_state, train_step

# As in test_hypergrad: θ_max/θ_min = e^0.4, so the optimal-rule contraction is ω ≈ 0.38 (not the trivial 0).
LOG_LAMBDA = [-2.3, -2.5, -2.6, -2.4]
LOG_LAMBDA_B = [0.1, -0.1, 0.0]
K = 5


def perturb(scheme, scale: float, seed: int) -> None:
    """Move θ by a seeded random vector, so that the weights are not all equal (ω > 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in scheme.theta.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


class Problem:
    """A float64 scheme, a 32×32 observation of a built-in photograph, its MSE loss and its fixed point û."""

    def __init__(self, preset: str, overrides: dict | None = None, weights=None, seed: int = 0):
        self.scheme = build_scheme(resolve(preset, overrides or {})).double()
        if weights is None:
            perturb(self.scheme, 0.3, seed)
        else:
            with torch.no_grad():
                self.scheme.theta.log_lambda.copy_(torch.tensor(weights[0]))
                self.scheme.theta.log_Lambda.copy_(torch.tensor(weights[1]))
        self.clean = center_crop(read_image(sample_dir() / DEFAULT_IMAGE), 32).unsqueeze(0).double()
        with torch.no_grad():
            self.obs = self.scheme.physics.simulate(self.clean, 0)
            self.ctx = self.scheme.prepare(self.obs)
            self.omega = float(self.scheme.contraction(self.ctx))
            self.u0 = self.scheme.init(self.ctx)
            self.u_hat, self.stats = fixed_point(lambda u: self.scheme.restart(u, self.ctx, K), self.u0, 1e-14, 100000)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mean((x - self.clean) ** 2)


PROBLEMS = {
    "denoise-b": ("denoise-wavelet-b", {}, (LOG_LAMBDA, LOG_LAMBDA_B)),
    "inpaint": ("inpaint-wavelet", {"physics.keep": 0.5}, None),
}


@pytest.fixture(scope="module")
def problems() -> dict[str, Problem]:
    return {}


def problem(problems, name: str) -> Problem:
    if name not in problems:
        preset, overrides, weights = PROBLEMS[name]
        problems[name] = Problem(preset, overrides, weights)
    return problems[name]


# --------------------------------------------------------------------------- 1. the registry


def test_the_registry_holds_the_four_modes():
    assert set(GRADIENT_MODES) == {"retune", "unrolled", "jfb", "deq"}
    assert {name for name, mode in GRADIENT_MODES.items() if mode.equilibrium} == {"jfb", "deq"}
    assert all(isinstance(mode.equilibrium, bool) for mode in GRADIENT_MODES.values())


def test_a_registered_mode_is_used_by_solve_and_by_training(problems):
    p = problem(problems, "denoise-b")
    name = "test-half-retune"
    calls = []

    def half(scheme, ctx, u0, options: SolveOptions) -> Solution:
        """ReTune with half the restarts (rounded up): a mode the engine does not know."""
        calls.append(options)
        solution = GRADIENT_MODES["retune"](scheme, ctx, u0, SolveOptions(options.K, (options.T + 1) // 2))
        return Solution(solution.x, solution.restarts, solution.residual)

    assert name not in GRADIENT_MODES
    try:
        assert register_gradient(name)(half) is half and GRADIENT_MODES[name] is half
        assert half.equilibrium is False
        options = SolveOptions(K=3, T=4)
        g, solution = mode_gradient(p.scheme, p.obs, options, name, p.loss)
        assert calls == [options] and solution.restarts == 2
        reference, _ = mode_gradient(p.scheme, p.obs, SolveOptions(3, 2), "retune", p.loss)
        assert torch.equal(g, reference)
        assert torch.equal(solve(p.scheme, p.obs, options, mode=name).x, solve(p.scheme, p.obs, SolveOptions(3, 2)).x)
        # training takes it by name too: the config accepts it and train_step solves with it
        config = resolve("denoise-wavelet-b", {"train.gradient": name, "train.K": 3, "train.T": 4})
        state = new_state(config, "cpu", None)
        state.scheme.double()
        outcome = train_step(state, p.clean, p.obs, solve_options(config.train), config.train.gradient)
        assert len(calls) == 3 and outcome.solution.restarts == 2 and outcome.loss > 0
    finally:
        GRADIENT_MODES.pop(name, None)
    assert name not in GRADIENT_MODES
    with pytest.raises(ValueError, match="gradient must be one of"):
        solve(p.scheme, p.obs, SolveOptions(3, 4), mode=name)


# --------------------------------------------------------------------------- 2. deq = finite differences


@pytest.fixture(scope="module")
def finite_differences(problems) -> torch.Tensor:
    p = problem(problems, "denoise-b")
    return implicit.finite_difference_gradient(p.scheme, p.obs, K, p.loss)


@pytest.mark.parametrize("solver", ["gmres", "fixed-point"])
def test_deq_mode_matches_finite_differences(problems, finite_differences, solver):
    p = problem(problems, "denoise-b")
    assert 0.3 < p.omega < 0.45  # weights not all equal: a real contraction
    fd = finite_differences
    assert fd.shape == (7,) and float(fd.norm()) > 0
    tol = 1e-12
    options = SolveOptions(K, 1, tol=1e-14, max_restarts=10000, adjoint_solver=solver, adjoint_tol=tol,
                           adjoint_max_iter=1000)
    solution = solve(p.scheme, p.obs, options, "deq")  # from u_0: the mode restarts to the fixed point itself
    assert solution.adjoint is None  # filled by the backward
    assert solution.residual <= 1e-13 and 1 < solution.restarts < 10000
    g = implicit.flat_gradient(p.scheme, p.loss(solution.x))
    assert solution.adjoint is not None
    assert solution.adjoint.residual <= tol and solution.adjoint.iterations >= 1
    assert rel(g, fd) <= 1e-5, rel(g, fd)
    # the same through compare-grads' helper, from û
    g_hat, at_hat = mode_gradient(p.scheme, p.obs, options, "deq", p.loss, start=p.u_hat)
    assert at_hat.adjoint.residual <= tol and rel(g_hat, fd) <= 1e-5 and rel(g_hat, g) <= 1e-9


# --------------------------------------------------------------------------- 3. jfb = its formula


@pytest.mark.parametrize("name", PROBLEMS)
def test_jfb_mode_is_the_jfb_formula(problems, name):
    """g^JF = aᵀ ∂_θ Φ_K(û) + ∂_θ L(out(û, θ)), a = ∂_u L(out(û, θ)), by hand from the linearization at û."""
    p = problem(problems, name)
    assert p.stats.residual <= 1e-14
    lin = implicit.linearize(p.scheme, p.obs, p.u_hat, K, p.loss)
    a = lin.loss_gradient()
    direct = implicit.flatten_grads(
        torch.autograd.grad(lin.image_loss, lin.params, retain_graph=True, allow_unused=True), lin.params
    )
    expected = lin.vjp_theta(a) + direct
    assert float(direct.norm()) > 1e-3 * float(expected.norm())  # the output map's own θ-term matters here
    options = SolveOptions(K, 1, tol=1e-14, max_restarts=100000)
    g, solution = mode_gradient(p.scheme, p.obs, options, "jfb", p.loss, start=p.u_hat)
    assert solution.adjoint is None and solution.restarts >= 2  # ≥ 1 restart without a graph, then the recorded one
    assert rel(g, expected) <= 1e-10, rel(g, expected)
    deq, _ = mode_gradient(p.scheme, p.obs, options, "deq", p.loss, start=p.u_hat)
    assert rel(g, deq) > 1e-4  # JFB is not DEQ at this θ: the identity above is not a coincidence


# --------------------------------------------------------------------------- 4. train = compare-grads


TRAIN = {"train.crop": 32, "train.batch_size": 2, "train.K": K, "train.tol": 1e-13, "train.max_restarts": 5000,
         "train.adjoint_tol": 1e-12, "train.adjoint_max_iter": 2000, "model.init_lambda": 0.3}


def first_step_gradients(preset: str, overrides: dict, mode: str, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_step's gradient, compare-grads' gradient)`` of ``mode`` at the same θ and batch."""
    config = resolve(preset, {**TRAIN, **overrides})
    state = new_state(config, "cpu", None)
    scheme = state.scheme.double()
    perturb(scheme, 0.3, seed)
    batch = training_batch(ImageFolder.open(None), 0, 2, 32, 0).double()
    with torch.no_grad():
        obs = scheme.physics.simulate(batch, 7)
        ctx = scheme.prepare(obs)
        u_hat, stats = fixed_point(lambda u: scheme.restart(u, ctx, K), scheme.init(ctx), 1e-14, 100000)
    assert stats.residual <= 1e-14

    def loss(x: torch.Tensor) -> torch.Tensor:
        return torch.mean((x - batch) ** 2)

    options = SolveOptions(K, 1, tol=1e-14, max_restarts=100000, adjoint_tol=1e-12, adjoint_max_iter=2000)
    reference, _ = mode_gradient(scheme, obs, options, mode, loss, start=u_hat)  # before train_step moves θ

    params = implicit.theta_parameters(scheme)
    captured = []

    def before_update() -> dict:
        captured.append(implicit.flatten_grads([p.grad for p in params], params).detach().clone())
        return {}

    theta = [p.detach().clone() for p in params]
    outcome = train_step(state, batch, obs, solve_options(config.train), mode, before_update=before_update)
    assert len(captured) == 1 and outcome.solution.residual <= 1e-13
    assert any(not torch.equal(p, t) for p, t in zip(params, theta))  # Adam did step after the capture
    if mode == "deq":
        assert outcome.solution.adjoint.residual <= 1e-12
    return captured[0], reference


@pytest.mark.parametrize(("preset", "overrides"), [("denoise-wavelet-bc", {}),
                                                    ("inpaint-wavelet", {"physics.keep": 0.5})])
def test_train_first_step_gradient_equals_compare_grads(preset, overrides):
    """The issue's acceptance test: train --gradient deq|jfb, first step, = compare-grads' DEQ|JFB (≤ 1e-6)."""
    gradients = {}
    for mode in ("deq", "jfb"):
        trained, reference = first_step_gradients(preset, overrides, mode)
        assert float(reference.norm()) > 0
        assert rel(trained, reference) <= 1e-6, (mode, rel(trained, reference))
        gradients[mode] = reference
    assert rel(gradients["jfb"], gradients["deq"]) > 1e-4  # the two modes do differ at this θ


# --------------------------------------------------------------------------- 5. backward memory


@pytest.mark.parametrize("name", PROBLEMS)
def test_equilibrium_modes_record_one_phi_K(problems, name):
    """deq and jfb save for backward what ReTune with T = 1 from the same start does (one Φ_K graph),
    whatever the number of forward restarts; unrolling grows by one Φ_K per restart."""
    p = problem(problems, name)

    def saved(mode: str, T: int = 1, restarts: int = 1) -> int:
        options = SolveOptions(3, T, tol=0.0, max_restarts=restarts)  # tol 0: exactly ``restarts`` restarts
        with saved_tensor_bytes() as total:
            solution = solve(p.scheme, p.obs, options, mode, start=p.u0)
            implicit.flat_gradient(p.scheme, p.loss(solution.x))  # the backward (deq: its adjoint solve) too
        assert solution.restarts == (restarts if GRADIENT_MODES[mode].equilibrium else T)  # max_restarts in all
        return total[0]

    one_phi = saved("retune")
    assert one_phi > 0
    for mode in ("jfb", "deq"):
        measured = [saved(mode, restarts=n) for n in (1, 4, 16)]
        assert measured[0] == measured[1] == measured[2], (mode, measured)
        assert abs(measured[0] - one_phi) <= 4096, (mode, measured[0], one_phi)
    unrolled = [saved("unrolled", T) for T in (1, 2)]
    assert unrolled[0] == one_phi and unrolled[1] - unrolled[0] > one_phi // 2


@pytest.mark.parametrize("mode", sorted(GRADIENT_MODES))
def test_the_graph_is_freed_without_the_garbage_collector(problems, mode):
    """After backward, dropping the solution frees its graph by reference counting alone: the deq
    backward holds no reference cycle (one used to keep each step's Φ_K graph alive until a GC pass,
    17× ReTune's peak memory on CUDA)."""
    import gc
    import weakref

    p = problem(problems, "denoise-b")
    scheme, y, clean = p.scheme, p.obs, p.clean
    gc.collect()
    gc.disable()
    try:
        solution = solve(scheme, y, SolveOptions(3, 2, tol=1e-8, adjoint_tol=1e-10), mode)
        ref = weakref.ref(solution.x)
        torch.mean((solution.x - clean) ** 2).backward()
        adjoint = solution.adjoint
        del solution
        assert ref() is None
        assert (adjoint is not None) == (mode == "deq")
    finally:
        gc.enable()
