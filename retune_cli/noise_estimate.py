"""Noise level of one image per channel: a robust variance of the highest-frequency DCT coefficients of
its weakly textured patches (the selection of Liu, Tanaka & Okutomi 2013, iterated as in Chen, Zhu & Heng,
ICCV 2015, whose PCA eigenvalues it replaces).

Under additive white Gaussian noise of variance σ², every coefficient ``c_uv`` of the orthonormal 2-D DCT
of a p×p patch carries noise of variance σ², independently of the others. Clean photographs — their fine
texture and film grain too, whose spectrum falls with frequency — put least energy in the highest
frequencies, so a patch's energy in its K coefficients with ``u + v ≥ ⌈3(p − 1)/2⌉`` (K = 10 of 49 at 7×7),
``e = Σ c_uv²``, is ≈ σ² χ²_K on a flat patch, and over the weakly textured patches
``σ² = median(e) / median(χ²_K)``: the median ignores the minority in which some texture is left. (Chen's
mean of the small eigenvalues also averages mid frequencies, where the grain lies: +17 % at σ 0.03 on a
held-out photo, against +12 % here; its grain alone reads σ₀ 0.011 in these coefficients.)

Texture inflates e, so only patches of weak texture are used, iterated to a fixed point:
``ξ = Σ (∂_h y)² + (∂_v y)²`` within a patch, ``≈ σ² Γ(k, θ)`` on a flat one (k, θ: the moments of the grid
Laplacian L, ``ξ = nᵀ L n``). A patch is kept when its non-overlapping neighbours p pixels away (those
on known pixels) each have ``ξ ≤ σ̂² q₉₅`` — their noise is independent of the patch's own, so this choice
does not bias σ̂ low — and its own ``ξ ≤ σ̂² q₉₉.₉``; the start σ̂ is from the patches of flattest
neighbourhood. Clipping to [0, 1] shrinks the noise near 0 and 1: patches whose mean lies within 2σ̂ of
either are left out. 8-bit quantization adds ``1/(12·255²)`` (σ 0.0011), kept: it is noise of the file too.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

MAX_POSITIONS = 160_000  # patch positions per channel; a grid of stride s beyond (fast on a 2-megapixel photo)
MIN_PATCHES_PER_DIM = 10  # at least 10·p² patches (the median of fewer, textured ones would mean little)
NEIGHBOUR_Z, OWN_Z = 1.645, 3.090  # Gaussian quantiles: a flat patch's ξ passes with 95 % and 99.9 %
SATURATION = 2.0  # patches whose mean is within 2σ̂ of 0 or 1 are left out (clipped noise is smaller)
ITERATIONS = 8


def estimate_noise(y: torch.Tensor, known: torch.Tensor | None = None, patch: int = 7) -> tuple[float, ...]:
    """The standard deviation σ_c of additive white Gaussian noise of ``y (C, H, W)`` in [0, 1], per
    channel c, from its ``patch``×``patch`` patches lying wholly on the ``known`` pixels ``(1, H, W)``
    (0/1; all when None), taken on a fixed grid of stride ``s = ⌈√(patches / MAX_POSITIONS)⌉``:
    deterministic. ``ValueError`` when fewer than ``10·patch²`` such patches exist."""
    if y.dim() != 3:
        raise ValueError(f"expected an image (C, H, W), got shape {tuple(y.shape)}")
    if patch < 2:
        raise ValueError(f"the patch size must be at least 2, not {patch}")
    height, width = y.shape[-2:]
    if height < patch or width < patch:
        raise ValueError(f"the image ({width}×{height}) is smaller than one {patch}×{patch} patch")
    valid = _whole_patches(known, (height, width), patch)
    stride = max(1, math.ceil(math.sqrt(int(valid.sum()) / MAX_POSITIONS)))
    count, needed = int(valid[::stride, ::stride].sum()), MIN_PATCHES_PER_DIM * patch * patch
    if count < needed:
        where = " wholly on known pixels" if known is not None else ""
        raise ValueError(f"only {count} {patch}×{patch} patches{where} (on a grid of stride {stride}); "
                         f"estimating the noise level needs at least {needed}")
    y = y.detach().to(torch.float64)
    return tuple(math.sqrt(_channel_variance(channel, valid, patch, stride, needed)) for channel in y)


def _channel_variance(channel: torch.Tensor, valid: torch.Tensor, patch: int, stride: int, needed: int) -> float:
    """σ² of one channel ``(H, W)``: :func:`noise_variance` of the weakly textured, unsaturated patches, the
    selection redone with each new σ̂² (at most :data:`ITERATIONS` times); when fewer than ``needed``
    pass, the ``needed`` unsaturated ones of flattest neighbourhood (the start: the flattest valid ones)."""
    def grid(m: torch.Tensor) -> torch.Tensor:
        return m[::stride, ::stride].reshape(-1)

    own = _texture(channel, patch)
    neighbours = _neighbour_texture(own.masked_fill(~valid, -math.inf), patch, stride).reshape(-1)
    own, valid = grid(own), grid(valid)
    level = F.avg_pool2d(channel[None, None], patch, stride=stride).reshape(-1)
    energy = high_frequency_energy(channel, patch, stride).reshape(-1)
    q_neighbour, q_own = _flat_quantile(patch, NEIGHBOUR_Z), _flat_quantile(patch, OWN_Z)
    flattest = torch.argsort(neighbours.nan_to_num(posinf=1e300), stable=True)  # ∞ (no neighbour) last
    var = noise_variance(energy[_first(flattest, valid, needed)], patch)
    for _ in range(ITERATIONS):
        margin = SATURATION * math.sqrt(var)
        unsaturated = valid & (level >= margin) & (level <= 1 - margin)
        keep = unsaturated & (neighbours <= q_neighbour * var) & (own <= q_own * var)
        if int(keep.sum()) < needed:
            keep = _first(flattest, unsaturated if int(unsaturated.sum()) >= needed else valid, needed)
        previous, var = var, noise_variance(energy[keep], patch)
        if abs(var - previous) <= 1e-3 * previous:
            break
    return var


def _first(order: torch.Tensor, pool: torch.Tensor, count: int) -> torch.Tensor:
    """The mask of the first ``count`` positions of ``order`` that lie in the mask ``pool``."""
    chosen = torch.zeros_like(pool)
    chosen[order[pool[order]][:count]] = True
    return chosen


def _whole_patches(known: torch.Tensor | None, size: tuple[int, int], patch: int) -> torch.Tensor:
    """``(H − p + 1, W − p + 1)`` bool: the patches (by top-left corner) wholly on ``known`` pixels."""
    if known is None:
        return torch.ones(size[0] - patch + 1, size[1] - patch + 1, dtype=torch.bool)
    if known.dim() != 3 or known.shape[0] != 1 or tuple(known.shape[-2:]) != tuple(size):
        raise ValueError(f"the mask of known pixels must be (1, {size[0]}, {size[1]}), not {tuple(known.shape)}")
    missing = (known.detach() <= 0.5).to(torch.float32)
    return F.max_pool2d(missing[None], patch, stride=1)[0, 0] == 0


def _texture(channel: torch.Tensor, patch: int) -> torch.Tensor:
    """``ξ = Σ (∂_h y)² + Σ (∂_v y)²`` over the differences inside each p×p patch, ``(H − p + 1, W − p + 1)``."""
    dh = (channel[:, 1:] - channel[:, :-1]).square()
    dv = (channel[1:, :] - channel[:-1, :]).square()
    return _box_sum(dh, patch, patch - 1) + _box_sum(dv, patch - 1, patch)


def _box_sum(x: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Sums of ``x (H, W)`` over its a×b windows, ``(H − a + 1, W − b + 1)``, from the integral image."""
    s = F.pad(x, (1, 0, 1, 0)).cumsum(0).cumsum(1)
    return s[a:, b:] - s[:-a, b:] - s[a:, :-b] + s[:-a, :-b]


