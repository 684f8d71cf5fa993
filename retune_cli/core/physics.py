"""Forward models ``y = A x + ε``: the contract every physics fulfils, observations, noise, ‖A‖.

A :class:`Physics` owns its mathematics: ``A`` and ``Aᵀ``, bounds on its extreme singular values
(which set the step size), whether it is the identity, whether an image fits it, how a user's own
operator (a mask, a kernel) becomes its parameters, and how its random parameters are drawn. Those
parameters (``Params``: per-image tensors, batch first, or shared ones with batch 1) are drawn per
call from a seed and travel with the observation (:class:`Observation`), never stored in the physics:
sharding a batch slices them with it. The built-in physics are in :mod:`.operators`.

Random parts (noise, masks) come from CPU generators seeded explicitly, then move to the data's
device: a seed gives the same observation on every device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Observation:
    """Observed images ``y (N, C, H, W)`` and the operator's parameters they were observed with."""

    y: torch.Tensor
    params: Params = field(default_factory=dict)

    def shard(self, rank: int, world: int) -> Observation:
        """Images ``rank, rank + world, …`` with their per-image parameters (shared ones are kept)."""
        if world == 1:
            return self
        n = self.y.shape[0]
        params = {k: v[rank::world] if v.shape[0] == n else v for k, v in self.params.items()}
        return Observation(self.y[rank::world], params)

    def to(self, *args, **kwargs) -> Observation:
        """Moved or cast like :meth:`torch.Tensor.to` (masks keep being 0/1)."""
        return Observation(self.y.to(*args, **kwargs), {k: v.to(*args, **kwargs) for k, v in self.params.items()})


def as_observation(y: torch.Tensor | Observation) -> Observation:
    """An :class:`Observation` (a bare tensor: an operator without parameters)."""
    return y if isinstance(y, Observation) else Observation(y)


class NormBounds(NamedTuple):
    """``‖A‖₂`` (a float, or a 0-dim tensor left on the device) and a lower bound on ``σ_min(A)`` (0 when A is not
    injective; a float: whether it is positive decides the step rule on the host)."""

    norm: float | torch.Tensor
    sigma_min: float


@dataclass(frozen=True)
class UserOperator:
    """How a user gives this physics' operator for a real image: ``--<flag> FILE``."""

    flag: str  # "mask", "kernel"
    reads: str  # "image" or "array" (.npy)
    meaning: str  # shown in messages, e.g. "white = known pixels"


