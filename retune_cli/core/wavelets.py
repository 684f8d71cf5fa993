"""Orthonormal periodized 2-D discrete wavelet transform ``D`` and its inverse ``Dᵀ``.

With periodic boundaries and an orthogonal filter bank the multilevel transform is an orthogonal
matrix, so ``DᵀD = DDᵀ = I``: the synthesis below is the exact adjoint of the analysis, written
out (strided transposed convolution, then the periodic wrap folded back) rather than obtained by
autograd. Filters come from PyWavelets; coefficients agree with
``pywt.wavedec2(x, wavelet, mode="periodization", level=J)``.

Layout, for an input of shape ``(N, C, H, W)`` with ``H`` and ``W`` multiples of ``2**J``:

* ``approx``: ``(N, C, H / 2**J, W / 2**J)``;
* ``details[i]``: ``(N, C, 3, h, w)``, bands ordered ``(H, V, D)`` as PyWavelets' ``(cH, cV, cD)``,
  coarsest level first (``details[0]`` is scale ``J``, ``details[-1]`` scale 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .pytree import register_pytree


@dataclass(frozen=True)
class Coefficients:
    """Wavelet coefficients of a batch: the approximation band and the details of each level."""

    approx: torch.Tensor
    details: tuple[torch.Tensor, ...]


register_pytree(Coefficients, lambda c: [c.approx, *c.details], lambda ts: Coefficients(ts[0], tuple(ts[1:])))


def _periodic_index(n: int, left: int, right: int, device: torch.device) -> torch.Tensor:
    """Indices ``(i mod n)`` for ``i`` in ``[-left, n + right)``: periodic extension, any wrap count."""
    return torch.arange(-left, n + right, device=device) % n


def _periodize(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Periodic extension of the last two dimensions by ``left``/``right`` samples (any wrap count)."""
    h, w = x.shape[-2:]
    if max(left, right) <= min(h, w):
        return F.pad(x, (left, right, left, right), mode="circular")
    x = x.index_select(-2, _periodic_index(h, left, right, x.device))
    return x.index_select(-1, _periodic_index(w, left, right, x.device))


def _polyphase(f: list[float], phase: int, half: int) -> list[float]:
    """Taps ``g[t + r] = f[2t + s − phase]`` (``r = s // 2``, zero outside ``f``) of one synthesis phase.

    With ``c[n] = Σ_k f[k] x[2n + s − k]`` (``s = half``), the adjoint is
    ``x[2i + phase] = Σ_t f[2t + s − phase] c[i + t]``: a correlation with these taps.
    """
    r = half // 2
    taps = [2 * t + half - phase for t in range(-r, r + 1)]
    return [f[k] if 0 <= k < len(f) else 0.0 for k in taps]


