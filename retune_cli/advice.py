"""What to try when a run diverges, barely learns or restores worse than its observations: flags that
apply to its problem and scheme.

A step rule is suggested only where it can matter: the optimal rule ``τ = 2/(μ + L)`` of wavelet
forward-backward with an injective A other than the identity (for A = I it is already the best safe
step, and a non-injective A already uses ``safe``).
"""

from __future__ import annotations

from pathlib import Path

from .config import Config
from .core.operators import PHYSICS
from .data import Images

NEAR_OBSERVATION_DB = 1.0  # a run ending within this of its observations' PSNR has barely learned; below, worse


def divergence_hint(config: Config) -> str:
    """``try …``: the changes that usually keep this run's θ finite."""
    from .components import composed_class, prior_class

    t, m = config.train, config.model
    prior = prior_class(m.prior)
    hints = [f"a lower --lr (now {t.lr:g}, e.g. {t.lr / 10:g})"]
    hints.append(f"a smaller --clip-grad-norm (now {t.clip_grad_norm:g})" if t.clip_grad_norm else "--clip-grad-norm")
    if t.gradient == "unrolled":
        hints.append(f"--gradient retune (backpropagates K = {t.K} steps, not K·T = {t.K * t.T})")
    if prior.learns_step:
        if t.gradient in ("retune", "unrolled"):
            hints.append(f"a smaller --K (the denoiser is not known to contract; now {t.K})")
        if m.learn == "parameters":
            hints.append(f"a smaller start τ (--set model.init_tau=…, now {m.init_tau:g}; τ < 2/‖A‖² keeps the "
                         "gradient step non-expansive)")
    if t.gradient in ("jfb", "deq"):
        hints.append(f"more restarts to the fixed point (--set train.max_restarts=…, now {t.max_restarts})")
    step_rule = "step_rule" in composed_class(m.scheme, m.prior).options and not prior.learns_step
    if step_rule and m.step_rule == "optimal" and not PHYSICS[config.physics.name].identity:
        hints.append("--set model.step_rule=safe (τ = 1.95/L)")
    return "try " + ", ".join(hints)


def _start_hints(config: Config) -> list[str]:
    """Other starts of θ that apply to this run: the noise start, PnP's σ, another run's θ."""
    from .components import prior_class

    t, m = config.train, config.model
    prior = prior_class(m.prior)
    hints = []
    if "noise start" in prior.capabilities() and m.init == "paper" and not t.init:
        hints.append("the noise start (--set model.init=noise: θ from physics.sigma)")
    if prior.learns_step and m.learn == "parameters" and not t.init:
        hints.append(f"another start (--set model.init_sigma=…, now {m.init_sigma:g})")
    if not t.init:
        hints.append("--init a trained run")
    return hints


def _length(config: Config) -> str:
    t = config.train
    return f"more --epochs (now {t.epochs})" if t.epochs else f"more --steps (now {t.steps})"


def unlearned_hint(config: Config) -> str:
    """``Usually helps: …``: the changes that usually move θ further from its start."""
    t = config.train
    hints = [_length(config), f"a larger --lr (now {t.lr:g})"]
    if t.crop < 256:
        hints.append(f"larger crops (--crop 256, now {t.crop})")
    return "Usually helps: " + ", ".join(hints + _start_hints(config)) + "."


def below_hint(config: Config, residual: float | None = None) -> str:
    """``Try …``: for a run that restores worse than its observations — training further or from another
    start, and more restarts when its last solve ended above ``train.tol`` (``residual``, measured)."""
    from .core.hypergrad import GRADIENT_MODES
    from .restart_cap import scientific

    t = config.train
    hints = [_length(config), *_start_hints(config)]
    if residual is not None and residual > t.tol:
        more = (f"--set train.max_restarts=…, now {t.max_restarts}" if GRADIENT_MODES[t.gradient].equilibrium
                else f"--T, now {t.T}")
        hints.append(f"more restarts ({more}: the last step's solve ended at residual {scientific(residual)}, "
                     f"above train.tol = {scientific(t.tol)})")
    return ("Try " + ", ".join(hints) + "; retune eval shows the observations' PSNR per image beside the "
            "checkpoint's.")


def unlearned_warning(config: Config, data: Path | Images | None, steps: int, psnr: float,
                      residual: float | None = None) -> str | None:
    """The warning for a run whose last train PSNR is less than :data:`NEAR_OBSERVATION_DB` above its
    observations' on the same batch, or None: within that margin θ has barely left its start; further
    below, the restored images are worse than the observations (``residual``: the last step's)."""
    from .validation import observation_psnr

    observed = observation_psnr(config, data, steps - 1)
    gap = psnr - observed
    if gap >= NEAR_OBSERVATION_DB:
        return None
    if gap > -NEAR_OBSERVATION_DB:
        side = "above" if gap >= 0 else "below"
        return (f"train PSNR {psnr:.2f} dB is only {abs(gap):.2f} dB {side} the observations' {observed:.2f} dB "
                f"(within {NEAR_OBSERVATION_DB:g} dB): θ has barely left its start. {unlearned_hint(config)}")
    return (f"train PSNR {psnr:.2f} dB is {-gap:.2f} dB below the observations' {observed:.2f} dB: the restored "
            f"images score worse than the observations themselves. {below_hint(config, residual)}")
