"""One training run's bookkeeping (for :mod:`.train`): its checks and folder before the first step, its
progress, checkpoints and validation while it runs, and what its log says at the end."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint as ckpt
from .config import Config
from .core.hypergrad import GRADIENT_MODES
from .data import Images, steps_per_epoch
from .distributed import Group
from .errors import InputError
from .restart_cap import CappedSteps, capped_steps, log_value
from .rundir import RunDir
from .validation import Validation


class TrainingDiverged(Exception):
    """A non-finite loss, gradient or θ: training stopped, the last finite checkpoint is kept."""

    OUT_OF_RANGE = "θ left the range where its step size τ(θ) is defined"


@dataclass(frozen=True)
class TrainResult:
    out: Path
    checkpoint: Path
    steps: int
    psnr: float
    skipped: list[Path]
    residual: float = math.nan  # the last step's relative residual (of its last restart)
    capped: CappedSteps | None = None  # jfb/deq: the logged steps that stopped at train.max_restarts


def total_steps(config: Config, n_images: int) -> int:
    """``--epochs`` (over the images, in batches) when given, else ``--steps``."""
    t = config.train
    return t.epochs * steps_per_epoch(n_images, t.batch_size) if t.epochs else t.steps


@dataclass
class Run:
    """The mutable progress of one training run (what a save or an interruption needs)."""

    config: Config
    state: ckpt.TrainState
    run: RunDir
    data: Path | None
    group: Group
    start: int
    rows: list[dict]
    psnr: float = float("nan")
    saved: int | None = None
    validation: Validation | None = None
    best: float = -math.inf  # the best validation PSNR so far (its checkpoint: best.safetensors)

    def save(self, step: int) -> None:
        if self.group.is_main:
            self.state.save(self.run.checkpoint, self.config, step, self.psnr, self.data, self.group.world)
            self.saved = step
            self.run.plot(self.config.preset, self.rows)

    def validate(self, step: int, total: int) -> float | None:
        """Every ``val_every`` steps and at the last: the validation PSNR (saving best.safetensors when it
        improves), else None; a θ that the validation solve refuses has diverged."""
        if self.validation is None or (step % self.config.train.val_every and step < total):
            return None
        try:
            psnr = self.validation.psnr(self.state.scheme)
        except InputError as e:
            raise TrainingDiverged(f"validation: {e}") from None
        if psnr > self.best:
            self.best = psnr
            self.state.save(self.run.best, self.config, step, self.psnr, self.data, self.group.world)
        return psnr

    def result(self, out: Path, total: int, skipped: list[Path]) -> TrainResult:
        """The run's result, with its last residual and (jfb, deq) the steps its log shows at the cap."""
        residual = log_value(self.rows[-1], "residual") if self.rows else math.nan
        equilibrium = GRADIENT_MODES[self.config.train.gradient].equilibrium
        return TrainResult(out, self.run.checkpoint, total, self.psnr, skipped, residual,
                           capped_steps(self.config.train, self.rows, equilibrium))


def open_run(config: Config, out: Path, images: Images, data: Path | None, resume: ckpt.Checkpoint | None,
             force: bool, group: Group, val: Path | None = None) -> tuple[int, list[dict], RunDir]:
    """Check the rest of what a run needs — the images, its length, the resumed log — then prepare and
    lock the run folder and write config.yaml: nothing is written or removed before everything is checked."""
    t = config.train
    images.check_min_size(t.crop)
    if t.batch_size % group.world:
        raise InputError(f"--batch-size {t.batch_size} is not a multiple of the {group.world} processes")
    total = total_steps(config, len(images))
    if resume is not None and resume.step >= total:
        raise InputError(f"{resume.path} is already at step {resume.step}; give --steps above it to train further")
    run = RunDir(out)
    rows = run.read_log(resume.step) if resume is not None and group.is_main else []
    if group.is_main:
        run.prepare(force, resume.path if resume is not None else None, data, val, None if resume else t.init)
        try:
            run.write_config(config)
        except InputError:
            run.release()
            raise
    return total, rows, run
