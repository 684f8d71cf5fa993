"""The weighted total-variation prior ``g_θ(x) = h(W_θ ∇x)`` as a :class:`~.prior.Prior`.

∇ is the forward difference per channel with Neumann boundary (the difference past the last row or
column is 0): ``(∇x)_{c,1,i,j} = x_{c,i+1,j} − x_{c,i,j}`` (vertical), ``(∇x)_{c,2,i,j} = x_{c,i,j+1} − x_{c,i,j}``
(horizontal). θ holds one weight per direction × channel, ``w_{d,c} = exp(log_weight[d, c]) > 0``, and
``W_θ`` multiplies direction d of channel c by ``w_{d,c}``. Two variants (``model.tv``):

* ``isotropic``: ``h(p) = Σ_{c,i,j} ‖p_{c,·,i,j}‖₂`` (the two directions of a pixel form a group);
* ``anisotropic``: ``h(p) = ‖p‖₁``.

``model.colour: opponent`` takes the differences of the opponent colours ``O x`` (luminance and two colour
differences, :mod:`.colour`) instead of R, G, B, with a weight per opponent channel.

TV has no closed-form proximal operator: the prior offers the ``analysis`` capability only (``W_θ ∇``, its
adjoint ``−div(W_θ ·)``, a bound on its norm, ``prox_{σh*}`` = the projection onto the dual unit ball), so
it is solved by the primal–dual scheme ``model.scheme: pd``.

The noise start sets ``w_{d,c} = κ s_c`` (``κ`` = :data:`NOISE_FACTOR`, ``s_c`` the channel's noise level as
seen through A, :func:`~retune_cli.models.prior_noise`): where ``AᵀA ≈ hI`` the problem is TV denoising of
``x_LS`` (noise ``σ/√h``) with weight ``w/h``, so ``w = κσ√h`` is the weight that suits denoising at ``σ/√h``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .colour import check_colour, colour_noise, colour_ratios, from_colour, to_colour
from .prior import Prior, project_groups, register_prior

VARIANTS = ("isotropic", "anisotropic")
# κ: the TV weight that maximizes the mean PSNR of isotropic TV denoising, as a multiple of σ. Measured at
# the exact minimizer: 0.6, 0.7, 0.8 on 8 CBSD68 photographs (160×160 crops) at σ = 0.05, 0.10, 0.15, and 0.7,
# 0.8, 0.8 on the built-in samples (256×256) at σ = 0.05, 0.08, 0.10; κ = 0.7 is within 0.2 dB of the best.
NOISE_FACTOR = 0.7


def gradient(x: torch.Tensor) -> torch.Tensor:
    """``∇x``: ``(N, C, H, W)`` → ``(N, C, 2, H, W)``, forward differences (vertical, horizontal), 0 past
    the last row/column (Neumann)."""
    vertical = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    horizontal = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    return torch.stack((vertical, horizontal), dim=-3)


def gradient_adjoint(p: torch.Tensor) -> torch.Tensor:
    """``∇ᵀp = −div p``: ``(N, C, 2, H, W)`` → ``(N, C, H, W)``; the entries past the last row/column (which
    ∇ never fills) are ignored, so ``⟨∇x, p⟩ = ⟨x, ∇ᵀp⟩`` for every p."""
    v = p[..., 0, :-1, :]  # rows 0 … H−2
    h = p[..., 1, :, :-1]  # columns 0 … W−2
    return F.pad(v, (0, 0, 1, 0)) - F.pad(v, (0, 0, 0, 1)) + F.pad(h, (1, 0)) - F.pad(h, (0, 1))


@register_prior
class TVPrior(Prior):
    """``h(W_θ ∇x)`` (see the module docstring); ``log_weight`` of shape ``(2, C)``: direction × channel."""

    name = "tv"
    options = {"tv": "isotropic", "init_lambda": 0.05, "colour": "rgb"}

    def __init__(self, tv: str = "isotropic", init_lambda: float = 0.05, channels: int = 3, colour: str = "rgb"):
        """The paper-style start: every weight ``w_{d,c} = init_lambda``."""
        super().__init__()
        check_colour(colour, channels)
        if tv not in VARIANTS:
            raise ValueError(f"model.tv must be one of {', '.join(VARIANTS)}, not {tv!r}")
        if not (isinstance(init_lambda, (int, float)) and math.isfinite(init_lambda) and init_lambda > 0):
            raise ValueError(f"model.init_lambda must be a positive number, not {init_lambda!r}")
        if channels < 1:
            raise ValueError(f"a TV prior needs at least one channel, not {channels}")
        self.tv, self.colour = tv, colour
        self.log_weight = nn.Parameter(torch.full((2, channels), math.log(init_lambda)))

    @classmethod
    def build(cls, options: dict[str, object], channels: int) -> TVPrior:
        return cls(**options, channels=channels)

    def weights(self) -> torch.Tensor:
        """``w_{d,c}`` shaped ``(1, C, 2, 1, 1)`` to broadcast against ``∇x``."""
        return torch.exp(self.log_weight).t().reshape(1, -1, 2, 1, 1)

    def analysis(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[W_θ ∇(O x)]``, one band of shape ``(N, C, 2, H, W)`` (O: ``model.colour``, :mod:`.colour`)."""
        return [self.weights().to(x) * gradient(to_colour(x, self.colour))]

    def analysis_adjoint(self, z: list[torch.Tensor]) -> torch.Tensor:
        """``Oᵀ ∇ᵀ(W_θ z) = −Oᵀ div(W_θ z)``."""
        (p,) = z
        return from_colour(gradient_adjoint(self.weights().to(p) * p), self.colour)

    def analysis_norm(self) -> torch.Tensor:
        """``2 max_c √(w_{1,c}² + w_{2,c}²) ≥ ‖W_θ ∇‖``: ``‖W∇‖² = max_c ‖w_{1,c}² D_vᵀD_v + w_{2,c}² D_hᵀD_h‖``
        and ``‖D_vᵀD_v‖, ‖D_hᵀD_h‖ ≤ 4`` (tight as the image grows)."""
        return 2 * torch.exp(2 * self.log_weight).sum(0).sqrt().max()

    def conjugate_prox(self, z: list[torch.Tensor], sigma) -> list[torch.Tensor]:
        """``prox_{σh*}`` = the projection onto h's dual unit ball whatever σ: ``{‖p_{c,·,i,j}‖₂ ≤ 1}``
        (isotropic), ``[−1, 1]`` entrywise (anisotropic)."""
        (p,) = z
        return [project_groups(p, (2,)) if self.tv == "isotropic" else torch.clamp(p, -1, 1)]

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """``Σ_{n,c,i,j} ‖(W_θ∇x)_{n,c,·,i,j}‖₂`` (isotropic) or ``‖W_θ ∇x‖₁`` (anisotropic)."""
        (p,) = self.analysis(x)
        return torch.sqrt((p * p).sum(2)).sum() if self.tv == "isotropic" else p.abs().sum()

    def init_from_noise(self, noise: Sequence[float], pixels: int) -> None:
        """``w_{d,c} = κ s_c`` with ``κ`` = :data:`NOISE_FACTOR` for both directions (``pixels`` is not used:
        the best TV weight hardly depends on the image's size); s_c of the analysed channel c."""
        s = torch.as_tensor(colour_noise(noise, self.colour), dtype=torch.float64)
        if s.shape != self.log_weight.shape[1:] or not torch.all(torch.isfinite(s) & (s > 0)):
            raise ValueError(f"the noise start needs {self.log_weight.shape[1]} finite positive noise levels, "
                             f"not {list(noise)}")
        with torch.no_grad():
            self.log_weight.copy_(torch.log(NOISE_FACTOR * s).expand_as(self.log_weight))

    def scale_noise(self, trained: Sequence[float], given: Sequence[float]) -> tuple[tuple[float, ...], str]:
        """``w'_{d,c} = (s'_c / s_c) w_{d,c}`` (s_c of the analysed channel c): the best TV weight grows
        linearly with the noise."""
        factors = tuple(g / t for g, t in zip(given, trained))
        if len(factors) != self.log_weight.shape[1] or not all(math.isfinite(f) and f > 0 for f in factors):
            raise ValueError(f"noise scaling needs {self.log_weight.shape[1]} positive factors, not {factors}")
        ratios = colour_ratios(trained, given, self.colour)
        with torch.no_grad():
            self.log_weight.add_(torch.log(torch.tensor(ratios, dtype=self.log_weight.dtype)).to(self.log_weight))
        return factors, "the TV weights"

    def describe(self) -> dict[str, torch.Tensor]:
        """The weights ``w_{d,c}``, rows vertical and horizontal."""
        return {"weight": torch.exp(self.log_weight).detach().double().cpu()}

    def extra_repr(self) -> str:
        return f"tv={self.tv!r}, colour={self.colour!r}, channels={self.log_weight.shape[1]}"