@dataclass
class WaveletTransform:
    """Multilevel orthonormal periodized 2-D DWT ``D`` (``analysis``) and ``Dᵀ`` (``synthesis``).

    One analysis level is one strided convolution with the four separable 2-D filters
    ``(approx, H, V, D) = (h⊗h, g⊗h, h⊗g, g⊗g)`` (rows ⊗ columns) on the periodized image:
    ``c[n] = Σ_k f[k] x[(2n + L/2 − k) mod N]`` along each axis, PyWavelets' periodization convention.
    Synthesis is its transpose written in polyphase form: one convolution of the periodized bands
    giving the four phases of the image, then a pixel shuffle.
    """

    wavelet: str = "db4"
    levels: int = 4
    _bank: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        import pywt

        w = pywt.Wavelet(self.wavelet)
        if not w.orthogonal:
            raise ValueError(f"wavelet {self.wavelet!r} is not orthogonal; choose e.g. db4, sym8, haar")
        if self.levels < 1:
            raise ValueError("levels must be at least 1")
        self._lo = list(w.dec_lo)
        self._hi = list(w.dec_hi)
        self.filter_length = len(self._lo)
        self._left = self.filter_length // 2 - 1
        self._right = self.filter_length // 2

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (``2**levels``)."""
        return 2**self.levels

    def _pairs(self) -> tuple[tuple[list[float], list[float]], ...]:
        """(row filter, column filter) of the bands approx, H, V, D."""
        lo, hi = self._lo, self._hi
        return ((lo, lo), (hi, lo), (lo, hi), (hi, hi))

    def _filters(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Analysis bank ``(4, 1, L, L)`` (reversed for ``conv2d``'s correlation) and polyphase
        synthesis bank ``(4 phases, 4 bands, 2r+1, 2r+1)``."""
        key = (device, dtype)
        if key not in self._bank:
            analysis = torch.stack(
                [
                    torch.outer(torch.tensor(r[::-1], dtype=torch.float64), torch.tensor(c[::-1], dtype=torch.float64))
                    for r, c in self._pairs()
                ]
            )
            half = self.filter_length // 2
            synthesis = torch.stack(
                [
                    torch.stack(
                        [
                            torch.outer(
                                torch.tensor(_polyphase(r, p, half), dtype=torch.float64),
                                torch.tensor(_polyphase(c, q, half), dtype=torch.float64),
                            )
                            for r, c in self._pairs()
                        ]
                    )
                    for p in (0, 1)
                    for q in (0, 1)
                ]
            )
            self._bank[key] = (analysis.unsqueeze(1).to(device, dtype), synthesis.to(device, dtype))
        return self._bank[key]

    def _analysis_level(self, x: torch.Tensor) -> torch.Tensor:
        """``x (M, H, W)`` → ``(M, 4, H/2, W/2)``: approximation then details (H, V, D)."""
        xp = _periodize(x.unsqueeze(1), self._left, self._right)
        return F.conv2d(xp, self._filters(x.device, x.dtype)[0], stride=2)

    def _synthesis_level(self, bands: torch.Tensor) -> torch.Tensor:
        """Adjoint (and inverse) of :meth:`_analysis_level`: ``(M, 4, h, w)`` → ``(M, 2h, 2w)``."""
        r = self.filter_length // 4
        phases = F.conv2d(_periodize(bands, r, r), self._filters(bands.device, bands.dtype)[1])
        return F.pixel_shuffle(phases, 2)[:, 0]

    def analysis(self, x: torch.Tensor) -> Coefficients:
        """``D x`` for ``x`` of shape ``(N, C, H, W)``; ``H, W`` multiples of ``2**levels``."""
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"image sides {h}×{w} are not multiples of 2**levels = {self.multiple}")
        approx, *details = _Analysis.apply(self, x)
        return Coefficients(approx, tuple(details))

    def synthesis(self, coeffs: Coefficients) -> torch.Tensor:
        """``Dᵀ w``: the exact adjoint (and inverse) of :meth:`analysis`."""
        return _Synthesis.apply(self, coeffs.approx, *coeffs.details)

    def _analysis(self, x: torch.Tensor) -> Coefficients:
        n, c, h, w = x.shape
        approx = x.reshape(n * c, h, w)
        details = []
        for _ in range(self.levels):
            bands = self._analysis_level(approx)
            approx = bands[:, 0]
            details.append(bands[:, 1:].reshape(n, c, 3, *bands.shape[-2:]))
        return Coefficients(approx.reshape(n, c, *approx.shape[-2:]), tuple(reversed(details)))

    def _synthesis(self, coeffs: Coefficients) -> torch.Tensor:
        n, c = coeffs.approx.shape[:2]
        x = coeffs.approx.reshape(n * c, *coeffs.approx.shape[-2:])
        for d in coeffs.details:
            bands = torch.cat((x.unsqueeze(1), d.reshape(n * c, 3, *d.shape[-2:])), dim=1)
            x = self._synthesis_level(bands)
        return x.reshape(n, c, *x.shape[-2:])


class _Analysis(torch.autograd.Function):
    """``D`` with the backward ``Dᵀ g``: since ``D`` is orthogonal its adjoint is the synthesis, which is
    cheaper than differentiating the strided convolutions (and twice differentiable the same way)."""

    @staticmethod
    def forward(ctx, transform: WaveletTransform, x: torch.Tensor):
        ctx.transform = transform
        coeffs = transform._analysis(x)
        return (coeffs.approx, *coeffs.details)

    @staticmethod
    def backward(ctx, approx: torch.Tensor, *details: torch.Tensor):
        return None, ctx.transform.synthesis(Coefficients(approx, details))


class _Synthesis(torch.autograd.Function):
    """``Dᵀ`` with the backward ``D g`` (see :class:`_Analysis`)."""

    @staticmethod
    def forward(ctx, transform: WaveletTransform, approx: torch.Tensor, *details: torch.Tensor):
        ctx.transform = transform
        return transform._synthesis(Coefficients(approx, details))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        coeffs = ctx.transform.analysis(grad)
        return (None, coeffs.approx, *coeffs.details)
