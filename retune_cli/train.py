"""Training workflow: learn θ by Adam on ``L = MSE(x(θ), x̄)`` with the configured gradient mode.

Writes into the run folder (:class:`~.rundir.RunDir`) ``theta.safetensors``, ``config.yaml``, ``log.csv``,
``psnr.png``; reports progress through a callback (nothing here prints). :func:`train_step` is the one
step (solve, backpropagate, average across processes, clip, Adam) that benchmarks time as well; the run's
bookkeeping (folder, checkpoints, validation, its result) is :mod:`.training_run`'s.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .advice import divergence_hint
from .config import Config
from .core.hypergrad import Solution, SolveOptions, solve
from .core.implicit import gradient_check
from .core.physics import Observation
from .core.schemes import NoValidStep
from .data import ImageFolder, Images, derive_seed, open_images, training_batch
from .distributed import SINGLE, Group
from .memory_check import check_step_memory
from .models import build_scheme, denoiser_log_sigma, physics_from, solve_options, trainable
from .rundir import CHECKPOINT, LOG_FIELDS
from .training_run import Run, TrainingDiverged, TrainResult, open_run, total_steps
from .validation import Validation

__all__ = ["StepOutcome", "StepReport", "TrainResult", "TrainingDiverged", "new_state", "total_steps", "train",
           "train_step"]


@dataclass(frozen=True)
class StepReport:
    step: int  # steps done so far (1-based)
    total: int
    loss: float
    psnr: float
    tau: float
    seconds: float
    sigma: float | None = None  # PnP: the denoiser's σ (after this step's update)
    restarts: int = 0  # restarts of Φ_K in this step's solve
    residual: float = float("nan")  # relative residual of its last restart
    grad_cosine: float | None = None  # cos(g, g_DEQ), every check_gradient_every steps
    grad_rel_err: float | None = None  # ‖g − g_DEQ‖ / ‖g_DEQ‖
    val_psnr: float | None = None  # with --val, every val_every steps


@dataclass(frozen=True)
class StepOutcome:
    """What one :func:`train_step` computed: the (rank-averaged) loss and PSNR, the step τ and PnP's σ after
    the update, the solve and its last residual."""

    loss: float
    psnr: float
    tau: float
    sigma: float | None
    residual: float
    solution: Solution
    check: dict


def _all_finite(tensors) -> torch.Tensor:
    """One flag on the device: every entry of every tensor is finite (read back once, by the caller)."""
    return torch.stack([torch.isfinite(x).all() for x in tensors if x is not None]).all()


def _psnr(x: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean PSNR of a batch (deepinv's metric, peak 1)."""
    from deepinv.loss.metric import PSNR

    return PSNR(max_pixel=1.0)(x, clean).mean()


def train_step(
    state: ckpt.TrainState,
    clean: torch.Tensor,
    obs: Observation,
    options: SolveOptions,
    mode: str = "retune",
    group: Group = SINGLE,
    clip_grad_norm: float = 0.0,
    before_update: Callable[[], dict] | None = None,
) -> StepOutcome:
    """One Adam step on ``L = mean((x(θ) − x̄)²)`` over this rank's images, gradient of ``mode``
    averaged over the ranks; ``before_update`` runs between backpropagation and clipping. Reads back two
    small tensors: whether the loss and gradient are finite (before the update), then the scores, τ, σ,
    the residual and whether θ is finite (after)."""
    scheme, optimizer = state.scheme, state.optimizer
    try:
        solution = solve(scheme, obs, options, mode)
    except NoValidStep:  # θ so extreme that no valid step exists
        raise TrainingDiverged(TrainingDiverged.OUT_OF_RANGE) from None
    loss = torch.mean((solution.x - clean) ** 2)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in state.params.values() if p.grad is not None]
    group.average(grads)
    if not bool(_all_finite([loss.detach(), *grads])):
        raise TrainingDiverged("non-finite loss or gradient")
    check = before_update() if before_update else {}
    if clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(state.params.values(), clip_grad_norm)
    optimizer.step()
    scores = torch.stack([loss.detach(), _psnr(solution.x.detach(), clean)]).to(torch.float64)
    group.average([scores])
    return _outcome(state, obs, scores, solution, check)


def _outcome(state: ckpt.TrainState, obs: Observation, scores: torch.Tensor, solution: Solution,
             check: dict) -> StepOutcome:
    """The step's numbers after the update, read back in one transfer; non-finite θ and a θ without a valid
    step diverge."""
    scheme = state.scheme
    with torch.no_grad():
        try:
            tau = scheme.step_size(obs)
        except NoValidStep:  # θ so extreme that no valid step exists
            raise TrainingDiverged(TrainingDiverged.OUT_OF_RANGE) from None
        log_sigma = denoiser_log_sigma(scheme)
        sigma = torch.exp(log_sigma.detach()) if log_sigma is not None else torch.nan
        values = [*scores, solution.last_residual, tau, sigma, _all_finite(state.params.values())]
        values = torch.stack([torch.as_tensor(v).to(scores).reshape(()) for v in values])
        loss, psnr, residual, tau, sigma, finite = values.tolist()
    if not finite:
        raise TrainingDiverged("non-finite θ")
    return StepOutcome(loss, psnr, tau, None if log_sigma is None else sigma, residual, solution, check)


