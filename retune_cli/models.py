"""Config → engine objects: the physics, the prior whose parameters are θ, the scheme composing them,
the solve options.

Physics, priors and schemes are looked up by name in their registries (:mod:`.components`), gradient
modes by ``train.gradient`` (:data:`~.core.hypergrad.GRADIENT_MODES`): adding one is a class and a
registry entry.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .components import composed_class, physics_class, prior_class
from .config import Config, ModelConfig, TrainConfig
from .core.hypergrad import SolveOptions
from .core.operators import build_physics
from .core.physics import Physics
from .core.prior import Prior
from .core.scheme import Scheme
from .data import derive_seed
from .errors import InputError
from .user_degradations import file_options

CHANNELS = 3  # images are read as RGB
QUANTIZATION_NOISE = 1 / (255 * math.sqrt(12))  # std of rounding to 8 bits: the noise start's floor on σ


def physics_from(config: Config) -> Physics:
    """The degradation of ``config.physics`` (the registry picks the options its class takes); options given
    as files (a kernel, a mask folder) are read as tensors (:func:`~.user_degradations.file_options`)."""
    options = dataclasses.asdict(config.physics)
    options |= options.pop("options")  # a plugin physics' declared options
    physics_class(options["name"])  # the built-in and plugin physics registered, or a ValueError naming them
    options |= file_options(config.physics, config.train.crop)
    return build_physics(options.pop("name"), options.pop("sigma"), **options)


def per_channel(sigma) -> tuple[float, ...]:
    """Noise levels per channel: one value stands for :data:`CHANNELS` equal ones."""
    sigma = tuple(sigma)
    return sigma * CHANNELS if len(sigma) == 1 else sigma


def prior_noise(config: Config, physics: Physics) -> list[float]:
    """The noise level per channel that the noise start's thresholds use: ``s_c = √h · max(σ_c, q)``.

    ``h = ‖A z‖² / ‖z‖²`` for white Gaussian z shaped as a training batch (seeded): ``tr(AᵀA)/n``, the mean
    curvature of ``½‖A x − y‖²`` (1 for A = I). Where ``AᵀA ≈ h I``, the data term is ``½h‖x − x_LS‖²``,
    whose minimizer has noise ``σ/√h`` and is thresholded at θ/h: ``θ = σ√h · √(2 log n)`` makes that the
    universal threshold of ``x_LS``. ``q = 1/(255√12)``, the rounding noise of 8-bit images, keeps θ > 0
    for noise-free physics.
    """
    t = config.train
    shape = torch.Size((t.batch_size, CHANNELS, t.crop, t.crop))
    seed = derive_seed(t.seed, "init")
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        curvature = float(physics.A(z, physics.draw(shape, seed)).pow(2).sum() / z.pow(2).sum())
    if not curvature > 0:
        raise InputError(f"model.init noise: physics {config.physics.name} maps every image to 0; "
                         "use model.init=paper")
    return [math.sqrt(curvature) * max(s, QUANTIZATION_NOISE) for s in per_channel(config.physics.sigma)]


def component_options(model: ModelConfig, component: type) -> dict[str, object]:
    """The options a prior or scheme class declares, with the config's values (a field of
    :class:`ModelConfig`, else ``model.options``, else the component's default)."""
    return {k: getattr(model, k) if hasattr(model, k) else model.options.get(k, default)
            for k, default in component.options.items()}


def build_prior(config: Config, physics: Physics) -> Prior:
    """``model.prior`` with its options, θ at its start: the noise start (``model.init: noise``) when the
    prior has one, its own defaults otherwise."""
    m = config.model
    cls = prior_class(m.prior)
    try:
        prior = cls.build(component_options(m, cls), CHANNELS)
    except ValueError as error:  # an option out of range: the prior names it
        raise InputError(f"model.prior {m.prior}: {error}") from None
    if m.init == "noise" and "noise start" in cls.capabilities():
        prior.init_from_noise(prior_noise(config, physics), config.train.crop**2)
    return prior


def build_scheme(config: Config, device: torch.device | str = "cpu") -> Scheme:
    """The inner solver ``model.scheme`` × ``model.prior`` over the physics, with θ at its initial value,
    on ``device``."""
    physics = physics_from(config)
    prior = build_prior(config, physics)
    cls = composed_class(config.model.scheme, config.model.prior, config.physics.name)
    return cls.compose(physics, prior, **component_options(config.model, cls)).to(device)


def solve_options(train: TrainConfig, **changes) -> SolveOptions:
    """The engine's options from ``train.K``, ``train.T``, ``train.tol``, … (``changes`` override)."""
    keys = ("K", "T", "tol", "max_restarts", "adjoint_solver", "adjoint_tol", "adjoint_max_iter", "accelerate")
    return SolveOptions(**({k: getattr(train, k) for k in keys} | changes))


def checkpoint_name(scheme: torch.nn.Module, name: str) -> str:
    """A scheme's parameter name as a checkpoint stores it: ``theta.…``, and a prior's network weights
    under their own prefix (``theta.denoiser.…`` → ``denoiser.…``)."""
    network = getattr(scheme.theta, "network", None)
    prefix = f"theta.{network}."
    return name[len("theta."):] if network and name.startswith(prefix) else name


def trainable(scheme: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters training updates, named as in a checkpoint (``theta.…``, ``denoiser.…``)."""
    return {checkpoint_name(scheme, name): p for name, p in scheme.named_parameters() if p.requires_grad}


def denoiser_log_sigma(scheme: torch.nn.Module) -> torch.Tensor | None:
    """PnP's ``log σ`` (the denoiser's noise level), on the device; None for a scheme without one."""
    return getattr(scheme.theta, "log_sigma", None)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda, not {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return torch.device(name)
