"""Code a user names: modules imported by name or from a ``.py`` file (config plugins, installed plugins,
``physics.factory``), the errors raised in them, and your own deepinv physics.

:func:`import_user_module` runs a module and counts its file (and its package's folder) as user code;
:func:`describe_error` turns an exception raised in user code into one line naming the file, the line
and the function (the deepest user frame of its traceback), so that a caller can report it as such.

Your own physics: any deepinv ``LinearPhysics`` that maps images to images, built by a Python function
named in the config (``physics.name: python``, ``physics.factory: "module:function"`` or
``"path/to/file.py:function"``). The function is called with the image shape ``(C, H, W)`` and returns
the operator for images of that shape (rebuilt and cached per size, so an operator that depends on it,
e.g. a colour-filter array, works), mapping them to observations of the same shape (a size-changing
operator is refused). ``A``, ``Aᵀ`` and ``prox_{τf}`` (``prox_l2``, used by the splitting schemes) are
deepinv's; ``‖A‖`` comes from power iteration (once per image shape); no lower bound on σ_min is assumed
(0), so forward-backward uses τ = 1.95/L. Importing the module runs its code: the workflows only do so
for a config the user named, never for a checkpoint's unless told to.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import torch

from .physics import NormBounds, Params, Physics, operator_norm, register_physics

_USER_CODE: set[str] = set()  # files, and package folders ending in os.sep, of the modules users named


class UserCodeError(ValueError):
    """A user's code failed (an import: one line naming the file, the line and the function) or gave what
    its contract refuses (a factory's operator that is not one, or changes the image's shape)."""


def add_user_code(module: ModuleType | None) -> None:
    """Count ``module``'s file, and its top-level package's folders, as user code."""
    if module is None or module.__name__.startswith("retune_cli"):
        return
    if getattr(module, "__file__", None):
        _USER_CODE.add(os.path.realpath(module.__file__))
    top = sys.modules.get(module.__name__.partition(".")[0])
    _USER_CODE.update(os.path.realpath(folder) + os.sep for folder in getattr(top, "__path__", None) or ())


def _is_user_code(filename: str) -> bool:
    path = os.path.realpath(filename)
    return path in _USER_CODE or any(path.startswith(folder) for folder in _USER_CODE if folder.endswith(os.sep))


def describe_error(error: BaseException) -> str | None:
    """``FILE line N, in FUNCTION: Type: message`` at the deepest frame of user code in the traceback
    (a syntax error: its file and line), or None when the error did not pass through user code."""
    if isinstance(error, SyntaxError) and error.filename and _is_user_code(error.filename):
        return f"{error.filename} line {error.lineno}: SyntaxError: {error.msg}"
    frames = [(f.f_code, n) for f, n in traceback.walk_tb(error.__traceback__) if _is_user_code(f.f_code.co_filename)]
    if not frames:
        return None
    code, line = frames[-1]
    function = getattr(code, "co_qualname", code.co_name)  # Python ≥ 3.11: Class.method
    return f"{code.co_filename} line {line}, in {function}: {type(error).__name__}: {error}"


def _run(spec, name: str) -> ModuleType:
    """Execute the module of ``spec`` as ``sys.modules[name]``; an error in it → :class:`UserCodeError`."""
    module = importlib.util.module_from_spec(spec)
    _USER_CODE.add(os.path.realpath(spec.origin))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: any error, in one line
        sys.modules.pop(name, None)
        raise UserCodeError(describe_error(e) or f"{type(e).__name__}: {e}") from e
    return module


def import_user_module(name: str, what: str) -> ModuleType:
    """A module by dotted name, or run from a ``.py`` file path (relative to the working folder);
    ``ValueError`` when there is none, :class:`UserCodeError` when its code fails."""
    if name.endswith(".py") or "/" in name or os.sep in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ValueError(f"{what}: {name} is not a file")
        path = path.resolve()
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        module_name = f"retune_user_{path.stem}_{digest}"
        return _run(importlib.util.spec_from_file_location(module_name, path), module_name)
    if name in sys.modules:
        add_user_code(sys.modules[name])
        return sys.modules[name]
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:  # a parent package is missing
        spec = None
    except Exception as e:  # a parent package's code failed
        raise UserCodeError(describe_error(e) or f"{type(e).__name__}: {e}") from e
    if spec is None:
        raise ValueError(f"cannot import {name} for {what} (no such module); is it on PYTHONPATH?")
    if spec.origin:
        _USER_CODE.add(os.path.realpath(spec.origin))
    add_user_code(sys.modules.get(name.partition(".")[0]))
    try:
        module = importlib.import_module(name)
    except Exception as e:  # the user's code: any error, in one line
        raise UserCodeError(describe_error(e) or f"{type(e).__name__}: {e}") from e
    add_user_code(module)
    return module


def load_factory(spec: str) -> Callable:
    """``"package.module:function"`` or ``"path/to/file.py:function"`` → the function (ValueError
    saying what is missing)."""
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise ValueError(f'physics.factory must be "module:function" or "file.py:function", not {spec!r}')
    factory = getattr(import_user_module(module_name, "physics.factory"), attribute, None)
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
                raise UserCodeError(f"{self.factory_name} returned {type(op).__name__}, not a deepinv LinearPhysics")
            self._operators[key] = op.to(device=x.device, dtype=x.dtype) if hasattr(op, "to") else op
        return self._operators[key]

    def A(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        y = self._op(x).A(x)
        if y.shape != x.shape:
            raise UserCodeError(f"{self.factory_name} maps {tuple(x.shape[-3:])} images to {tuple(y.shape[-3:])}: "
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
