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


@dataclass(frozen=True)
class Coefficients:
    """Wavelet coefficients of a batch: the approximation band and the details of each level."""

    approx: torch.Tensor
    details: tuple[torch.Tensor, ...]


def _periodic_index(n: int, left: int, right: int, device: torch.device) -> torch.Tensor:
    """Indices ``(i mod n)`` for ``i`` in ``[-left, n + right)``: periodic extension, any wrap count."""
    return torch.arange(-left, n + right, device=device) % n


@dataclass
class WaveletTransform:
    """Multilevel orthonormal periodized 2-D DWT ``D`` (``analysis``) and ``Dᵀ`` (``synthesis``)."""

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

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (``2**levels``)."""
        return 2**self.levels

    def _filters(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Reversed analysis filters ``(2, 1, L)`` (low, high) for ``conv1d``-style correlation."""
        key = (device, dtype)
        if key not in self._bank:
            bank = torch.tensor([self._lo[::-1], self._hi[::-1]], dtype=dtype, device=device)
            self._bank[key] = bank.unsqueeze(1)
        return self._bank[key]

    def _pads(self) -> tuple[int, int]:
        half = self.filter_length // 2
        return half - 1, half

    def _analysis_1d(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """One level along ``dim`` (-1 or -2) of ``x (M, 1, H, W)`` → ``(M, 2, H', W')``.

        ``c[n] = Σ_k h[k] x[(2n + L/2 − k) mod N]``, the PyWavelets periodization convention.
        """
        left, right = self._pads()
        n = x.shape[dim]
        xp = x.index_select(dim, _periodic_index(n, left, right, x.device))
        bank = self._filters(x.device, x.dtype)
        if dim == -1:
            return F.conv2d(xp, bank.unsqueeze(2), stride=(1, 2))
        return F.conv2d(xp, bank.unsqueeze(3), stride=(2, 1))

    def _synthesis_1d(self, c: torch.Tensor, dim: int, n: int) -> torch.Tensor:
        """Adjoint of :meth:`_analysis_1d`: ``(M, 2, H', W')`` → ``(M, 1, H, W)`` with side ``n``."""
        left, right = self._pads()
        bank = self._filters(c.device, c.dtype)
        if dim == -1:
            xp = F.conv_transpose2d(c, bank.unsqueeze(2), stride=(1, 2))
        else:
            xp = F.conv_transpose2d(c, bank.unsqueeze(3), stride=(2, 1))
        extended = n + left + right
        if xp.shape[dim] < extended:
            pad = (0, extended - xp.shape[dim]) if dim == -1 else (0, 0, 0, extended - xp.shape[dim])
            xp = F.pad(xp, pad)
        shape = list(xp.shape)
        shape[dim] = n
        out = torch.zeros(shape, dtype=c.dtype, device=c.device)
        return out.index_add_(dim % 4, _periodic_index(n, left, right, c.device), xp)

    def _analysis_level(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (M, H, W)`` → approximation ``(M, H/2, W/2)`` and details ``(M, 3, H/2, W/2)``."""
        m, h, w = x.shape
        rows = self._analysis_1d(x.reshape(m, 1, h, w), dim=-1)  # (M, 2[W lo/hi], H, W/2)
        both = self._analysis_1d(rows.reshape(2 * m, 1, h, w // 2), dim=-2)
        both = both.reshape(m, 2, 2, h // 2, w // 2)  # [W band, H band]
        approx = both[:, 0, 0]
        details = torch.stack((both[:, 0, 1], both[:, 1, 0], both[:, 1, 1]), dim=1)
        return approx, details

    def _synthesis_level(self, approx: torch.Tensor, details: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_analysis_level`."""
        m, h2, w2 = approx.shape
        low_w = torch.stack((approx, details[:, 0]), dim=1)  # H band lo/hi, W lo
        high_w = torch.stack((details[:, 1], details[:, 2]), dim=1)  # H band lo/hi, W hi
        both = torch.stack((low_w, high_w), dim=1).reshape(2 * m, 2, h2, w2)
        rows = self._synthesis_1d(both, dim=-2, n=2 * h2).reshape(m, 2, 2 * h2, w2)
        return self._synthesis_1d(rows, dim=-1, n=2 * w2).reshape(m, 2 * h2, 2 * w2)

    def analysis(self, x: torch.Tensor) -> Coefficients:
        """``D x`` for ``x`` of shape ``(N, C, H, W)``; ``H, W`` multiples of ``2**levels``."""
        n, c, h, w = x.shape
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"image sides {h}×{w} are not multiples of 2**levels = {self.multiple}")
        approx = x.reshape(n * c, h, w)
        details = []
        for _ in range(self.levels):
            approx, d = self._analysis_level(approx)
            details.append(d.reshape(n, c, 3, *d.shape[-2:]))
        return Coefficients(approx.reshape(n, c, *approx.shape[-2:]), tuple(reversed(details)))

    def synthesis(self, coeffs: Coefficients) -> torch.Tensor:
        """``Dᵀ w``: the exact adjoint (and inverse) of :meth:`analysis`."""
        n, c = coeffs.approx.shape[:2]
        x = coeffs.approx.reshape(n * c, *coeffs.approx.shape[-2:])
        for d in coeffs.details:
            x = self._synthesis_level(x, d.reshape(n * c, 3, *d.shape[-2:]))
        return x.reshape(n, c, *x.shape[-2:])