def _neighbour_texture(texture: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """On the grid of ``stride``: the largest ξ of the patches p pixels left, right, above and below that
    exist (``texture`` −∞ where a patch is unknown), ∞ where none does."""
    h, w = texture[::stride, ::stride].shape
    padded = F.pad(texture, (patch,) * 4, value=-math.inf)
    shifts = ((patch, 0), (patch, 2 * patch), (0, patch), (2 * patch, patch))
    largest = torch.stack([padded[i::stride, j::stride][:h, :w] for i, j in shifts]).amax(dim=0)
    return largest.masked_fill(largest == -math.inf, math.inf)


def _flat_quantile(patch: int, z: float) -> float:
    """The quantile of ``ξ/σ²`` on a flat patch at Gaussian quantile z: ``ξ/σ² = nᵀLn`` (L: the p×p grid's
    Laplacian) ≈ Γ(k, θ) with ``k = (tr L)²/(2‖L‖²)``, ``θ = 2‖L‖²/tr L``; Wilson–Hilferty:
    ``kθ (1 − 1/(9k) + z/(3√k))³``."""
    edges = 2 * patch * (patch - 1)
    degrees_squared = 4 * 2**2 + 4 * (patch - 2) * 3**2 + (patch - 2) ** 2 * 4**2
    trace, frobenius = 2 * edges, degrees_squared + 2 * edges
    k, theta = trace**2 / (2 * frobenius), 2 * frobenius / trace
    return k * theta * (1 - 1 / (9 * k) + z / (3 * math.sqrt(k))) ** 3


def high_frequency_energy(channel: torch.Tensor, patch: int, stride: int = 1) -> torch.Tensor:
    """``e = Σ c_uv²`` of the p×p patches of ``channel (H, W)`` on the grid of ``stride``, ``(⌈(H − p + 1)/s⌉,
    ⌈(W − p + 1)/s⌉)``, over the K coefficients ``u + v ≥ ⌈3(p − 1)/2⌉`` of their orthonormal 2-D DCT, ``c_uv
    = D_u · patch · D_vᵀ``: separably, a 1-D transform along rows (v) then columns (u)."""
    dct, high = _dct(patch).to(channel), math.ceil(3 * (patch - 1) / 2)
    used = torch.arange(high - (patch - 1), patch)  # the frequencies some pair (u, v) needs
    rows = F.conv2d(channel[None, None], dct[used, None, None, :], stride=(1, stride))[0]  # (v, H, W')
    both = F.conv2d(rows[:, None], dct[used, None, :, None], stride=(stride, 1))  # (v, u, H', W')
    pairs = (used[:, None] + used[None]) >= high
    return both[pairs].square().sum(dim=0)


def noise_variance(energy: torch.Tensor, patch: int) -> float:
    """σ² from the energies ``e`` of flat p×p patches (≈ σ² χ²_K each): ``median(e) / median(χ²_K)``."""
    high = math.ceil(3 * (patch - 1) / 2)
    k = sum(1 for u in range(patch) for v in range(patch) if u + v >= high)
    return float(energy.median()) / _chi2_median(k)


@functools.cache
def _dct(patch: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D (p, p)``, row u the basis vector of frequency u."""
    n = torch.arange(patch, dtype=torch.float64)
    dct = torch.cos(math.pi * (2 * n[None] + 1) * n[:, None] / (2 * patch)) * math.sqrt(2 / patch)
    dct[0] /= math.sqrt(2)
    return dct


@functools.cache
def _chi2_median(k: int) -> float:
    """The median of χ²_k, by bisection on its distribution function ``P(k/2, x/2)``."""
    low, high, half = 0.0, 2.0 * k + 2, torch.tensor(k / 2, dtype=torch.float64)
    for _ in range(60):
        middle = (low + high) / 2
        below = float(torch.special.gammainc(half, torch.tensor(middle / 2, dtype=torch.float64)))
        low, high = (middle, high) if below < 0.5 else (low, middle)
    return (low + high) / 2
