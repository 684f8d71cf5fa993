"""Inpainting masks ``(N, 1, H, W)``, 1 = kept pixel, 0 = missing, drawn per image from a seed.

* ``random``: each pixel kept with probability ``keep``, independently;
* ``strokes``: thick random polylines (scratches, brush strokes);
* ``text``: lines of random characters in Pillow's default font (captions, watermarks);
* ``blocks``: random rectangles.

The last three erase a fraction ``t ~ U(MISSING)`` of each image's pixels: shapes are added until ``t``
is reached, a shape that would erase more than ``MISSING[1]`` is drawn again (:data:`TRIES` shapes at
most). Masks given as tensors (a user's) are cut instead: one drawn per image, a window at a random
offset (of the mask scaled up, for an image larger than it).
Every draw uses a CPU generator seeded explicitly, so a seed gives the same masks everywhere.
"""

from __future__ import annotations

import functools
import math
import string
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

MASK_KINDS = ("random", "strokes", "text", "blocks")
MISSING = (0.05, 0.25)  # the fraction of the pixels that strokes, text and blocks erase
TRIES = 200
CHARACTERS = string.ascii_letters + string.digits + "   "


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _integer(generator: torch.Generator, low: int, high: int) -> int:
    """An integer in ``[low, high]``."""
    return int(torch.randint(low, max(low, high) + 1, (), generator=generator))


