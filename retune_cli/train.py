"""Training workflow: learn θ by Adam on ``L = MSE(x_KT(θ), x̄)`` with the chosen hypergradient.

Writes into the run folder: ``theta.safetensors`` (latest checkpoint), ``config.yaml`` (resolved),
``log.csv`` (one row per step) and ``psnr.png`` (train PSNR curve). Progress is reported through a
callback; nothing here prints.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import Config
from .core.hypergrad import solve
from .core.physics import restrict_batch, simulate
from .data import ImageFolder, derive_seed, steps_per_epoch, training_batch
from .distributed import SINGLE, Group
from .errors import InputError
from .models import build_scheme, trainable
from .plots import plot_curves

CHECKPOINT = "theta.safetensors"
LOG_FIELDS = ("step", "loss", "psnr", "tau", "seconds", "grad_cosine", "grad_rel_err")


class TrainingDiverged(Exception):
    """A non-finite loss, gradient or θ: training stopped, the last finite checkpoint is kept."""


@dataclass(frozen=True)
class StepReport:
    step: int  # steps done so far (1-based)
    total: int
    loss: float
    psnr: float
    tau: float
    seconds: float
    grad_cosine: float | None = None  # cos(g^R, g_DEQ), every check_gradient_every steps
    grad_rel_err: float | None = None  # ‖g^R − g_DEQ‖ / ‖g_DEQ‖


@dataclass(frozen=True)
class TrainResult:
    out: Path
    checkpoint: Path
    steps: int
    psnr: float
    skipped: list[Path]


def total_steps(config: Config, n_images: int) -> int:
    """``--epochs`` (over the images, in batches) when given, else ``--steps``."""
    t = config.train
    return t.epochs * steps_per_epoch(n_images, t.batch_size) if t.epochs else t.steps


def _optimizer_tensors(optimizer: torch.optim.Adam, names: dict[int, str]) -> dict[str, torch.Tensor]:
    """Adam's moments and step counts as ``<param name>.<state key>`` tensors."""
    out = {}
    for p, state in optimizer.state.items():
        for key, value in state.items():
            out[f"{names[id(p)]}.{key}"] = torch.as_tensor(value)
    return out


ADAM_STATE = {"step", "exp_avg", "exp_avg_sq"}


def _load_optimizer(
    optimizer: torch.optim.Adam, params: dict[str, torch.nn.Parameter], tensors: dict, source: Path
) -> None:
    """Restore Adam's moments, refusing a state that does not fit the parameters."""
    for name, p in params.items():
        state = {k.rsplit(".", 1)[1]: v.to(p.device) for k, v in tensors.items() if k.rsplit(".", 1)[0] == name}
        if not state:
            continue
        moments_fit = all(state[k].shape == p.shape for k in ("exp_avg", "exp_avg_sq") if k in state)
        if set(state) != ADAM_STATE or not moments_fit or state["step"].numel() != 1:
            raise InputError(
                f"{source}: its optimizer state for {name} is incomplete or does not fit; resume is impossible"
            )
        state["step"] = state["step"].to("cpu", torch.float32)
        optimizer.state[p] = state


def _updates(optimizer: torch.optim.Adam) -> int:
    """How many Adam steps have been applied (its own step counter), 0 before the first."""
    counts = [int(state["step"]) for state in optimizer.state.values() if "step" in state]
    return max(counts, default=0)


def _start_log(path: Path, rows: list[dict]) -> None:
    """Rewrite ``log.csv`` with the rows kept so far, atomically (a crash never empties it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def plot_runs(path: Path, runs: dict[str, Path]) -> None:
    """One figure of the train PSNR curves of several run folders (label → folder)."""
    curves = {}
    for label, folder in runs.items():
        rows = _read_log(folder / "log.csv", until=10**12)
        curves[label] = ([int(r["step"]) for r in rows], [float(r["psnr"]) for r in rows])
    plot_curves(path, curves)


def _read_log(path: Path, until: int) -> list[dict]:
    """Rows of an existing log up to step ``until`` (a resumed run continues from there)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= until]


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _check_gradient(scheme, observed: torch.Tensor, clean: torch.Tensor, K: int) -> dict[str, float]:
    """Compare the gradient just computed (in ``.grad``) with the DEQ one at the same θ and batch."""
    from .core.implicit import deq_at_equilibrium, flatten_grads, theta_parameters

    params = theta_parameters(scheme)
    ours = flatten_grads([p.grad for p in params], params).detach().clone()
    deq = deq_at_equilibrium(scheme, observed, K, lambda x: torch.mean((x - clean) ** 2)).detach()
    return {
        "grad_cosine": float(torch.nn.functional.cosine_similarity(ours, deq, dim=0)),
        "grad_rel_err": float((ours - deq).norm() / deq.norm().clamp_min(1e-30)),
    }


def _all_finite(tensors) -> bool:
    return all(bool(torch.all(torch.isfinite(x))) for x in tensors if x is not None)


