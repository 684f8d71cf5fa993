"""The scheme contract: an elementary step ``φ(·, θ)`` whose restarts the gradient modes differentiate.

A scheme is an ``nn.Module`` whose learned parameters live in ``theta`` (and, for PnP, possibly its
denoiser), over a :class:`~.physics.Physics`. Iterates may be tensors or any registered pytree
(:mod:`.pytree`). Methods:

* ``prepare(obs) -> ctx``: everything that depends on θ and the observation but not on the iterate;
* ``init(ctx)``: the starting point ``u_0``;
* ``step(u, ctx)``: one elementary step ``u ↦ φ(u, θ)``;
* ``output(u, ctx)``: the image an iterate stands for;
* ``contraction(ctx)``: ω, the Lipschitz constant of φ (so Φ_K is ω^K-Lipschitz), or NaN if unknown;
* ``step_size(obs)``: τ(θ), logged during training.

:class:`PaddedScheme` adds the data term ``½‖A x − y‖²`` on a domain padded to a multiple of the
transform's or network's scale: for ``A = I`` ``y`` is reflect-padded; otherwise the padded pixels
are unobserved (``A`` acts on the crop), so padding never biases the data term.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .physics import Observation, Params, Physics
from .prior import Prior


class Scheme(nn.Module, ABC):
    """``φ(·, θ)`` and what the engine needs around it (see the module docstring)."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ("prox",)  # capabilities of the prior it needs
    needs_data_prox: ClassVar[bool] = False  # needs the physics' exact prox_data
    options: ClassVar[dict[str, object]] = {}  # config key → default, passed to compose
    physics: Physics
    theta: nn.Module

    @classmethod
    def compose(cls, physics: Physics, prior: Prior, **options) -> Scheme:
        """The scheme over ``physics`` and ``prior`` with its declared ``options``."""
        return cls(physics, prior, **{k: options[k] for k in cls.options if k in options})

    @abstractmethod
    def prepare(self, obs: Observation) -> Any: ...

    @abstractmethod
    def init(self, ctx: Any): ...

    @abstractmethod
    def step(self, u, ctx: Any): ...

    @abstractmethod
    def output(self, u, ctx: Any) -> torch.Tensor: ...

    @abstractmethod
    def contraction(self, ctx: Any) -> torch.Tensor: ...

    @abstractmethod
    def step_size(self, obs: Observation) -> torch.Tensor: ...

    def restart(self, u, ctx: Any, K: int):
        """``Φ_K(u, θ)``: K elementary steps."""
        for _ in range(K):
            u = self.step(u, ctx)
        return u


def pad_to_multiple(y: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad (replicate when too small) the bottom/right of ``y`` to multiples of ``multiple``."""
    h, w = y.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return y
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(y, (0, pw, 0, ph), mode=mode)


class PaddedScheme(Scheme):
    """A scheme with the data term ``½‖A x − y‖²`` on a domain padded to a multiple of ``multiple``."""

    def __init__(self, physics: Physics, multiple: int):
        super().__init__()
        self.physics = physics
        self.multiple = multiple

    def adjoint(self, y: torch.Tensor, params: Params) -> torch.Tensor:
        """``Aᵀ y`` on the padded domain: reflect-padded ``y`` when ``A = I``; otherwise zero on the padding."""
        if self.physics.identity:
            return pad_to_multiple(y, self.multiple)
        return self._zero_pad(self.physics.A_adjoint(y, params))

    def start(self, y: torch.Tensor, params: Params, aty: torch.Tensor) -> torch.Tensor:
        """The image to start from on the padded domain: the physics' estimate (zero on the padding) or ``aty``
        (``Aᵀy``, returned as it is, so that a caller can tell)."""
        x0 = self.physics.start(y, params)
        return aty if x0 is None else self._zero_pad(x0)

    def normal(self, x: torch.Tensor, size: tuple[int, int], params: Params) -> torch.Tensor:
        """``Aᵀ A x`` on the padded domain (``x`` when ``A = I``); ``size`` is the image's (H, W)."""
        if self.physics.identity:
            return x
        h, w = size
        return self._zero_pad(self.physics.normal(x[..., :h, :w], params))

    def _zero_pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the padded domain: zeros on the bottom/right padding (unobserved pixels)."""
        return F.pad(x, (0, -x.shape[-1] % self.multiple, 0, -x.shape[-2] % self.multiple))

    def prox_data(self, z: torch.Tensor, y: torch.Tensor, tau, size: tuple[int, int], params: Params) -> torch.Tensor:
        """``prox_{τf}(z)`` of ``f = ½‖A x − y‖²`` on the padded domain: for ``A = I`` on all of it
        (``y`` reflect-padded); otherwise on the image's crop, the identity on the unobserved padding."""
        if self.physics.identity:
            return self.physics.prox_data(z, pad_to_multiple(y, self.multiple), tau, params)
        h, w = size
        out = z.clone()
        out[..., :h, :w] = self.physics.prox_data(z[..., :h, :w], y, tau, params)
        return out


SCHEMES: dict[str, type[Scheme]] = {}
SPECIALIZED: dict[tuple[str, str], type[Scheme]] = {}


def register_scheme(name: str, prior: str | None = None) -> Callable[[type[Scheme]], type[Scheme]]:
    """Class decorator: make a scheme available as ``model.scheme: name`` for every prior offering its
    ``requires`` (or, with ``prior``, for that prior only, in place of the generic one)."""

    def decorate(cls: type[Scheme]) -> type[Scheme]:
        if not (isinstance(cls, type) and issubclass(cls, Scheme)):
            raise TypeError(f"register_scheme takes a subclass of Scheme, not {cls!r}")
        cls.name = name
        if prior is None:
            SCHEMES[name] = cls
        else:
            SPECIALIZED[name, prior] = cls
        return cls

    return decorate


def has_data_prox(physics: type[Physics] | Physics) -> bool:
    """Whether a physics class implements the exact ``prox_{τf}`` of its data term, or a physics offers it
    with its options (:attr:`~.physics.Physics.exact_data_prox`)."""
    if isinstance(physics, type):
        return physics.prox_data is not Physics.prox_data
    return physics.exact_data_prox


def scheme_class(scheme: str, prior: type[Prior], physics: type[Physics] | None = None) -> type[Scheme]:
    """The class for ``model.scheme`` × ``model.prior`` (a specialization for the pair first); ``ValueError``
    naming the keys when the prior or the physics lacks what the scheme needs."""
    cls = SPECIALIZED.get((scheme, prior.name)) or SCHEMES.get(scheme)
    if cls is None:
        raise ValueError(f"model.scheme must be one of {', '.join(sorted(SCHEMES))}, not {scheme!r}")
    missing = [c for c in cls.requires if c not in prior.capabilities()]
    if missing:
        offers = " and ".join(sorted(prior.capabilities() & {"prox", "analysis"}))
        usable = ", ".join(sorted(n for n, c in SCHEMES.items() if set(c.requires) <= prior.capabilities()))
        raise ValueError(f"model.scheme {scheme} needs a prior with {' and '.join(missing)}, and model.prior "
                         f"{prior.name} offers {offers}: use model.scheme {usable}")
    if cls.needs_data_prox and physics is not None and not has_data_prox(physics):
        raise ValueError(f"model.scheme {scheme} needs the exact proximal operator of the data term, which "
                         f"physics.name {physics.name} does not have: use model.scheme fb or pd")
    return cls
