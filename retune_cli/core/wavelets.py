"""Orthonormal periodized 2-D discrete wavelet transform ``D`` and its inverse ``Dᵀ``.

With periodic boundaries and an orthogonal filter bank the multilevel transform is an orthogonal
matrix, so ``DᵀD = DDᵀ = I``: the synthesis below is the exact adjoint of the analysis, written
out (polyphase convolutions of the periodized bands, the phases interleaved) rather than obtained by
autograd. Filters come from PyWavelets; coefficients agree with
``pywt.wavedec2(x, wavelet, mode="periodization", level=J)``.

Layout, for an input of shape ``(N, C, H, W)`` with ``H`` and ``W`` multiples of ``2**J``:

* ``approx``: ``(N, C, H / 2**J, W / 2**J)``;
* ``details[i]``: ``(N, C, 3, h, w)``, bands ordered ``(H, V, D)`` as PyWavelets' ``(cH, cV, cD)``,
  coarsest level first (``details[0]`` is scale ``J``, ``details[-1]`` scale 1).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import launch
from .pytree import register_pytree

SMALL_BANDS = 8192  # samples per band (batch × h × w) below which one dense convolution beats two separable ones


@dataclass(frozen=True)
class Coefficients:
    """Wavelet coefficients of a batch: the approximation band and the details of each level."""

    approx: torch.Tensor
    details: tuple[torch.Tensor, ...]


register_pytree(Coefficients, lambda c: [c.approx, *c.details], lambda ts: Coefficients(ts[0], tuple(ts[1:])))


_GATHER: dict[tuple, torch.Tensor] = {}  # (h, w, left, right, device) → flat indices of the periodic extension


def _periodic_gather(h: int, w: int, left: int, right: int, device: torch.device) -> torch.Tensor:
    """Flat indices ``((i mod h) w + (j mod w))`` for ``i ∈ [−left, h + right)``, ``j ∈ [−left, w + right)``, cached."""
    key = (h, w, left, right, device)
    if key not in _GATHER:
        rows = torch.arange(-left, h + right, device=device) % h
        columns = torch.arange(-left, w + right, device=device) % w
        _GATHER[key] = (rows[:, None] * w + columns[None, :]).flatten()
    return _GATHER[key]


def _periodize(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Periodic extension of the last two dimensions by ``left``/``right`` samples (any wrap count): a circular
    pad on the CPU (faster there), else one gather of the flattened image (one operation, not ~15)."""
    h, w = x.shape[-2:]
    if not launch.launch_bound(x) and max(left, right) <= min(h, w):
        return F.pad(x, (left, right, left, right), mode="circular")
    index = _periodic_gather(h, w, left, right, x.device)
    out = x.reshape(*x.shape[:-2], h * w).index_select(-1, index)
    return out.view(*x.shape[:-2], h + left + right, w + left + right)


def _wrap(buffer: torch.Tensor, left: int, right: int) -> None:
    """Fill the ``left``/``right`` borders of the last two dimensions of ``buffer`` in place with the
    periodic extension of its interior (any wrap count)."""
    h, w = buffer.shape[-2] - left - right, buffer.shape[-1] - left - right
    if max(left, right) > min(h, w):
        buffer.copy_(_periodize(buffer[..., left : left + h, left : left + w].clone(), left, right))
        return
    buffer[..., :left, left : left + w] = buffer[..., h : h + left, left : left + w]
    buffer[..., left + h :, left : left + w] = buffer[..., left : left + right, left : left + w]
    buffer[..., :left] = buffer[..., w : w + left]
    buffer[..., left + w :] = buffer[..., left : left + right]


