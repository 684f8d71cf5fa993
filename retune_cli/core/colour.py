"""The colour space an analysis prior penalizes in (``model.colour``): ``rgb`` or ``opponent``.

``opponent`` analyses ``O x`` instead of ``x``, O the orthonormal opponent-colour transform

    ``O = [[1, 1, 1]/√3, [1, 0, −1]/√2, [1, −2, 1]/√6]``   (luminance, red–blue, green–magenta),

applied to the channels of every pixel. O is orthogonal (``OᵀO = I``): the analysis operator ``L O`` keeps
``‖L O‖ = ‖L‖`` and its adjoint is ``Oᵀ Lᵀ``; white noise of level s_c per RGB channel has the level
``√(Σ_c O_{kc}² s_c²)`` in opponent channel k (the same s when the channels share it). The three channels
of a photograph are strongly correlated: their sum carries the edges, the two differences are smooth, so
a weight per opponent channel can smooth colour far more than luminance, which a weight per RGB channel
cannot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

COLOURS = ("rgb", "opponent")
OPPONENT = ((1 / math.sqrt(3),) * 3,
            (1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)),
            (1 / math.sqrt(6), -2 / math.sqrt(6), 1 / math.sqrt(6)))


def check_colour(colour: str, channels: int) -> None:
    """``ValueError`` naming ``model.colour`` when it is unknown, or ``opponent`` for images without 3 channels."""
    if colour not in COLOURS:
        raise ValueError(f"model.colour must be one of {', '.join(COLOURS)}, not {colour!r}")
    if colour == "opponent" and channels != 3:
        raise ValueError(f"model.colour: opponent needs colour images (3 channels), not {channels}")


def _matrix(like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(OPPONENT, dtype=like.dtype, device=like.device)


def to_colour(x: torch.Tensor, colour: str) -> torch.Tensor:
    """``O x`` over the channel axis 1 of ``(N, C, …)`` (``x`` itself for ``rgb``)."""
    return x if colour == "rgb" else torch.einsum("kc,nc...->nk...", _matrix(x), x)


def from_colour(z: torch.Tensor, colour: str) -> torch.Tensor:
    """``Oᵀ z`` = ``O⁻¹ z``, the adjoint (and inverse) of :func:`to_colour`."""
    return z if colour == "rgb" else torch.einsum("kc,nk...->nc...", _matrix(z), z)


def colour_noise(noise: Sequence[float], colour: str) -> tuple[float, ...]:
    """The noise level per analysed channel from the level per image channel: ``√(Σ_c O_{kc}² s_c²)``."""
    if colour == "rgb":
        return tuple(noise)
    levels = list(noise) * 3 if len(noise) == 1 else list(noise)
    return tuple(math.sqrt(sum(o * o * s * s for o, s in zip(row, levels))) for row in OPPONENT)


def colour_ratios(trained: Sequence[float], given: Sequence[float], colour: str) -> list[float]:
    """``s'_k / s_k`` per analysed channel k: how ``--sigma`` scales a weight of channel k (:func:`colour_noise`
    of both levels)."""
    return [g / t for g, t in zip(colour_noise(given, colour), colour_noise(trained, colour))]
