"""Config → engine objects: the physics, the scheme whose parameters are θ, the solve options.

Schemes are registered by ``(model.name, model.scheme)`` (:data:`SCHEMES`), physics by ``physics.name``
(:data:`~.core.operators.PHYSICS`), gradient modes by ``train.gradient``
(:data:`~.core.hypergrad.GRADIENT_MODES`): adding one is a class and a registry entry.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from .config import Config, TrainConfig
from .core.hypergrad import SolveOptions
from .core.operators import build_physics
from .core.physics import Physics
from .core.scheme import Scheme
from .core.schemes import PnPFB, PnPParameters, WaveletFB
from .core.splitting import PnPHQS, WaveletDRS
from .data import derive_seed
from .errors import InputError

CHANNELS = 3  # images are read as RGB
QUANTIZATION_NOISE = 1 / (255 * math.sqrt(12))  # std of rounding to 8 bits: the noise start's floor on σ


def physics_from(config: Config) -> Physics:
    """The degradation of ``config.physics`` (the registry picks the options its class takes)."""
    options = dataclasses.asdict(config.physics)
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


def _wavelet_parts(config: Config, physics: Physics):
    from .core.priors import WaveletWeights
    from .core.wavelets import WaveletTransform

    m = config.model
    if m.init == "paper":
        weights = WaveletWeights(m.levels, m.weights, channels=CHANNELS, init_lambda=m.init_lambda)
    else:
        weights = WaveletWeights.universal(m.levels, m.weights, prior_noise(config, physics), config.train.crop**2)
    return WaveletTransform(m.wavelet, m.levels), weights


def _wavelet_fb(config: Config, physics: Physics) -> Scheme:
    return WaveletFB(physics, *_wavelet_parts(config, physics), config.model.step_rule)


def _wavelet_drs(config: Config, physics: Physics) -> Scheme:
    return WaveletDRS(physics, *_wavelet_parts(config, physics))


def _pnp(cls: type[PnPFB]) -> Callable[[Config, Physics], Scheme]:
    """A PnP scheme; what is not learned is frozen: the denoiser when learning (σ, τ), (σ, τ) when
    learning the denoiser."""

    def build(config: Config, physics: Physics) -> Scheme:
        from .denoisers import load_denoiser

        m = config.model
        scheme = cls(physics, load_denoiser(m.denoiser), PnPParameters(m.init_sigma, m.init_tau))
        (scheme.denoiser if m.learn == "parameters" else scheme.theta).requires_grad_(False)
        return scheme

    return build


SCHEMES: dict[tuple[str, str], Callable[[Config, Physics], Scheme]] = {
    ("wavelet", "fb"): _wavelet_fb,
    ("wavelet", "drs"): _wavelet_drs,
    ("pnp", "fb"): _pnp(PnPFB),
    ("pnp", "hqs"): _pnp(PnPHQS),
}


def build_scheme(config: Config, device: torch.device | str = "cpu") -> Scheme:
    """The inner solver described by ``config`` (``model.name``, ``model.scheme``), with θ at its
    initial value, on ``device``."""
    m = config.model
    return SCHEMES[m.name, m.scheme](config, physics_from(config)).to(device)


def solve_options(train: TrainConfig, **changes) -> SolveOptions:
    """The engine's options from ``train.K``, ``train.T``, ``train.tol``, … (``changes`` override)."""
    keys = ("K", "T", "tol", "max_restarts", "adjoint_solver", "adjoint_tol", "adjoint_max_iter", "accelerate")
    return SolveOptions(**({k: getattr(train, k) for k in keys} | changes))


def trainable(scheme: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters training updates, named as in a checkpoint (``theta.…``, ``denoiser.…``)."""
    return {name: p for name, p in scheme.named_parameters() if p.requires_grad}


def denoiser_sigma(scheme: torch.nn.Module) -> float | None:
    """PnP's σ, the denoiser's noise level ``exp(log σ)``; None for a scheme without one."""
    log_sigma = getattr(scheme.theta, "log_sigma", None)
    return None if log_sigma is None else float(torch.exp(log_sigma.detach()))


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda, not {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return torch.device(name)
