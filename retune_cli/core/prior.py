"""The prior contract: a regularizer ``g_θ`` that owns its learnable θ and the operators schemes need.

A prior is an ``nn.Module`` whose parameters are θ. It offers one or both of two capabilities:

* ``prox``: ``prox_{τ g_θ}(x) = argmin_z g_θ(z) + ‖z − x‖²/(2τ)``, exact and differentiable in x and θ
  (forward-backward, Douglas–Rachford, half-quadratic splitting); a plug-and-play denoiser stands in for it;
* ``analysis``: ``g_θ(x) = h(W_θ L x)`` with a linear analysis operator ``L_θ = W_θ L`` (weights
  included), its adjoint, a bound on its norm, and the proximal operator of the conjugate of ``h``
  (primal–dual schemes): ``prox_{σ h*}(z)``, the projection onto the dual ball when h is a norm.

Besides: ``value(x)`` (``g_θ(x)`` summed over the batch), ``step()`` (a learned step τ, or None for the
scheme's rule), ``init_from_noise`` (the ``model.init: noise`` start), ``scale_noise`` (``restore
--sigma``), ``describe()`` (θ in natural units for ``retune show``), ``multiple`` (image sides it needs).
A capability is offered when the class overrides its methods; schemes declare which they need.

Priors are registered by name (``model.prior`` in a config) with :func:`register_prior`; each declares
its config options and their defaults in ``options``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from .priors import group_norm

CAPABILITIES = {"prox": ("prox",), "analysis": ("analysis", "analysis_adjoint", "analysis_norm", "conjugate_prox"),
                "noise start": ("init_from_noise",)}


class Prior(nn.Module):
    """``g_θ``: see the module docstring. Subclasses set ``name`` and ``options`` and override the
    methods of the capabilities they offer."""

    name: ClassVar[str]
    options: ClassVar[dict[str, object]] = {}  # config key → default (the type of the default is the key's)
    runs_user_code: ClassVar[bool] = False  # building it imports code named in the config
    network: ClassVar[str | None] = None  # a submodule of network weights, stored as ``<network>.*`` when learned
    learns_step: ClassVar[bool] = False  # θ holds the step τ (plug-and-play): ``step()`` gives it
    multiple: int = 1

    @classmethod
    def capabilities(cls) -> set[str]:
        """What this prior offers: ``prox``, ``analysis``, ``noise start`` (the methods it overrides)."""
        return {c for c, methods in CAPABILITIES.items()
                if all(getattr(cls, m) is not getattr(Prior, m) for m in methods)}

    def prox(self, x: torch.Tensor, tau) -> torch.Tensor:
        """``prox_{τ g_θ}(x)``."""
        raise NotImplementedError(f"prior {self.name} has no proximal operator")

    def analysis(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``W_θ L x``."""
        raise NotImplementedError(f"prior {self.name} has no analysis operator")

    def analysis_adjoint(self, z: list[torch.Tensor]) -> torch.Tensor:
        """``(W_θ L)ᵀ z``."""
        raise NotImplementedError(f"prior {self.name} has no analysis operator")

    def analysis_norm(self) -> torch.Tensor:
        """An upper bound on ``‖W_θ L‖₂`` (a tensor: steps may depend on θ through it)."""
        raise NotImplementedError(f"prior {self.name} has no analysis operator")

    def conjugate_prox(self, z: list[torch.Tensor], sigma) -> list[torch.Tensor]:
        """``prox_{σ h*}(z)`` for ``g_θ = h ∘ W_θ L``."""
        raise NotImplementedError(f"prior {self.name} has no analysis operator")

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """``g_θ(x)`` summed over the batch."""
        raise NotImplementedError(f"prior {self.name} has no value")

    def step(self) -> torch.Tensor | None:
        """A learned step τ (plug-and-play), or None: the scheme's rule sets τ."""
        return None

    def init_from_noise(self, noise: Sequence[float], pixels: int) -> None:
        """Set θ from the noise level per channel ``noise`` and the pixels of a training image."""
        raise NotImplementedError(f"prior {self.name} has no noise start")

    def scale_noise(self, trained: Sequence[float], given: Sequence[float]) -> tuple[tuple[float, ...], str]:
        """Move θ, in place, from the noise level per channel it was trained at to ``given``; returns the
        factors applied and what they scaled (``"θ"``, ``"the denoiser's σ"``). Refused by default."""
        raise ValueError(f"prior {self.name} has no noise scaling")

    @classmethod
    def build(cls, options: dict[str, object], channels: int) -> Prior:
        """The prior from its config ``options`` (its declared keys) for images of ``channels`` channels."""
        return cls(**options)

    def describe(self) -> dict[str, torch.Tensor]:
        """θ in natural units for ``retune show``: label → values (default: ``exp`` of ``log_*`` parameters,
        the others as they are)."""
        return {name.removeprefix("log_"): (torch.exp(p) if name.startswith("log_") else p).detach().double().cpu()
                for name, p in self.named_parameters(recurse=False)}


PRIORS: dict[str, type[Prior]] = {}


def register_prior(cls: type[Prior]) -> type[Prior]:
    """Class decorator: make ``cls`` available as ``model.prior: <cls.name>``."""
    if not (isinstance(cls, type) and issubclass(cls, Prior)):
        raise TypeError(f"register_prior takes a subclass of Prior, not {cls!r}")
    if not cls.capabilities() & {"prox", "analysis"}:
        raise TypeError(f"prior {cls.__name__} overrides neither prox nor the analysis methods")
    PRIORS[cls.name] = cls
    return cls


def project_groups(z: torch.Tensor, dims: tuple[int, ...], radius=1.0) -> torch.Tensor:
    """Projection onto ``{z : ‖z_g‖ ≤ radius}`` group by group (over ``dims``; ``()``: entry by entry):
    ``prox_{σ h*}`` of ``h = radius·‖·‖_{1,2}`` whatever σ."""
    size = z.abs() if not dims else group_norm(z, dims)
    return z / torch.clamp(size / radius, min=1)
