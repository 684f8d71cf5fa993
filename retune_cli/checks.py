"""Validation of a :class:`~.config.Config`: choices and ranges, each error naming its key (the engine's
registries, torch with them, imported by the checks, not with this module)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError
from .limits import check_cost

if TYPE_CHECKING:
    from .config import Config

LEARN = ("parameters", "denoiser")
INITS = ("noise", "paper")  # model.init: θ from physics.sigma, or the paper's λ_j = init_lambda, Λ = 1


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


def _choice(value: str, choices, key: str) -> None:
    _check(value in choices, f"{key} must be one of {', '.join(choices)}, not {value!r}")


MIN_KEPT = 16  # pixels an inpainting crop keeps on average, at least


def _validate_physics(config: Config) -> None:
    """The physics must be registered and its options in range."""
    from .components import physics_class
    from .core.boundary import BOUNDARIES
    from .core.operators import PHYSICS
    from .models import physics_from

    p = config.physics
    _choice(p.name, PHYSICS, "physics.name")
    _check(len(p.sigma) in (1, 3) and all(s >= 0 for s in p.sigma), "physics.sigma must be 1 or 3 numbers ≥ 0")
    _check(0 < p.keep <= 1, "physics.keep (fraction of pixels kept) must be in (0, 1]")
    crop = config.train.crop
    random_pixels = "keep" in physics_class(p.name).options and p.mask == "random" and not p.masks
    if random_pixels and crop >= 1:  # physics.keep only sets random-pixel masks; train.crop is checked with train
        _check(p.keep * crop**2 >= MIN_KEPT,
               f"physics.keep {p.keep:g} keeps {p.keep * crop**2:.2g} of a {crop}² crop's pixels on average: too few "
               f"to learn from; give physics.keep ≥ {MIN_KEPT / crop**2:.2g} (or a larger crop)")
    for key, low, high in (("blur_width", 1, 1024), ("kernel_size", 1, 1024), ("factor", 2, 64)):
        _check(low <= getattr(p, key) <= high, f"physics.{key} must be between {low} and {high} (kernels, factors)")
    _choice(p.boundary, BOUNDARIES, "physics.boundary")
    try:
        physics_from(config)
    except ValueError as e:
        raise InputError(f"physics {p.name}: {e}") from None


def _validate_model(config: Config) -> None:
    from .components import composed_class, prior_class
    from .core.operators import PHYSICS
    from .core.priors import WEIGHTS
    from .core.scheme import has_data_prox
    from .core.schemes import STEP_RULES
    from .models import physics_from

    m, p = config.model, config.physics
    try:
        prior, scheme = prior_class(m.prior), composed_class(m.scheme, m.prior, p.name)
    except ValueError as e:
        raise InputError(str(e)) from None
    _choice(m.weights, WEIGHTS, "model.weights")
    _choice(m.step_rule, STEP_RULES, "model.step_rule")
    _check(
        m.step_rule == "safe" or PHYSICS[p.name].injective or "step_rule" not in scheme.options or prior.learns_step,
        f"model.step_rule optimal needs an injective A (μ > 0); use model.step_rule=safe with physics {p.name}",
    )
    _check(not scheme.needs_data_prox or has_data_prox(physics_from(config)),
           f"model.scheme {m.scheme} needs the exact proximal operator of the data term, which physics {p.name} "
           f"does not have with these options (physics.boundary {p.boundary}): use model.scheme fb or pd")
    _check(1 <= m.levels <= 8, "model.levels must be between 1 and 8")
    _choice(m.init, INITS, "model.init")
    _check(m.init_lambda > 0, "model.init_lambda must be positive")
    _choice(m.learn, LEARN, "model.learn")
    _check(m.init_sigma > 0 and m.init_tau > 0, "model.init_sigma and model.init_tau must be positive")
    _check(prior.network is not None or m.learn == "parameters",
           f"model.learn=denoiser needs a prior with a network (model.prior pnp), not {m.prior}")
    try:
        import pywt

        _check(
            pywt.Wavelet(m.wavelet).orthogonal, f"model.wavelet {m.wavelet!r} is not orthogonal; use db4, sym8, haar…"
        )
    except ValueError:
        raise InputError(f"model.wavelet {m.wavelet!r} is not a PyWavelets wavelet; use db4, sym8, haar…") from None


def _validate_train(config: Config) -> None:
    from .core.adjoint import ADJOINT_SOLVERS
    from .core.fixed_point import ACCELERATIONS
    from .core.hypergrad import GRADIENT_MODES

    t = config.train
    _choice(t.gradient, GRADIENT_MODES, "train.gradient")
    _choice(t.adjoint_solver, ADJOINT_SOLVERS, "train.adjoint_solver")
    _choice(t.accelerate, ACCELERATIONS, "train.accelerate")
    for key in ("K", "T", "steps", "batch_size", "checkpoint_every", "val_every", "max_restarts", "adjoint_max_iter"):
        _check(getattr(t, key) >= 1, f"train.{key} must be at least 1")
    for key in ("tol", "adjoint_tol"):
        _check(getattr(t, key) >= 0, f"train.{key} must be 0 or positive")
    _check(t.epochs is None or t.epochs >= 1, "train.epochs must be at least 1")
    _check(t.check_gradient_every >= 0, "train.check_gradient_every must be 0 (never) or more")
    levels = config.model.levels
    _check(t.crop >= 2**levels, f"train.crop must be at least 2**model.levels = {2**levels}")
    _check(t.lr > 0, "train.lr must be positive")
    _check(0 <= t.seed < 2**63, "train.seed must be in [0, 2**63)")
    _check(t.clip_grad_norm >= 0, "train.clip_grad_norm must be 0 (off) or positive")
    for key in ("T", "max_restarts", "adjoint_max_iter"):
        check_cost(f"train.K × train.{key}", t.K * getattr(t, key))
    unrolled = t.gradient == "unrolled"
    kept = t.K * (t.T if unrolled else 1) * t.batch_size * 3 * t.crop**2
    check_cost(f"train.K{' × train.T' if unrolled else ''} × train.batch_size × train.crop × train.crop", 0, kept)


def validate(config: Config) -> None:
    """Range and choice checks; raises :class:`InputError` naming the key."""
    _validate_physics(config)
    _validate_model(config)
    _validate_train(config)
    from .models import physics_from

    try:
        physics_from(config).check_fits((1, 3, config.train.crop, config.train.crop))
    except ValueError as e:
        raise InputError(f"train.crop must fit physics {config.physics.name}: {e}") from None


def check_overrides(config: Config, overrides: dict[str, object]) -> None:
    """An override that the resolved config would ignore is refused: ``model.init_lambda`` sets the
    paper's start only, not the noise start of a wavelet model."""
    from .components import prior_class

    m = config.model
    _check(
        "model.init_lambda" not in overrides or "init_lambda" not in prior_class(m.prior).options or m.init == "paper",
        "model.init_lambda sets the paper's start, and model.init is noise (θ from physics.sigma); "
        "add --set model.init=paper to use it",
    )