def prepare_out_dir(out: Path, force: bool, resuming_from: Path | None) -> None:
    """Refuse to overwrite an existing run unless ``force`` or resuming it in place; ``force`` removes
    the old run's checkpoint, so that no stale one is left beside the new run's files."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the run")
    holds_run = (out / CHECKPOINT).exists() or (out / "log.csv").exists()
    in_place = resuming_from is not None and resuming_from.resolve().parent == out.resolve()
    if holds_run and not (force or in_place):
        raise InputError(f"{out} already holds a run; pass --force to overwrite it or --resume {out / CHECKPOINT}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the run folder {out}: {e.strerror}") from None
    if force and not in_place and (out / CHECKPOINT).exists():
        (out / CHECKPOINT).unlink()


def train(
    config: Config,
    out: Path,
    data: Path | None = None,
    device: torch.device | str = "cpu",
    resume: ckpt.Checkpoint | None = None,
    force: bool = False,
    on_step: Callable[[StepReport], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    group: Group = SINGLE,
) -> TrainResult:
    """Train from the initial θ (or from ``resume``) for the configured number of steps.

    ``should_stop`` is polled after each step (a signal handler sets it): the run then saves its
    checkpoint and raises ``KeyboardInterrupt``. A ``KeyboardInterrupt`` mid-step saves θ as it is,
    labelled with the number of Adam updates actually applied. With a distributed ``group``, each
    rank trains on its share of every batch and only rank 0 writes files.
    """
    from deepinv.loss.metric import PSNR

    t = config.train
    images = ImageFolder.open(data)
    images.check_min_size(t.crop)
    if t.batch_size % group.world:
        raise InputError(f"--batch-size {t.batch_size} is not a multiple of the {group.world} processes")
    total = total_steps(config, len(images))
    main = group.is_main
    if resume is not None and resume.step >= total:
        raise InputError(f"{resume.path} is already at step {resume.step}; give --steps above it to train further")
    if main:
        prepare_out_dir(out, force, resume.path if resume is not None else None)
        (out / "config.yaml").write_text(config.to_yaml())

    torch.manual_seed(t.seed)
    scheme = build_scheme(config, device)
    params = trainable(scheme)
    optimizer = torch.optim.Adam(params.values(), lr=t.lr)
    start, psnr = 0, float("nan")
    if t.init and resume is None:
        ckpt.load_init(scheme, ckpt.load(t.init))
    if resume is not None:
        ckpt.load_parameters(scheme, resume)
        _load_optimizer(optimizer, params, resume.optimizer, resume.path)
        start, psnr = resume.step, resume.train_psnr
    rows = _read_log(out / "log.csv", start) if main else []
    updates_at_start = _updates(optimizer)
    names = {id(p): n for n, p in params.items()}
    metric = PSNR(max_pixel=1.0)
    saved = start if resume is not None else None

    def save(step: int) -> None:
        nonlocal saved
        if not main:
            return
        moments = _optimizer_tensors(optimizer, names)
        ckpt.save(out / CHECKPOINT, config, ckpt.learned_parameters(scheme), step, psnr, moments, data, group.world)
        saved = step
        steps = [int(r["step"]) for r in rows]
        plot_curves(out / "psnr.png", {config.preset: (steps, [float(r["psnr"]) for r in rows])}, title=config.preset)

    if on_start and main:
        on_start(start, total)
    if main:
        _start_log(out / "log.csv", rows)
    log = open(out / "log.csv", "a", newline="") if main else None
    writer = csv.DictWriter(log, LOG_FIELDS) if main else None
    clock = time.perf_counter() - (float(rows[-1]["seconds"]) if rows else 0.0)
    done = start
    try:
        for step in range(start, total):
            batch = training_batch(images, step, t.batch_size, t.crop, t.seed).to(device)
            with torch.no_grad():
                observations = simulate(scheme.physics, batch, derive_seed(t.seed, "noise", step))
            restrict_batch(scheme.physics, slice(group.rank, None, group.world))
            clean, observed = group.shard(batch), group.shard(observations)
            try:
                restored = solve(scheme, observed, t.K, t.T, t.gradient)
            except ValueError as e:  # θ so extreme that no valid step exists
                raise TrainingDiverged(f"θ left the valid range before step {step + 1} ({e})") from None
            loss = torch.mean((restored - clean) ** 2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for p in params.values() if p.grad is not None]
            group.average(grads)
            if not (math.isfinite(loss.item()) and _all_finite(grads)):
                raise TrainingDiverged(f"non-finite loss or gradient at step {step + 1}")
            check = {}
            if main and _due(step + 1, t.check_gradient_every):
                restrict_batch(scheme.physics, slice(None))  # the DEQ check uses the whole batch
                check = _check_gradient(scheme, observations, batch, t.K)
            if t.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params.values(), t.clip_grad_norm)
            optimizer.step()
            done = step + 1
            if not _all_finite(params.values()):
                raise TrainingDiverged(f"non-finite θ after step {step + 1}")
            scores = torch.stack([loss.detach(), metric(restored.detach(), clean).mean()]).to(torch.float64)
            group.average([scores])
            psnr = float(scores[1])
            try:
                tau = float(scheme.step_size(observed).detach())
            except ValueError as e:  # θ so extreme that no valid step exists
                raise TrainingDiverged(f"θ left the valid range after step {step + 1} ({e})") from None
            report = StepReport(done, total, float(scores[0]), psnr, tau, time.perf_counter() - clock, **check)
            if main:
                rows.append({k: getattr(report, k) for k in LOG_FIELDS})
                writer.writerow(rows[-1])
                log.flush()
                if on_step:
                    on_step(report)
            if done % t.checkpoint_every == 0 or done == total:
                save(done)
            if group.any(bool(should_stop and should_stop())) and done < total:
                save(done)
                raise KeyboardInterrupt
    except TrainingDiverged as e:
        kept = f"the last finite checkpoint is {out / CHECKPOINT} (step {saved})" if saved else "no checkpoint yet"
        raise TrainingDiverged(f"{e}; lower --lr or use --clip-grad-norm; {kept}") from None
    except KeyboardInterrupt:
        done = start + _updates(optimizer) - updates_at_start  # θ as it is, even mid-step
        if done > start and saved != done:
            save(done)
        raise
    finally:
        if log is not None:
            log.close()
    return TrainResult(out, out / CHECKPOINT, total, psnr, images.skipped)