def new_state(config: Config, device: torch.device | str, resume: ckpt.Checkpoint | None,
              trust_code: bool = False) -> ckpt.TrainState:
    """The scheme at its initial θ (or ``train.init``'s, or the resumed run's) and Adam."""
    torch.manual_seed(config.train.seed)
    scheme = build_scheme(config, device)
    params = trainable(scheme)
    state = ckpt.TrainState(scheme, torch.optim.Adam(params.values(), lr=config.train.lr), params)
    if config.train.init and resume is None:
        ckpt.load_init(scheme, ckpt.load(config.train.init, trust_code))
    if resume is not None:
        state.load(resume)
    return state


def _batch(images: ImageFolder, physics, config: Config, step: int, device, group: Group):
    """This step's clean crops and their observation (the global batch, and this rank's share)."""
    t = config.train
    batch = training_batch(images, step, t.batch_size, t.crop, t.seed).to(device)
    with torch.no_grad():
        obs = physics.simulate(batch, derive_seed(t.seed, "noise", step))
    return batch, obs, group.shard(batch), obs.shard(group.rank, group.world)


def _one_step(r: Run, images: ImageFolder, step: int, total: int, device, clock: float) -> StepReport:
    """Train step ``step`` (0-based) and report it; the DEQ check uses the whole batch on rank 0."""
    t, scheme = r.config.train, r.state.scheme
    batch, obs, clean, shard = _batch(images, scheme.physics, r.config, step, device, r.group)
    due = r.group.is_main and t.check_gradient_every > 0 and (step + 1) % t.check_gradient_every == 0
    outcome = train_step(
        r.state, clean, shard, solve_options(t), t.gradient, r.group, t.clip_grad_norm,
        (lambda: gradient_check(scheme, obs, batch, t.K)) if due else None,
    )
    r.psnr = outcome.psnr
    return StepReport(step + 1, total, outcome.loss, outcome.psnr, outcome.tau, time.perf_counter() - clock,
                      outcome.sigma, outcome.solution.restarts, outcome.residual, **outcome.check)


def train(
    config: Config,
    out: Path,
    data: Path | Images | None = None,
    device: torch.device | str = "cpu",
    resume: ckpt.Checkpoint | None = None,
    force: bool = False,
    on_step: Callable[[StepReport], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    group: Group = SINGLE,
    trust_code: bool = False,
    val: Path | None = None,
) -> TrainResult:
    """Train from the initial θ (or from ``resume``) for the configured number of steps.

    ``should_stop`` is polled after each step (a signal handler sets it): the run then saves its checkpoint and
    raises ``KeyboardInterrupt``. A ``KeyboardInterrupt`` mid-step saves θ as it is, labelled with the number of
    Adam updates actually applied. With a distributed ``group``, each rank trains on its share of every batch and
    only rank 0 writes files; it holds the run folder's lock from its preparation to its end. ``trust_code``:
    ``train.init`` may name a physics that runs code from its config (whose θ config.yaml then records).
    ``data``: a folder, the built-in samples (None) or in-memory :class:`Images` (a checkpoint then records no
    folder). ``val``: a folder of clean validation images (:mod:`.validation`).
    """
    images = open_images(data)
    data = None if isinstance(data, Images) else data
    validation = (Validation.open(val, config, physics_from(config), device, out / CHECKPOINT)
                  if val and group.is_main else None)
    state = new_state(config, device, resume, trust_code)
    check_step_memory(config, state.scheme, device)
    config = ckpt.started_config(config, state.scheme) if resume is None else config
    total, rows, run = open_run(config, out, images, data, resume, force, group, val)
    start = resume.step if resume is not None else 0
    r = Run(config, state, run, data, group, start, rows, validation=validation)
    r.best = max((float(row["val_psnr"]) for row in rows if row.get("val_psnr")), default=-math.inf)
    if resume is not None:
        r.psnr, r.saved = resume.train_psnr, start
    updates_at_start = state.updates
    try:
        if group.is_main:
            if on_start:
                on_start(start, total)
            run.open_log(r.rows)
        clock = time.perf_counter() - (float(r.rows[-1]["seconds"]) if r.rows else 0.0)
        _loop(r, images, total, device, clock, on_step, should_stop)
    except TrainingDiverged as e:
        kept = f"the last finite checkpoint is {run.checkpoint} (step {r.saved})" if r.saved else "no checkpoint yet"
        raise TrainingDiverged(f"{e}; {divergence_hint(config)}; {kept}") from None
    except KeyboardInterrupt:
        done = start + state.updates - updates_at_start  # θ as it is, even mid-step
        if done > start and r.saved != done:
            r.save(done)
        raise
    finally:
        run.close()
    return r.result(out, total, images.skipped)


def _loop(r: Run, images, total: int, device, clock: float, on_step, should_stop) -> None:
    """Steps ``r.start … total − 1``: train, log, checkpoint every ``checkpoint_every``, stop on request."""
    for step in range(r.start, total):
        try:
            report = _one_step(r, images, step, total, device, clock)
            if r.group.is_main:
                report = dataclasses.replace(report, val_psnr=r.validate(report.step, total))
        except TrainingDiverged as e:
            raise TrainingDiverged(f"{e} at step {step + 1}") from None
        if r.group.is_main:
            r.rows.append({k: getattr(report, k) for k in LOG_FIELDS})
            r.run.append(r.rows[-1])
            if on_step:
                on_step(report)
        done = step + 1
        if done % r.config.train.checkpoint_every == 0 or done == total:
            r.save(done)
        if r.group.any(bool(should_stop and should_stop())) and done < total:
            r.save(done)
            raise KeyboardInterrupt