def _bands_buffer(like: torch.Tensor, m: int, h: int, w: int) -> torch.Tensor:
    """An empty ``(m, 4, h, w)`` buffer of bands, channels last: the synthesis convolutions run faster on it."""
    return torch.empty(m, 4, h, w, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


def _phase_taps(f: list[float], phase: int) -> tuple[int, list[float]]:
    """``(t₀, g)``: the synthesis of one phase, ``x[2i + phase] = Σ_t f[2t + L/2 − phase] c[i + t]``, has
    its ``L/2`` non-zero taps ``g[t − t₀] = f[2t + L/2 − phase]`` at ``t = t₀, …, t₀ + L/2 − 1``.

    It is the adjoint of ``c[n] = Σ_k f[k] x[2n + L/2 − k]`` (``L = len(f)``, ``t₀ = −⌊(L/2 − phase)/2⌋``).
    """
    half = len(f) // 2
    start = -((half - phase) // 2)
    return start, [f[2 * t + half - phase] for t in range(start, start + half)]


@dataclass
class WaveletTransform:
    """Multilevel orthonormal periodized 2-D DWT ``D`` (``analysis``) and ``Dᵀ`` (``synthesis``).

    One analysis level is one strided convolution with the four separable 2-D filters
    ``(approx, H, V, D) = (h⊗h, g⊗h, h⊗g, g⊗g)`` (rows ⊗ columns) on the periodized image:
    ``c[n] = Σ_k f[k] x[(2n + L/2 − k) mod N]`` along each axis, PyWavelets' periodization convention.
    Synthesis is its transpose in polyphase form, separably: a convolution along the rows mixing the
    bands ``(a, b)`` into row phases ``(p, b)`` with ``L/2`` taps ``x[2i + p] = Σ_t f_a[2t + L/2 − p] c[i + t]``,
    then one along the columns into the four phases ``(p, q)`` of the image, interleaved (on small bands,
    both in one dense convolution: see :meth:`_synthesis`).
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
        self._starts = [_phase_taps(self._lo, p)[0] for p in (0, 1)]  # t₀ of each phase (the same for hi)

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (``2**levels``)."""
        return 2**self.levels

    def _filters(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """The analysis bank and the synthesis banks (rows, columns, dense) on ``device`` in ``dtype``, cached."""
        key = (device, dtype)
        if key not in self._bank:
            banks = (self._analysis_bank(), *self._synthesis_banks())
            self._bank[key] = tuple(t.to(device, dtype) for t in banks)
        return self._bank[key]

    def _analysis_bank(self) -> torch.Tensor:
        """``(4, 1, L, L)``: band ``a + 2b`` is ``f_a ⊗ f_b`` (row filter ``a``, column filter ``b``,
        0 = low-pass), reversed since ``conv2d`` correlates."""
        lo, hi = (torch.tensor(f[::-1], dtype=torch.float64) for f in (self._lo, self._hi))
        return torch.stack([torch.outer(r, c) for c in (lo, hi) for r in (lo, hi)]).unsqueeze(1)

    def _synthesis_banks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """With ``g_a^p`` the taps of filter ``a`` at phase ``p`` (:func:`_phase_taps`), shifted by
        ``s_p = t₀(p) − min t₀``: along the rows ``(4, 4, L/2, 1)``, band ``a + 2b`` → row phase ``p`` of
        column band ``b`` (channel ``2b + p``) by ``g_a^p``; along the columns ``(4, 4, 1, L/2)``, channel
        ``2b + p`` → image phase ``(p, q)`` (channel ``2p + q``) by ``g_b^q``; both at once ``(4, 4, L/2 + span,
        L/2 + span)``, band ``a + 2b`` → phase ``2p + q`` by ``g_a^p ⊗ g_b^q`` placed at ``(s_p, s_q)``."""
        taps = [[torch.tensor(_phase_taps(f, p)[1], dtype=torch.float64) for p in (0, 1)] for f in (self._lo, self._hi)]
        n, first = self.filter_length // 2, min(self._starts)
        shift = [t - first for t in self._starts]
        rows = torch.zeros(4, 4, n, 1, dtype=torch.float64)
        columns = torch.zeros(4, 4, 1, n, dtype=torch.float64)
        dense = torch.zeros(4, 4, n + max(shift), n + max(shift), dtype=torch.float64)
        for a, b, p in itertools.product((0, 1), repeat=3):
            rows[2 * b + p, a + 2 * b, :, 0] = taps[a][p]
            columns[2 * b + p, 2 * a + b, 0, :] = taps[a][p]  # (filter a, phase p) along the columns, row phase b
            for q in (0, 1):
                dense[2 * p + q, a + 2 * b, shift[p] : shift[p] + n, shift[q] : shift[q] + n] = torch.outer(
                    taps[a][p], taps[b][q])
        return rows, columns, dense

    def _analysis_level(self, x: torch.Tensor) -> torch.Tensor:
        """``x (M, 1, H, W)`` → ``(M, 4, H/2, W/2)``: approximation then details (H, V, D)."""
        xp = _periodize(x, self._left, self._right)
        return F.conv2d(xp, self._filters(x.device, x.dtype)[0], stride=2)

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
        approx = x.reshape(n * c, 1, h, w)
        details = []
        for _ in range(self.levels):
            bands = self._analysis_level(approx)
            approx = bands[:, :1]
            details.append(bands[:, 1:].reshape(n, c, 3, *bands.shape[-2:]))
        return Coefficients(approx.reshape(n, c, *approx.shape[-2:]), tuple(reversed(details)))

    def _synthesis(self, coeffs: Coefficients) -> torch.Tensor:
        """Level by level, coarsest first: ``x[2i + p, 2j + q] = Σ_{a,b} (g_a^p ⊗ g_b^q ⋆ c_{a,b})[i + s_p, j + s_q]``
        on the periodized bands ``c`` (phase ``p`` reads ``s_p = t₀(p) − min t₀`` past the window's start).

        Below :data:`SMALL_BANDS` samples per band, where a call costs more than its arithmetic: bands
        concatenated and periodized, one dense convolution, ``pixel_shuffle``. Above: the bands are written
        into a periodized channels-last buffer, go through the row and the column convolutions, and the four
        phases are copied into the interior of the next level's buffer (or the image)."""
        first, span = min(self._starts), max(self._starts) - min(self._starts)
        left, right = -first, self.filter_length // 2 - 1 + first + span
        rows, columns, dense = self._filters(coeffs.approx.device, coeffs.approx.dtype)[1:]
        n, c, h, w = coeffs.approx.shape
        x, buffer = coeffs.approx.reshape(n * c, 1, h, w), None
        for level, d in enumerate(coeffs.details, 1):
            d = d.reshape(n * c, 3, h, w)
            if n * c * h * w < SMALL_BANDS or launch.launch_bound(x):
                bands = _periodize(torch.cat((x, d), dim=1), left, right)
                x = F.pixel_shuffle(F.conv2d(bands, dense), 2)
            else:
                if buffer is None:  # the first large level (the next ones are larger)
                    buffer = _bands_buffer(x, n * c, h + left + right, w + left + right)
                    buffer[:, :1, left : left + h, left : left + w] = x
                buffer[:, 1:, left : left + h, left : left + w] = d
                _wrap(buffer, left, right)
                phases = F.conv2d(F.conv2d(buffer, rows), columns)
                if level == len(coeffs.details):
                    x = phases.new_empty(n * c, 1, 2 * h, 2 * w)
                else:
                    buffer = _bands_buffer(x, n * c, 2 * h + left + right, 2 * w + left + right)
                    x = buffer[:, :1, left : left + 2 * h, left : left + 2 * w]
                interleaved = x.unflatten(-1, (w, 2)).unflatten(-3, (h, 2))
                for p, q in itertools.product((0, 1), repeat=2):
                    i, j, k = self._starts[p] - first, self._starts[q] - first, 2 * p + q
                    interleaved[..., p, :, q] = phases[:, k : k + 1, i : i + h, j : j + w]
            h, w = 2 * h, 2 * w
        return x.reshape(n, c, h, w)


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
