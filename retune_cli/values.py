"""The one policy for image values, applied where images enter: files (:mod:`.images`), arrays, tensors.

* Integers are scaled by their range, silently: ``uint8`` / 255, ``uint16`` / 65535 (``bool``: 0/1);
  other integer types (``int64``, …) say nothing of their range and are refused.
* Floats are in [0, 1]: a clean image may stray by :data:`TOLERANCE` (then clipped); one whose
  maximum passes :data:`LOOKS_0_255` was stored in 0–255 and is refused ("divide it by 255").
* An observation (an image to restore) keeps its noise, as stored, beyond [0, 1]; it is refused when
  clearly in 0–255: more than :data:`NOISY_SHARE` of its non-zero values above :data:`NOISY_0_255`.
* NaN and ±inf are refused. A mask is binary (0/1 or 0/255, 0/65535), gray, keeps at least one pixel;
  :func:`keep_warning` flags one keeping far fewer pixels than training did (probably inverted).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch

from .errors import InputError

TOLERANCE = 0.01  # a clean image in [-0.01, 1.01] is clipped to [0, 1]
LOOKS_0_255 = 1.5  # a clean image with a larger maximum was stored in 0–255
NOISY_0_255, NOISY_SHARE = 3.0, 0.01  # noise (σ ≤ 0.5) puts far under 1% of values above 3
FAR_FEWER = 4  # a mask keeping under keep/4 of the pixels is probably inverted
FULL = {torch.uint8: 255.0, torch.uint16: 65535.0}
FIX_0_255 = "divide it by 255 (or store it as uint8, e.g. an 8-bit PNG)"


def as_tensor(x: np.ndarray | torch.Tensor, what: str, error: type[Exception] = InputError) -> torch.Tensor:
    """``x`` as a tensor of its own dtype (native byte order); complex or non-numeric data refused."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise error(f"{what}: its dtype {x.dtype} is not real numbers")
        native = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))
        x = torch.from_numpy(native if native.flags.writeable else native.copy())
    if not isinstance(x, torch.Tensor) or x.is_complex():
        raise error(f"{what}: expected real numbers, got {getattr(x, 'dtype', type(x).__name__)}")
    return x


def _finite(x: torch.Tensor, what: str, error: type[Exception]) -> torch.Tensor:
    """``x`` as float32 (float64 beyond float32's range becomes ±inf), refused if not finite."""
    x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise error(f"{what} has non-finite values (NaN or ±inf)")
    return x


def unit_range(x: np.ndarray | torch.Tensor, what: str, observed: bool = False,
               error: type[Exception] = InputError) -> torch.Tensor:
    """``x`` as float32 by the module's policy: a clean image in [0, 1] (clipped within the tolerance),
    or with ``observed`` an observation kept as stored; ``what`` names it in messages."""
    x = as_tensor(x, what, error)
    if x.dtype == torch.bool:
        return x.to(torch.float32)
    if not x.is_floating_point():
        if x.dtype not in FULL:
            raise error(f"{what} holds {str(x.dtype).removeprefix('torch.')} integers, whose range says nothing "
                        "of black and white: store it as uint8 (0–255), uint16 (0–65535) or floats in [0, 1]")
        return x.to(torch.float32) / FULL[x.dtype]
    x = _finite(x, what, error)
    if x.numel() == 0:
        return x
    low, high = (float(v) for v in torch.aminmax(x))
    if observed:
        big, nonzero = int((x > NOISY_0_255).sum()), int((x != 0).sum())
        if big > NOISY_SHARE * nonzero:
            raise error(f"{what} holds values up to {high:.4g}: it is in 0–255, not [0, 1]; {FIX_0_255}")
        return x
    if high > LOOKS_0_255:
        raise error(f"{what} holds values up to {high:.4g}: it is in 0–255, not [0, 1]; {FIX_0_255}")
    if low < -TOLERANCE or high > 1 + TOLERANCE:
        raise error(f"{what} holds values from {low:.4g} to {high:.4g}, outside [0, 1]: clip it to [0, 1]")
    return x.clamp(0, 1)


def _per_pixel(flags: torch.Tensor) -> torch.Tensor:
    """``(…, C, H, W)`` flags → ``(…, H, W)``: set where any channel is (a 2-D mask as it is)."""
    return flags if flags.dim() == 2 else flags.any(dim=-3)


def binary_mask(mask: np.ndarray | torch.Tensor, what: str, error: type[Exception] = InputError) -> torch.Tensor:
    """``mask`` ``(…, C, H, W)`` as float32 0/1 (white = kept): refused unless each value is 0 or the
    one white level (1, 255 or 65535), its channels agree, and every image keeps a pixel."""
    m = as_tensor(mask, what, error)
    m = _finite(m, what, error) if m.is_floating_point() else m.to(torch.float32)
    if m.dim() < 2 or m.numel() == 0:
        raise error(f"{what} is {tuple(m.shape)}, not a mask (H, W)")
    high = float(m.max())
    white = high if high in (255.0, 65535.0) else 1.0
    other = int(_per_pixel((m != 0) & (m != white)).sum())
    if other:
        raise error(f"{what}: {other} of its {_per_pixel(m == m).numel()} pixels are neither black nor white (0 "
                    "and 1, or 0 and 255); a mask is binary, white = kept: threshold it, or save it as a "
                    "black-and-white PNG")
    if m.dim() > 2 and bool((m != m[..., :1, :, :]).any()):
        differ = int(_per_pixel(m != m[..., :1, :, :]).sum())
        raise error(f"{what}: its channels differ at {differ} pixels; a mask is black and white (white = kept)")
    kept = _per_pixel(m != 0).flatten(-2).any(dim=-1).reshape(-1)  # per image
    if not bool(kept.all()):
        which = f" (image {int((~kept).nonzero()[0])})" if len(kept) > 1 else ""
        raise error(f"{what} keeps no pixel{which}: it is all black (white = kept)")
    return m / white


def keep_warning(mask: torch.Tensor, keep: float | None, what: str, source: object) -> str | None:
    """A warning when the 0/1 ``mask`` ``(…, H, W)`` is probably inverted (white drawn on the holes, as
    most tools draw them): it keeps far fewer pixels than the fraction ``keep`` that ``source`` (the
    checkpoint) was trained with, or it keeps under half of them and the kept pixels clump (strokes or
    blobs on a mostly missing image: the right neighbour of a kept pixel is kept more often than not,
    where a random mask keeps it with probability ``keep``). None otherwise (or without a ``keep``)."""
    if keep is None:
        return None
    kept = float(mask.mean())
    right = mask[..., :, 1:] * mask[..., :, :-1]
    clumped = float(right.sum()) > 0.5 * float(mask[..., :, :-1].sum()) > 0
    if kept >= keep / FAR_FEWER and not (kept < 0.5 and clumped and keep < 0.5):
        return None
    return (f"{what} keeps {kept:.1%} of the pixels ({source} was trained keeping {keep:.0%}): is it inverted? "
            "A mask is white where the pixels are known; --invert-mask reads white as the holes")


def check_budget(T: object, tol: object, error: type[Exception] = InputError,
                 names: tuple[str, str] = ("T", "tol")) -> None:
    """``T`` (restarts) an integer ≥ 1 and ``tol`` a finite number ≥ 0, each None or refused by name."""
    if T is not None and (isinstance(T, bool) or not isinstance(T, Integral) or T < 1):
        raise error(f"{names[0]} must be an integer ≥ 1 (the restarts), not {T!r}")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, Real) or not math.isfinite(tol) or tol < 0):
        raise error(f"{names[1]} must be a finite number ≥ 0, not {tol!r}")
