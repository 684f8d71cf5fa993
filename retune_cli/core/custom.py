"""Your own physics: any deepinv ``LinearPhysics`` that maps images to images, built by a Python
function named in the config (``physics.name: python``, ``physics.factory: "module:function"`` or
``"path/to/file.py:function"``).

The function is called with the image shape ``(C, H, W)`` and returns the operator for images of that
shape (rebuilt and cached per size, so an operator that depends on it, e.g. a colour-filter array,
works), mapping them to observations of the same shape (a size-changing operator is refused).
``A``, ``Aᵀ`` and ``prox_{τf}`` (``prox_l2``, used by the splitting schemes) are deepinv's; ``‖A‖``
comes from power iteration (once per image shape); no lower bound on σ_min is assumed (0), so
forward-backward uses τ = 1.95/L. Importing the module runs its code: the workflows only do so for a
config the user named, never for a checkpoint's unless told to.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .physics import NormBounds, Params, Physics, operator_norm, register_physics


def _module(name: str):
    """A module by dotted name, or from a ``.py`` file path (relative to the working folder)."""
    if name.endswith(".py"):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"physics.factory: {name} is not a file")
        spec = importlib.util.spec_from_file_location(f"retune_user_physics.{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ValueError(f"cannot import {name} for physics.factory ({e}); is it on PYTHONPATH?") from None


def load_factory(spec: str) -> Callable:
    """``"package.module:function"`` or ``"path/to/file.py:function"`` → the function (ValueError
    saying what is missing)."""
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise ValueError(f'physics.factory must be "module:function" or "file.py:function", not {spec!r}')
    factory = getattr(_module(module_name), attribute, None)
    if not callable(factory):
        raise ValueError(f"{module_name} has no function {attribute} for physics.factory")
    return factory


@register_physics
class FactoryPhysics(Physics):
    """A deepinv ``LinearPhysics`` from ``factory((C, H, W))``, with per-channel Gaussian noise."""

    name = "python"
    options = ("factory",)
    runs_user_code = True

    def __init__(self, sigma: Sequence[float], factory: str = ""):
        super().__init__(sigma)
        self.factory_name = factory
        self.factory = load_factory(factory)
        self._operators: dict[tuple, object] = {}
        self._norms: dict[tuple, float] = {}

    def _op(self, x: torch.Tensor):
        key = (tuple(x.shape[-3:]), x.device, x.dtype)
        if key not in self._operators:
            op = self.factory(tuple(x.shape[-3:]))
            if not (callable(getattr(op, "A", None)) and callable(getattr(op, "A_adjoint", None))):
                raise ValueError(f"{self.factory_name} returned {type(op).__name__}, not a deepinv LinearPhysics")
            self._operators[key] = op.to(device=x.device, dtype=x.dtype) if hasattr(op, "to") else op
        return self._operators[key]

    def A(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        y = self._op(x).A(x)
        if y.shape != x.shape:
            raise ValueError(f"{self.factory_name} maps {tuple(x.shape[-3:])} images to {tuple(y.shape[-3:])}: "
                             "physics python takes operators that keep the image's shape")
        return y.to(x.dtype)

    def A_adjoint(self, y: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        return self._op(y).A_adjoint(y).to(y.dtype)

    def norm_bounds(self, like: torch.Tensor, params: Params | None = None) -> NormBounds:
        """``‖A‖`` by power iteration once per image shape; ``σ_min = 0``."""
        key = tuple(like.shape[1:])
        if key not in self._norms:
            self._norms[key] = operator_norm(self, like[:1].detach())
        return NormBounds(self._norms[key], 0.0)

    def prox_data(self, z: torch.Tensor, y: torch.Tensor, tau: torch.Tensor, params: Params | None = None):
        """deepinv's ``prox_l2``: closed form for decomposable operators, otherwise conjugate gradient run
        to the dtype's precision (deepinv's default stops at 1e-4)."""
        tol = 1e-12 if z.dtype == torch.float64 else 1e-6
        return self._op(z).prox_l2(z, y, tau, max_iter=1000, tol=tol).to(z.dtype)
