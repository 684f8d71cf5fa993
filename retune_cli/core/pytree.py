"""Iterates as pytrees: a tensor, or an instance of a class registered with its flatten/unflatten.

Fixed-point solvers, adjoint solvers and gradient modes only see lists of tensors (``leaves``), so a
scheme may iterate on any structure (wavelet coefficients, a pair of images, …) once it is registered.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

Flatten = Callable[[Any], list[torch.Tensor]]
Unflatten = Callable[[list[torch.Tensor]], Any]
_REGISTRY: dict[type, tuple[Flatten, Unflatten]] = {}


def register_pytree(cls: type, flatten: Flatten, unflatten: Unflatten) -> None:
    """Let iterates of type ``cls`` be flattened to tensors and rebuilt from them."""
    _REGISTRY[cls] = (flatten, unflatten)


register_pytree(list, list, list)  # a plain list of tensors (e.g. an adjoint vector) is its own leaves


def leaves(tree) -> list[torch.Tensor]:
    """The tensors of an iterate, in a fixed order."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    try:
        return _REGISTRY[type(tree)][0](tree)
    except KeyError:
        raise TypeError(f"{type(tree).__name__} is not a registered iterate type (register_pytree)") from None


def rebuild(like, tensors: list[torch.Tensor]):
    """An iterate of the same type as ``like`` from ``tensors`` (inverse of :func:`leaves`)."""
    return tensors[0] if isinstance(like, torch.Tensor) else _REGISTRY[type(like)][1](list(tensors))


def tree_map(fn: Callable[..., torch.Tensor], tree, *others):
    """``fn`` applied leaf by leaf to ``tree`` (and to the matching leaves of ``others``)."""
    return rebuild(tree, [fn(*ts) for ts in zip(leaves(tree), *(leaves(o) for o in others))])


def dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """``Σ ⟨a_i, b_i⟩`` over matching leaves."""
    return sum(torch.sum(x * y) for x, y in zip(a, b))


def norm(a: list[torch.Tensor]) -> float:
    """``‖a‖₂`` over all leaves."""
    return math.sqrt(float(dot(a, a).detach()))


def flatten(tree) -> tuple[torch.Tensor, Callable[[torch.Tensor], object]]:
    """All leaves as one flat vector, and the function that rebuilds an iterate from such a vector."""
    parts = leaves(tree)
    shapes, sizes = [t.shape for t in parts], [t.numel() for t in parts]

    def unflatten(vector: torch.Tensor):
        return rebuild(tree, [p.view(s) for p, s in zip(torch.split(vector, sizes), shapes)])

    return torch.cat([t.reshape(-1) for t in parts]), unflatten
