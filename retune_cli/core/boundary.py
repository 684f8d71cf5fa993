"""Blur with a non-circular boundary: ``A = C K P``, exact adjoint ``Aᵀ = Pᵀ Kᵀ Cᵀ``.

For a kernel ``k`` of size ``h×w`` centred as the circular model centres it (deepinv ``BlurFFT``: index
``(h//2, w//2)``), ``(A x)[i] = Σ_m k[m] x̃[i + c − m]`` with ``x̃`` the image extended by the boundary rule:

* ``P`` gathers the padded image, ``(H + h − 1)×(W + w − 1)``, ``h − 1 − h//2`` rows above and ``h//2``
  below (columns alike), each padded pixel a copy of one image pixel: ``reflect`` mirrors about the edge
  pixel (``dcb|abcd|cba``), ``replicate`` repeats it (``aaa|abcd|ddd``); ``P`` is ``index_select`` along H
  then W on precomputed index vectors, ``Pᵀ`` the scatter-add ``index_add`` of the copies onto their pixel;
* ``K`` is the circular convolution on the padded grid (FFTs), ``Kᵀ`` the correlation (``K̂*``);
* ``C`` crops the ``H×W`` window that no wrap-around reaches; ``Cᵀ`` pads it with zeros.

All are exact linear maps built from differentiable ops: autograd (and double-backward) goes through them.
The step size needs ``‖A‖`` from above: :meth:`PaddedBlur.norm_bound` (Collatz–Wielandt, not power iteration,
which approaches it from below). No closed-form ``prox`` of ``½‖A x − y‖²`` exists (``AᵀA`` is not diagonal
in Fourier).

``valid`` (:class:`ValidBlur`, boundary-free: Reeves 2005, Almeida & Figueiredo 2013) assumes nothing beyond
the edges: ``y = C K x`` keeps the ``(H − h + 1)×(W − w + 1)`` pixels whose window lies inside the ``H×W``
image ``x``, ``y[i] = (K x)[i + (h − 1 − h//2, w − 1 − w//2)]``: the central crop of the padded modes' ``y``
(same kernel, same centring); the unknown is ``h − 1`` rows and ``w − 1`` columns larger than the observation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BOUNDARIES = ("circular", "reflect", "replicate", "valid")


def pad_indices(n: int, before: int, after: int, mode: str) -> torch.Tensor:
    """The pixel each of the ``before + n + after`` padded positions copies along an axis of length ``n``
    (reflect folds with period ``2(n − 1)``, so any padding is defined)."""
    j = torch.arange(-before, n + after)
    if mode == "replicate" or n == 1:
        return j.clamp(0, n - 1)
    if mode != "reflect":
        raise ValueError(f"the boundary must be one of {', '.join(BOUNDARIES)}, not {mode!r}")
    j = j.remainder(2 * (n - 1))
    return torch.where(j < n, j, 2 * (n - 1) - j)


def kernel_fft(kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``rfft2`` of ``kernel`` zero-padded to ``size`` and rolled so that its centre ``(h//2, w//2)`` is at 0."""
    h, w = kernel.shape[-2:]
    padded = F.pad(kernel, (0, size[1] - w, 0, size[0] - h))
    return torch.fft.rfft2(torch.roll(padded, (-(h // 2), -(w // 2)), dims=(-2, -1)))


class PaddedBlur:
    """``A = C K P`` for one kernel ``(N or 1, C or 1, h, w)``, images ``H×W``, a boundary, a device and dtype."""

    def __init__(self, kernel: torch.Tensor, shape: tuple[int, int], mode: str, like: torch.Tensor):
        (h, w), (height, width) = kernel.shape[-2:], shape
        self.shape, self.mode = (height, width), mode
        self.pads = margins((h, w))
        self.rows = pad_indices(height, self.pads[2], self.pads[3], mode).to(like.device)
        self.cols = pad_indices(width, self.pads[0], self.pads[1], mode).to(like.device)
        self.size = (height + h - 1, width + w - 1)
        self.kernel = kernel.detach().to(like.device, like.dtype)
        self.fft = kernel_fft(self.kernel, self.size)
        self._bound: float | None = None

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``P x``: the padded image, gathered."""
        return x.index_select(-2, self.rows).index_select(-1, self.cols)

    def pad_adjoint(self, z: torch.Tensor) -> torch.Tensor:
        """``Pᵀ z``: every padded pixel added back onto the pixel it copies (columns, then rows)."""
        height, width = self.shape
        cols = z.new_zeros((*z.shape[:-1], width)).index_add(-1, self.cols, z)
        return cols.new_zeros((*z.shape[:-2], height, width)).index_add(-2, self.rows, cols)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """``C K P x``."""
        left, _, top, _ = self.pads
        z = torch.fft.irfft2(torch.fft.rfft2(self.pad(x)) * self.fft, s=self.size)
        return z[..., top:top + self.shape[0], left:left + self.shape[1]]

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Pᵀ Kᵀ Cᵀ y``."""
        z = torch.fft.irfft2(torch.fft.rfft2(F.pad(y, self.pads)) * self.fft.conj(), s=self.size)
        return self.pad_adjoint(z)

    def A_adjoint_A(self, x: torch.Tensor) -> torch.Tensor:
        """``Aᵀ A x`` (two FFT pairs: the crop between them is not diagonal in Fourier)."""
        return self.A_adjoint(self.A(x))

    def pad_norm(self) -> float:
        """``‖P‖``: ``PᵀP`` is diagonal, the number of copies of each pixel, separable over H and W."""
        rows = torch.bincount(self.rows.cpu()).max()
        cols = torch.bincount(self.cols.cpu()).max()
        return float(rows * cols) ** 0.5

    def norm_bound(self, channels: int, iterations: int = 30, rtol: float = 0.02) -> float:
        """An upper bound on ``‖A‖₂`` (cached): the smaller of ``‖P‖·max|K̂|`` and the Collatz–Wielandt bound
        ``ρ(M) ≤ maxᵢ (M v)ᵢ/vᵢ`` (any ``v > 0``) on ``M = |A|ᵀ|A| ≥ 0``, whose ``ρ = ‖|A|‖² ≥ ‖A‖²`` (``|A|``:
        the blur by ``|k|``; equal for a non-negative kernel), ``v`` improved by power iteration until the
        bound is within ``rtol`` of the Rayleigh quotient ``vᵀMv/vᵀv ≤ ρ`` (a lower bound), in float64."""
        if self._bound is None:
            absolute = PaddedBlur(self.kernel.abs(), self.shape, self.mode, self.fft.real.double())
            v = self.fft.real.new_ones((self.kernel.shape[0], channels, *self.shape), dtype=torch.float64)
            best = float("inf")
            for _ in range(iterations):
                mv = absolute.A_adjoint_A(v)
                best = min(best, float((mv / v).max()) * (1 + 1e-12))  # the FFTs' rounding: ~1e-16 relative
                if best <= float((v * mv).sum() / (v * v).sum()) * (1 + rtol) ** 2:
                    break
                v = (mv / mv.max()).clamp_min(1e-9)  # strictly positive, as the bound needs
            self._bound = min(self.pad_norm() * float(self.fft.abs().max()), best**0.5)
        return self._bound


def margins(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` (``F.pad``'s order): how far an ``h×w`` kernel centred at ``(h//2, w//2)``
    reaches past an output pixel, ``h − 1 − h//2`` rows above and ``h//2`` below (columns alike)."""
    h, w = size
    return (w - 1 - w // 2, w // 2, h - 1 - h // 2, h // 2)


def extend(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A valid observation ``y`` reflected by :func:`margins` of an ``h×w`` kernel onto the image's grid: an
    estimate of the image (its central window is ``y``), for a start and a baseline."""
    left, right, top, bottom = margins(size)
    rows = pad_indices(y.shape[-2], top, bottom, "reflect").to(y.device)
    cols = pad_indices(y.shape[-1], left, right, "reflect").to(y.device)
    return y.index_select(-2, rows).index_select(-1, cols)


def window(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The ``(H − h + 1)×(W − w + 1)`` window of an image ``x`` whose pixels a valid observation shows."""
    left, right, top, bottom = margins(size)
    return x[..., top:x.shape[-2] - bottom, left:x.shape[-1] - right]


class ValidBlur:
    """``A = C K`` for one kernel ``(N or 1, C or 1, h, w)`` and images ``H×W``: ``K`` the circular
    convolution on the image's grid (FFTs; as :class:`PaddedBlur` centres it), ``C`` the crop to the
    pixels no wrap-around reaches; ``Aᵀ = Kᵀ Cᵀ``, zero padding then correlation (the 'full' transposed
    convolution). ``‖A‖ ≤ ‖K‖ = max|K̂|`` (``C`` has norm 1), ``= ‖k‖₁`` for a non-negative kernel."""

    def __init__(self, kernel: torch.Tensor, shape: tuple[int, int], like: torch.Tensor):
        self.shape, self.pads = shape, margins(tuple(kernel.shape[-2:]))
        self.kernel = kernel.detach().to(like.device, like.dtype)
        self.fft = kernel_fft(self.kernel, shape)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """``C K x``."""
        return window(torch.fft.irfft2(torch.fft.rfft2(x) * self.fft, s=self.shape), self.kernel.shape[-2:])

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Kᵀ Cᵀ y``."""
        return torch.fft.irfft2(torch.fft.rfft2(F.pad(y, self.pads)) * self.fft.conj(), s=self.shape)

    def A_adjoint_A(self, x: torch.Tensor) -> torch.Tensor:
        """``Aᵀ A x`` (two FFT pairs: the crop between them is not diagonal in Fourier)."""
        return self.A_adjoint(self.A(x))

    def norm_bound(self, channels: int) -> float:
        """``max |K̂|`` over the kernels and frequencies of the image's grid: ``‖A‖ ≤ ‖C‖‖K‖ = ‖K‖``."""
        return float(self.fft.abs().max())