def _stroke(draw, h: int, w: int, generator: torch.Generator) -> None:
    """A polyline of 1–4 segments of length ``s/10``–``s/3`` and width ``s/40``–``s/12`` (``s = min(H, W)``)."""
    s = min(h, w)
    width = _integer(generator, max(1, s // 40), max(2, s // 12))
    points = [(_uniform(generator, 0, w), _uniform(generator, 0, h))]
    for _ in range(_integer(generator, 1, 4)):
        angle, length = _uniform(generator, 0, 2 * math.pi), _uniform(generator, s / 10, s / 3)
        points.append((points[-1][0] + length * math.cos(angle), points[-1][1] + length * math.sin(angle)))
    draw.line(points, fill=255, width=width, joint="curve")


@functools.lru_cache(maxsize=32)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size)


def _text(draw, h: int, w: int, generator: torch.Generator) -> None:
    """A line of 3–16 random characters, ``s/16``–``s/6`` pixels high, anywhere (it may leave the image)."""
    s = min(h, w)
    size = _integer(generator, max(6, s // 16), max(8, s // 6))
    text = "".join(CHARACTERS[_integer(generator, 0, len(CHARACTERS) - 1)] for _ in range(_integer(generator, 3, 16)))
    draw.text((_uniform(generator, -size, w), _uniform(generator, -size / 2, h)), text, fill=255, font=_font(size))


def _block(draw, h: int, w: int, generator: torch.Generator) -> None:
    """A rectangle of sides ``H/16``–``H/5`` by ``W/16``–``W/5``, inside the image."""
    bh, bw = _integer(generator, max(1, h // 16), max(1, h // 5)), _integer(generator, max(1, w // 16), max(1, w // 5))
    y, x = _integer(generator, 0, h - bh), _integer(generator, 0, w - bw)
    draw.rectangle((x, y, x + bw - 1, y + bh - 1), fill=255)


SHAPES: dict[str, Callable] = {"strokes": _stroke, "text": _text, "blocks": _block}


def _holes(shape: Callable, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """``(1, H, W)``: 0 on ``shape``'s drawings, added until a fraction ``t ~ U(MISSING)`` is erased."""
    from PIL import Image, ImageDraw

    target, holes = _uniform(generator, *MISSING), np.zeros((h, w), dtype=bool)
    for _ in range(TRIES):
        layer = Image.new("L", (w, h))
        shape(ImageDraw.Draw(layer), h, w, generator)
        candidate = holes | (np.asarray(layer) > 0)
        if candidate.mean() <= MISSING[1]:
            holes = candidate
        if holes.mean() >= target:
            break
    return torch.from_numpy(~holes).to(torch.float32)[None]


def draw_masks(kind: str, shape: Sequence[int], seed: int, keep: float) -> torch.Tensor:
    """``(N, 1, H, W)`` float32 0/1 masks of ``kind`` (one of :data:`MASK_KINDS`) for images of ``shape``."""
    n, _, h, w = shape
    generator = torch.Generator().manual_seed(seed)
    if kind == "random":
        return (torch.rand((n, 1, h, w), generator=generator) < keep).to(torch.float32)
    return torch.stack([_holes(SHAPES[kind], h, w, generator) for _ in range(n)])


def _covering(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``mask`` ``(1, H', W')``, scaled up (nearest neighbour, its aspect kept) until it covers ``H × W``."""
    scale = max(h / mask.shape[-2], w / mask.shape[-1])
    if scale <= 1:
        return mask
    size = (max(h, math.ceil(mask.shape[-2] * scale)), max(w, math.ceil(mask.shape[-1] * scale)))
    return torch.nn.functional.interpolate(mask[None].to(torch.float32), size=size, mode="nearest")[0]


def cut_masks(masks: Sequence[torch.Tensor], shape: Sequence[int], seed: int) -> torch.Tensor:
    """``(N, 1, H, W)`` float32: for each image, one of the given masks ``(1, H', W')`` drawn at random (scaled
    up if smaller than ``H × W``: an evaluation image larger than the training crop), and an ``H × W`` window
    of it at a random offset."""
    n, _, h, w = shape
    generator = torch.Generator().manual_seed(seed)
    cuts = []
    for _ in range(n):
        mask = _covering(masks[_integer(generator, 0, len(masks) - 1)], h, w)
        y, x = _integer(generator, 0, mask.shape[-2] - h), _integer(generator, 0, mask.shape[-1] - w)
        cuts.append(mask[..., y:y + h, x:x + w].to(torch.float32))
    return torch.stack(cuts)


def pull_push_fill(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The holes of ``y`` (``mask`` 0) filled smoothly from the known pixels (``mask`` 1), which are kept
    (Gortler et al.'s pull–push). Pull: 2×2 means ``v_{l+1} = pool(v_l)``, ``w_{l+1} = pool(w_l)`` from
    ``v_0 = m ⊙ y``, ``w_0 = m``, down to one pixel; ``v_l / w_l`` is the mean of the known pixels of a block,
    ``n_l = 4^l w_l`` their count. Push: ``e_l = b_l ⊙ v_l / w_l + (1 − b_l) ⊙ up(e_{l+1})`` with ``b_l = min(n_l,
    1)`` (bilinear ``up``): a block with a known pixel keeps its mean, an empty one takes the coarser estimate.
    A fast (O(pixels)) stand-in for the harmonic fill: where inpainting schemes start."""
    weights = mask.to(y).expand(y.shape[0], 1, *y.shape[-2:])
    pyramid = [(y * weights, weights)]
    while max(pyramid[-1][1].shape[-2:]) > 1:
        v, w = pyramid[-1]
        pyramid.append((F.avg_pool2d(v, 2, ceil_mode=True), F.avg_pool2d(w, 2, ceil_mode=True)))
    estimate = None
    for level, (v, w) in reversed(list(enumerate(pyramid))):
        mean = v / w.clamp_min(torch.finfo(v.dtype).tiny)  # 0 where the block has no known pixel
        if estimate is None:
            estimate = mean
            continue
        kept = (w * 4**level).clamp(max=1)
        up = F.interpolate(estimate, size=v.shape[-2:], mode="bilinear", align_corners=False)
        estimate = kept * mean + (1 - kept) * up
    return estimate


def harmonic_fill(y: torch.Tensor, mask: torch.Tensor, sweeps: int = 50) -> torch.Tensor:
    """The holes of ``y`` filled towards the harmonic fill (``Δx = 0`` on the holes, the known pixels fixed,
    mirrored edges): :func:`pull_push_fill`, then ``sweeps`` Jacobi sweeps ``x ← mean of the 4 neighbours``
    on the holes. From the pull–push start 50 sweeps reach the converged fill to 0.05 dB on photographs
    with brush strokes (``bench/real_photos.py``'s masks)."""
    known = mask.to(y).expand(y.shape[0], 1, *y.shape[-2:]) > 0
    x = pull_push_fill(y, mask)
    for _ in range(sweeps):
        p = F.pad(x, (1, 1, 1, 1), mode="replicate")
        x = torch.where(known, x, (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) / 4)
    return x
