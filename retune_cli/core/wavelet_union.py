"""A union of M orthonormal wavelet bases (a Parseval tight frame) with a weighted ℓ2,1 prior, per basis.

With ``D_m`` the orthonormal periodized DWT of basis m (:mod:`.wavelets`) and ``θ_m`` its weights
(:class:`~.priors.WaveletWeights`: θ_B per scale × band, θ_BC per scale × band × channel), the prior is

    ``g_θ(x) = h(L_θ x)``,  ``L_θ x = [θ_m D_m^det x / √M]_{m=1..M}``,  ``h(z) = Σ_groups ‖z_g‖₂``

on the detail bands only (the approximation bands are unpenalized); groups span the bands (θ_B) or the
bands × channels (θ_BC) of one position, as in the single-basis prior. The stacked ``[D_m / √M]_m`` is a
Parseval frame, ``Σ_m D_mᵀ D_m / M = I``, so ``‖L_θ‖² ≤ mean_m max θ_m²``. L_θ is not orthonormal, so
``prox_{τ g_θ}`` has no closed form: the prior offers the analysis capability only (``model.scheme: pd``,
Condat–Vũ), whose dual step is ``prox_{σ h*}`` = the projection of each group onto the unit ball.

``model.colour: opponent`` analyses the opponent colours ``O x`` (:mod:`.colour`) instead of R, G, B; with
``model.weights: bands-channels`` each opponent channel gets its own weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .colour import check_colour, colour_noise, colour_ratios, from_colour, to_colour
from .prior import Prior, project_groups, register_prior
from .priors import WaveletWeights, group_norm
from .wavelets import Coefficients, WaveletTransform

# The noise start: θ_m = NOISE_START / √M × the universal threshold of one basis (WaveletWeights.universal).
# √M undoes the frame's redundancy (M identical bases would make the penalty √M θ ‖D x‖). The constant was
# measured on the five sample photographs (128² crops, 300 primal–dual steps, mean PSNR): the best c is
# 0.4–0.45 for denoising σ = 0.08, 0.7 for σ = (0.10, 0.25, 0.50), 0.7–1.0 for inpainting 90 % (σ = 0.05);
# 0.6 minimizes the largest loss to the best (≤ 1.1 dB; 0.5 or 0.7 lose ≥ 1.8 dB on one of them).
NOISE_START = 0.6


def parse_bases(bases: str) -> list[str]:
    """The wavelet names of ``model.bases`` (comma-separated, distinct, each orthogonal), or ValueError."""
    import pywt

    names = [b.strip() for b in str(bases).split(",")]
    if not names or any(not n for n in names):
        raise ValueError(f"model.bases must be a comma-separated list of orthogonal wavelets, not {bases!r}")
    if len(set(names)) < len(names):
        raise ValueError(f"model.bases lists a wavelet twice: {bases!r}")
    for name in names:
        try:
            orthogonal = pywt.Wavelet(name).orthogonal
        except ValueError:
            orthogonal = False
        if not orthogonal:
            raise ValueError(f"model.bases: {name!r} is not an orthogonal discrete wavelet; "
                             "choose e.g. haar, db4, db8, sym5, coif3")
    return names


@register_prior
class WaveletUnionPrior(Prior):
    """``h(L_θ x)`` over a union of orthonormal wavelet bases (see the module docstring).

    ``basis_weights[m]`` holds θ_m (``log_lambda`` per scale, ``log_Lambda`` per band or band × channel);
    ``channel_scale`` (set by :meth:`scale_noise`) multiplies every θ per channel.
    """

    name = "wavelet-union"
    options = {"bases": "db4,db8,sym5,coif3,haar", "levels": 4, "weights": "bands", "init_lambda": 0.05,
               "colour": "rgb"}

    def __init__(self, bases: str = "db4,db8,sym5,coif3,haar", levels: int = 4, weights: str = "bands",
                 init_lambda: float = 0.05, colour: str = "rgb", channels: int = 3):
        super().__init__()
        check_colour(colour, channels)
        self.bases = parse_bases(bases)
        self.weights, self.colour = weights, colour
        self.transforms = [WaveletTransform(b, levels) for b in self.bases]
        self.basis_weights = nn.ModuleList(
            WaveletWeights(levels, weights, channels=channels, init_lambda=init_lambda) for _ in self.bases)
        self.levels = levels
        self.multiple = 2**levels
        self.channel_scale: torch.Tensor | None = None

    @classmethod
    def build(cls, options: dict[str, object], channels: int) -> WaveletUnionPrior:
        return cls(**options, channels=channels)

    @property
    def group_dims(self) -> tuple[int, ...]:
        """Dimensions of a ``(N, C, 3, h, w)`` band tensor that a group spans: bands, or bands × channels."""
        return self.basis_weights[0].group_dims

    def diagonals(self) -> list[list[torch.Tensor]]:
        """``θ_m / √M`` per basis m and level (coarsest first), shaped to broadcast against ``(N, C, 3, h, w)``."""
        root = math.sqrt(len(self.bases))
        scale = self.channel_scale
        return [[t / root if scale is None else t * scale.to(t) / root for t in w.diagonal()]
                for w in self.basis_weights]

    def analysis(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``L_θ x = [θ_{m,j} d_{m,j} / √M]`` with ``d_{m,j}`` the details of level j of ``D_m O x`` (O:
        ``model.colour``, :mod:`.colour`): a flat list, basis after basis, coarsest level first in each."""
        x = to_colour(x, self.colour)
        return [t * d for transform, theta in zip(self.transforms, self.diagonals())
                for t, d in zip(theta, transform.analysis(x).details)]

    def analysis_adjoint(self, z: list[torch.Tensor]) -> torch.Tensor:
        """``L_θᵀ z = Oᵀ Σ_m D_mᵀ (0, θ_m z_m / √M)``: the approximation bands zero."""
        out = None
        for m, (transform, theta) in enumerate(zip(self.transforms, self.diagonals())):
            bands = z[m * self.levels:(m + 1) * self.levels]
            details = tuple(t * b for t, b in zip(theta, bands))
            h, w = details[0].shape[-2:]
            approx = details[0].new_zeros(*details[0].shape[:2], h, w)
            x = transform.synthesis(Coefficients(approx, details))
            out = x if out is None else out + x
        return from_colour(out, self.colour)

    def analysis_norm(self) -> torch.Tensor:
        """``√(mean_m max θ_m²) ≥ ‖L_θ‖``: ``‖L_θ x‖² = Σ_m ‖θ_m D_m^det x‖²/M ≤ Σ_m max θ_m² ‖x‖²/M`` since
        each ``D_m`` is orthonormal (exact when θ is constant)."""
        peaks = torch.stack([torch.stack([t.amax() for t in theta]).amax() for theta in self.diagonals()])
        return peaks.pow(2).sum().sqrt()

    def conjugate_prox(self, z: list[torch.Tensor], sigma) -> list[torch.Tensor]:
        """``prox_{σh*}(z)``: h is the unweighted ℓ2,1 norm (θ lives in L_θ), so each group is projected
        onto the unit ball, ``z_g / max(1, ‖z_g‖)``, whatever σ."""
        return [project_groups(b, self.group_dims) for b in z]

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """``g_θ(x) = Σ_groups ‖(L_θ x)_g‖₂``, summed over the batch."""
        return sum(group_norm(b, self.group_dims).sum() for b in self.analysis(x))

    def init_from_noise(self, noise: Sequence[float], pixels: int) -> None:
        """θ_m = ``NOISE_START`` × the universal thresholds (:meth:`~.priors.WaveletWeights.universal`) in every
        basis; the 1/√M of L_θ makes the frame's penalty comparable to one basis' (see :data:`NOISE_START`)."""
        for weights in self.basis_weights:
            start = WaveletWeights.universal(self.levels, self.weights, colour_noise(noise, self.colour), pixels)
            with torch.no_grad():
                weights.log_lambda.copy_(start.log_lambda + math.log(NOISE_START / math.sqrt(len(self.bases))))
                weights.log_Lambda.copy_(start.log_Lambda)

    def scale_noise(self, trained: Sequence[float], given: Sequence[float]) -> tuple[tuple[float, ...], str]:
        """``θ'_{m,j,b,c} = (s'_c / s_c) θ_{m,j,b,c}`` (s_c of the analysed channel c): thresholds scale
        linearly with the noise."""
        factors = tuple(g / t for g, t in zip(given, trained))
        ratios = colour_ratios(trained, given, self.colour)
        device = self.basis_weights[0].log_lambda.device
        self.channel_scale = torch.tensor(ratios, device=device).reshape(1, -1, 1, 1, 1)
        return factors, "θ"

    def describe(self) -> dict[str, torch.Tensor]:
        """Per basis: ``<basis> lambda`` (λ_j, coarsest first) and ``<basis> Lambda`` (Λ per band, or band ×
        channel): the weight of level j, band b (channel c) is ``λ_j √Λ_{b(,c)}`` (before the 1/√M)."""
        out = {}
        for basis, weights in zip(self.bases, self.basis_weights):
            out[f"{basis} lambda"] = torch.exp(weights.log_lambda).detach().double().cpu()
            out[f"{basis} Lambda"] = torch.exp(weights.log_Lambda).detach().double().cpu()
        return out

    def extra_repr(self) -> str:
        return f"bases={','.join(self.bases)}, levels={self.levels}, weights={self.weights!r}, colour={self.colour!r}"
