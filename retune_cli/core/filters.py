"""A learned analysis-filter prior (fields-of-experts-like): ``g_θ(x) = h(W_θ L_θ x)``,
``(W_θ L_θ x)_{f,c} = w_{f,c} (F_f * x_c)``.

θ is a bank of F small ``k × k`` filters, applied to every channel alike, and one weight per filter and
channel. The filters seen by the scheme are the raw parameters ``r_f`` with their mean (DC) removed and
scaled to unit norm,

    ``F_f = P r_f / ‖P r_f‖₂``,   ``P r = r − mean(r)``,

so constants are never penalized (``F_f * 1 = 0`` away from the borders) and the weights
``w_{f,c} = exp(log_w_{f,c})`` alone carry the strength. The raw filters are stored at norm ``k``:
Adam's steps of about ``lr`` per entry then turn a filter by about ``lr`` radians, as they scale a weight
by about ``e^{±lr}``, so one ``train.lr`` suits both. They start as the 2-D DCT-II basis without its DC
atom (lowest frequencies first), each of unit norm.

The analysis operator is ``(L_θ x)_{f,c} = w_{f,c} (F_f * x_c)``: zero-padded 'same' correlation
(``conv2d``), and its exact adjoint. The penalty ``h`` (``model.penalty``) is

* ``huber`` (the default): ``g_θ(x) = Σ w_{f,c} huber_δ(F_f * x_c)``, δ = ``model.huber_delta`` in units of
  the filter responses (pixel values), ``huber_δ(r) = r²/(2δ)`` for ``|r| ≤ δ``, ``|r| − δ/2`` beyond. Since
  ``w huber_δ(r) = huber_{wδ}(w r)``, ``h(u) = Σ huber_{δ_i}(u_i)`` with ``δ_{f,c} = w_{f,c} δ``, whose conjugate
  is ``h*(p) = Σ δ_i p_i²/2 + ι_{‖p‖∞ ≤ 1}``: ``prox_{σh*}(p) = clamp(p/(1 + σ w δ), −1, 1)``. h* is strongly
  convex, so the primal–dual iterates converge linearly: the fixed point, hence ReTune's gradient, is
  reached in a few hundred steps;
* ``l1``: ``h(u) = ‖u‖₁``, ``h*`` the indicator of ``{‖p‖∞ ≤ 1}``, ``prox_{σh*}(p) = clamp(p, −1, 1)``
  (sharper, but the dual iterates converge slowly: thousands of steps).

``model.colour: opponent`` analyses the opponent colours ``O x`` (luminance and two colour differences, an
orthonormal O: :mod:`.colour`) instead of R, G, B: the weights then smooth colour apart from luminance.

There is no closed-form ``prox_{τg}``: the prior offers the ``analysis`` capability only (``model.scheme: pd``).

``‖L_θ‖`` is bounded from the filters' spectra: zero-padding restricts a convolution on ℤ², so
``‖L_θ‖² ≤ S = max_c sup_ω P_c(ω)``, ``P_c(ω) = Σ_f w_{f,c}² |F̂_f(ω)|²``. ``P_c`` is a real trigonometric
polynomial of degree ``n = k − 1`` in each of ω₁, ω₂, so Bernstein's inequality ``|∂_i P_c| ≤ n S`` and an
``N × N`` grid (every ω within ``π/N`` of a node in each coordinate) give ``S ≤ M + 2πnS/N``:
``S ≤ M / (1 − 2πn/N)`` with M the grid maximum. With ``N = 128 n`` the bound exceeds the true sup by at
most 5 % (2.5 % on ``‖L_θ‖``), and it is differentiable in θ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .colour import check_colour, colour_noise, colour_ratios, from_colour, to_colour
from .prior import Prior, register_prior

PENALTIES = ("l1", "huber")
GRID_PER_DEGREE = 128  # FFT grid N = GRID_PER_DEGREE · (k − 1) for analysis_norm
# init_from_noise: w_{f,c} = κ s_c, κ the best uniform weight of the DCT start (PSNR of the built-in sample
# photographs, 96 × 96 crops, σ = 0.08): l1 30.49 dB at κ = 0.05; huber (δ = 0.01) 30.34 dB at 0.06.
NOISE_START = {"l1": 0.05, "huber": 0.06}


def dct_filters(count: int, size: int) -> torch.Tensor:
    """The ``count`` lowest-frequency atoms of the orthonormal 2-D DCT-II basis of ``size × size`` without
    its DC atom, ``(count, 1, size, size)``: ``a_{u,v}[i, j] = c_u(i) c_v(j)``,
    ``c_u(i) = α_u cos(π(2i + 1)u / (2 size))``, ``α_0 = √(1/size)``, ``α_u = √(2/size)``; sorted by
    ``u + v``, then by ``max(u, v)``, then by u. Each atom has unit norm and zero mean."""
    i = torch.arange(size, dtype=torch.float64)
    basis = torch.stack([math.sqrt((1 if u == 0 else 2) / size) * torch.cos(math.pi * (2 * i + 1) * u / (2 * size))
                         for u in range(size)])
    order = sorted(((u, v) for u in range(size) for v in range(size) if (u, v) != (0, 0)),
                   key=lambda uv: (uv[0] + uv[1], max(uv), uv[0]))
    atoms = [torch.outer(basis[u], basis[v]) for u, v in order[:count]]
    return torch.stack(atoms).unsqueeze(1).float()


def huber(u: torch.Tensor, delta: float | torch.Tensor) -> torch.Tensor:
    """``huber_δ(u) = u²/(2δ)`` for ``|u| ≤ δ``, ``|u| − δ/2`` beyond (entry by entry; δ broadcasts)."""
    a = u.abs()
    return torch.where(a <= delta, u * u / (2 * delta), a - delta / 2)


def _check_options(filters: int, filter_size: int, penalty: str, huber_delta: float, init_lambda: float) -> None:
    """``ValueError`` naming the first option out of range."""
    if not (isinstance(filter_size, int) and filter_size >= 3 and filter_size % 2 == 1):
        raise ValueError(f"model.filter_size must be an odd integer ≥ 3, not {filter_size!r}")
    if not (isinstance(filters, int) and 1 <= filters <= filter_size**2 - 1):
        raise ValueError(f"model.filters must be between 1 and filter_size² − 1 = {filter_size**2 - 1} "
                         f"(the DCT basis without its DC atom), not {filters!r}")
    if penalty not in PENALTIES:
        raise ValueError(f"model.penalty must be one of {', '.join(PENALTIES)}, not {penalty!r}")
    if not (isinstance(huber_delta, (int, float)) and 0 < huber_delta < math.inf):
        raise ValueError(f"model.huber_delta must be a positive number, not {huber_delta!r}")
    if not (isinstance(init_lambda, (int, float)) and 0 < init_lambda < math.inf):
        raise ValueError(f"model.init_lambda must be a positive number, not {init_lambda!r}")


@register_prior
class FilterPrior(Prior):
    """``h(W_θ L_θ x)`` (see the module docstring): parameters ``filters_raw (F, 1, k, k)`` and
    ``log_weights (F, C)``."""

    name = "filters"
    options = {"filters": 24, "filter_size": 5, "penalty": "huber", "huber_delta": 0.01, "init_lambda": 0.05,
               "colour": "rgb"}

    def __init__(self, filters: int = 24, filter_size: int = 5, penalty: str = "huber", huber_delta: float = 0.01,
                 init_lambda: float = 0.05, colour: str = "rgb", channels: int = 3):
        super().__init__()
        _check_options(filters, filter_size, penalty, huber_delta, init_lambda)
        check_colour(colour, channels)
        self.penalty, self.huber_delta, self.size, self.colour = penalty, float(huber_delta), filter_size, colour
        self.filters_raw = nn.Parameter(filter_size * dct_filters(filters, filter_size))
        self.log_weights = nn.Parameter(torch.full((filters, channels), math.log(init_lambda)))

    @classmethod
    def build(cls, options: dict[str, object], channels: int) -> FilterPrior:
        return cls(**options, channels=channels)

    def bank(self) -> torch.Tensor:
        """The filters ``F_f = P r_f / ‖P r_f‖``, ``(F, 1, k, k)``: zero mean, unit norm."""
        centred = self.filters_raw - self.filters_raw.mean(dim=(-2, -1), keepdim=True)
        return centred / torch.linalg.vector_norm(centred, dim=(-2, -1), keepdim=True).clamp_min(1e-12)

    def weights(self) -> torch.Tensor:
        """``w_{f,c} = exp(log_w_{f,c})``, ``(F, C)``."""
        return torch.exp(self.log_weights)

    def analysis(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[u]``, ``u_{b,c,f} = w_{f,c} (F_f * (O x)_{b,c})``: one tensor ``(B, C, F, H, W)``, zero-padded
        'same' correlation (O: ``model.colour``, :mod:`.colour`)."""
        x = to_colour(x, self.colour)
        b, c, h, w = x.shape
        bank = self.bank().to(x)
        responses = F.conv2d(x.reshape(b * c, 1, h, w), bank, padding=self.size // 2)
        return [responses.reshape(b, c, -1, h, w) * self.weights().to(x).t()[None, :, :, None, None]]

    def analysis_adjoint(self, z: list[torch.Tensor]) -> torch.Tensor:
        """``L_θᵀ z``: ``(Lᵀz)_{b,c} = Σ_f F_f ⋆ᵀ (w_{f,c} z_{b,c,f})``, the exact adjoint of the zero-padded
        correlation: per pixel the k² taps ``Σ_f w_{f,c} F_f[t] z_{b,c,f}`` (one matrix product), then their
        shifted sum (``fold``; faster on CPU than ``conv_transpose2d``)."""
        (u,) = z
        b, c, f, h, w = u.shape
        taps = self.bank().to(u).reshape(f, -1).t()[None] * self.weights().to(u).t()[:, None, :]  # (C, k², F)
        columns = torch.matmul(taps, u.reshape(b, c, f, h * w))  # (B, C, k², HW)
        out = F.fold(columns.reshape(b * c, -1, h * w), (h, w), self.size, padding=self.size // 2)
        return from_colour(out.reshape(b, c, h, w), self.colour)

    def spectrum(self, grid: int) -> torch.Tensor:
        """``P_c(ω) = Σ_f w_{f,c}² |F̂_f(ω)|²`` on the ``grid × grid`` frequencies (half plane: P is even),
        ``(C, grid, grid // 2 + 1)``: the modulus of the DFT of ``Σ_f w_{f,c}² (F_f ⋆ F_f)``, the weighted
        autocorrelations (``(2k − 1)²`` taps; one FFT per channel rather than per filter)."""
        bank = self.bank()
        count, k = bank.shape[0], self.size
        auto = F.conv2d(bank.reshape(1, count, k, k), bank, padding=k - 1, groups=count)[0]  # (F, 2k−1, 2k−1)
        return torch.fft.rfft2(torch.einsum("fc,fij->cij", self.weights() ** 2, auto), s=(grid, grid)).abs()

    def analysis_norm(self) -> torch.Tensor:
        """``√(M / (1 − 2πn/N))`` ≥ ``‖L_θ‖₂``: M the max of ``P_c`` on an ``N × N`` grid, ``n = k − 1``,
        ``N = 128 n`` (Bernstein's inequality; see the module docstring)."""
        degree = self.size - 1
        grid = GRID_PER_DEGREE * degree
        return torch.sqrt(self.spectrum(grid).max() / (1 - 2 * math.pi * degree / grid))

    def conjugate_prox(self, z: list[torch.Tensor], sigma) -> list[torch.Tensor]:
        """``prox_{σh*}``: ``clamp(p, −1, 1)`` (l1), ``clamp(p/(1 + σ w δ), −1, 1)`` (huber, entry ``(f, c)``)."""
        if self.penalty == "huber":
            return [torch.clamp(p / (1 + sigma * self.thresholds().to(p)), -1, 1) for p in z]
        return [torch.clamp(p, -1, 1) for p in z]

    def thresholds(self) -> torch.Tensor:
        """Huber's ``w_{f,c} δ`` on the weighted responses, ``(1, C, F, 1, 1)``: ``huber_{wδ}(w r) = w huber_δ(r)``."""
        return (self.weights().t() * self.huber_delta)[None, :, :, None, None]

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """``g_θ(x) = h(L_θ x)`` over the batch: ``Σ |u|`` (l1), ``Σ huber_{wδ}(u)`` (huber)."""
        (u,) = self.analysis(x)
        return huber(u, self.thresholds().to(u)).sum() if self.penalty == "huber" else u.abs().sum()

    def init_from_noise(self, noise: Sequence[float], pixels: int) -> None:
        """``w_{f,c} = κ s_c``, ``κ = NOISE_START[penalty]``, s_c the noise level of analysed channel c: the
        strength of the penalty scales with the noise level, as a threshold does."""
        levels = colour_noise(noise, self.colour)
        start = torch.tensor([NOISE_START[self.penalty] * s for s in levels], dtype=self.log_weights.dtype)
        with torch.no_grad():
            self.log_weights.copy_(torch.log(start.clamp_min(1e-12)).to(self.log_weights).expand_as(self.log_weights))

    def scale_noise(self, trained: Sequence[float], given: Sequence[float]) -> tuple[tuple[float, ...], str]:
        """``w'_{f,c} = (s'_c / s_c) w_{f,c}`` (s_c of analysed channel c): the weights scale linearly with the
        noise."""
        factors = tuple(g / t for g, t in zip(given, trained))
        ratios = colour_ratios(trained, given, self.colour)
        shift = torch.log(torch.tensor(ratios, dtype=self.log_weights.dtype)).to(self.log_weights)
        with torch.no_grad():
            self.log_weights.add_(shift[None, :])
        return factors, "the filter weights"

    def describe(self) -> dict[str, torch.Tensor]:
        """``weights`` ``(F, C)`` and the unit-norm, zero-mean ``filters``, flattened ``(F·k·k,)`` row-major."""
        return {"weights": self.weights().detach().double().cpu(),
                "filters": self.bank().detach().double().cpu().flatten()}