def noise_levels(sigma: Sequence[float]) -> torch.Tensor:
    """The noise's standard deviations, one per channel (or one for all), as a float32 vector;
    ``ValueError`` unless there is one at least, all finite and non-negative."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32).flatten()
    if sigma.numel() == 0 or not torch.all(torch.isfinite(sigma)) or torch.any(sigma < 0):
        raise ValueError("noise sigma must be finite and non-negative")
    return sigma


class Physics:
    """``y = A x + ε`` with per-channel Gaussian noise ``ε``; subclasses define ``A`` and its facts.

    Class attributes: ``name`` (the registry key, ``physics.name`` in a config), ``options`` (the
    config keys its constructor takes besides ``sigma``), ``identity`` (``A = I``), ``injective``,
    ``user_operator``.
    """

    name: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()
    identity: ClassVar[bool] = False
    injective: ClassVar[bool] = False  # σ_min(A) > 0, so the optimal step rule applies
    user_operator: ClassVar[UserOperator | None] = None
    needs_user_operator: ClassVar[bool] = False  # a real image cannot be restored without it
    runs_user_code: ClassVar[bool] = False  # building it imports code named in the config

    def __init__(self, sigma: Sequence[float]):
        self._sigma = noise_levels(sigma)  # checked now; the noise model (deepinv's) is built on first use
        self._noise = None

    @property
    def noise(self):
        """The noise model, a :class:`~.noise.ChannelGaussianNoise` of this physics' σ unless one was set."""
        if self._noise is None:
            from .noise import ChannelGaussianNoise

            self._noise = ChannelGaussianNoise(self._sigma)
        return self._noise

    @noise.setter
    def noise(self, model) -> None:
        self._noise = model

    def A(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        raise NotImplementedError

    def A_adjoint(self, y: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        raise NotImplementedError

    def normal(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """``Aᵀ A x``, the data term's gradient operator, once per step of every scheme: ``Aᵀ(A x)`` by
        default; a physics with a cheaper product (one FFT pair, one mask product) overrides it."""
        return self.A_adjoint(self.A(x, params), params)

    def draw(self, shape: torch.Size, seed: int) -> Params:
        """Random parameters for a batch of ``shape`` (none by default)."""
        return {}

    def observe(self, x: torch.Tensor, seed: int, params: Params) -> torch.Tensor:
        """``A x + ε`` with the noise drawn from ``seed``."""
        return self.noise(self.A(x, params), seed=seed)

    def simulate(self, x: torch.Tensor, seed: int, params: Params | None = None) -> Observation:
        """Degrade clean ``x``: parameters (unless given) and noise drawn from ``seed``."""
        if params is None:
            params = {k: v.to(x.device) for k, v in self.draw(x.shape, seed).items()}
        return Observation(self.observe(x, seed, params), params)

    def norm_bounds(self, like: torch.Tensor, params: Params | None = None) -> NormBounds:
        """``(‖A‖, σ_min lower bound)`` for the images observations shaped like ``like`` stand for: by
        power iteration over the whole batch (A is block-diagonal over the images, so this is the largest
        of their norms, per-image operators included), and 0."""
        image = like.new_zeros((like.shape[0], like.shape[-3], *self.image_size(like, params)))
        return NormBounds(operator_norm(self, image, params), 0.0)

    def check_fits(self, shape: torch.Size) -> None:
        """Raise ``ValueError`` saying why images of ``shape`` cannot be observed (all fit by default)."""

    def operator_params(self, operator: torch.Tensor, shape: torch.Size) -> Params:
        """The parameters for a user's operator (an image or an array) and images of ``shape``."""
        raise ValueError(f"physics {self.name} takes no user operator")

    def image_size(self, y: torch.Tensor, params: Params | None = None) -> tuple[int, int]:
        """``(H, W)`` of the images that observations shaped like ``y`` (made with ``params``) stand for (the
        same by default)."""
        return tuple(y.shape[-2:])

    def fit_image(self, x: torch.Tensor) -> torch.Tensor:
        """A clean image cut to what this physics observes (all of it by default)."""
        return x

    def observed_pixels(self, params: Params) -> torch.Tensor | None:
        """``(1, H, W)`` 0/1 map of the observation's pixels that carry data (for noise estimation), or
        None when all do (the default)."""
        return None

    def start(self, y: torch.Tensor, params: Params | None = None) -> torch.Tensor | None:
        """An estimate of the image for the schemes to start from, or None: ``Aᵀy`` (the default). A physics
        whose adjoint is a poor estimate overrides it (super-resolution: bicubic upsampling)."""
        return None

    def baseline(self, obs: Observation) -> torch.Tensor:
        """The observation as an estimate of the image (the baseline of evaluations): ``y`` by default."""
        return obs.y

    def observed_window(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """The part of an image ``x`` (``image_size``) that restore writes for a real observation: all of it by
        default; a physics that observes less than the image (a valid blur) cuts it to the observed window."""
        return x

    @property
    def exact_data_prox(self) -> bool:
        """Whether :meth:`prox_data` exists with this physics' options: whether its class implements it, by
        default (a physics whose options can rule it out overrides this)."""
        return type(self).prox_data is not Physics.prox_data

    def prox_data(self, z: torch.Tensor, y: torch.Tensor, tau: torch.Tensor, params: Params | None = None):
        """``prox_{τ f}(z) = argmin_x ½‖A x − y‖² + ‖x − z‖²/(2τ)`` exactly (schemes that split the data term)."""
        raise ValueError(f"physics {self.name} has no exact proximal operator of its data term; use model.scheme=fb")


PHYSICS: dict[str, type[Physics]] = {}


def register_physics(cls: type[Physics]) -> type[Physics]:
    """Class decorator: make ``cls`` available as ``physics.name: <cls.name>``; a physics that needs a
    user's operator must say how it is given (``user_operator``)."""
    if cls.needs_user_operator and cls.user_operator is None:
        raise TypeError(f"physics {cls.__name__} sets needs_user_operator but no user_operator (its flag)")
    PHYSICS[cls.name] = cls
    return cls


def operator_norm(physics: Physics, like: torch.Tensor, params: Params | None = None, iterations: int = 100,
                  tol: float = 1e-7) -> float:
    """``‖A‖₂`` by power iteration on ``AᵀA`` at the shape of ``like`` (seeded, deterministic)."""
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(like.shape, generator=generator, dtype=torch.float64).to(like)
    value = 0.0
    for _ in range(iterations):
        v = v / torch.linalg.vector_norm(v).clamp_min(1e-300)
        w = physics.normal(v, params)
        new = float(torch.sum(v * w))
        if abs(new - value) <= tol * max(new, 1e-30):
            value = new
            break
        value, v = new, w
    return max(value, 0.0) ** 0.5


def __getattr__(name: str):
    """``ChannelGaussianNoise``, still importable from here: its module imports deepinv, so on first use only."""
    if name == "ChannelGaussianNoise":
        from .noise import ChannelGaussianNoise

        return ChannelGaussianNoise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
