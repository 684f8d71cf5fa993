"""A user's own operator for a real image (``restore --mask FILE``, ``--kernel FILE``): read, checked,
turned into the physics' parameters. The physics says which flag it takes and how it reads it
(:class:`~.core.physics.UserOperator`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from .core.physics import Params, UserOperator
from .errors import InputError
from .images import IMAGE_SUFFIXES, read_array, read_image, read_mask, read_stored
from .values import keep_warning

KERNEL_SUM_TOL = 1e-3


def _read_operator(path: Path, spec: UserOperator, invert_mask: bool = False) -> torch.Tensor:
    """A user's operator file: a mask (binary, :func:`~.images.read_mask`; ``invert_mask``: white = the
    holes), an image, or an array (:func:`read_kernel`)."""
    flag = f"--{spec.flag}"
    if spec.flag == "mask":
        mask = read_mask(path, flag)
        if invert_mask and not bool((mask == 0).any()):
            raise InputError(f"{flag} {path} is all white: inverted (--invert-mask) it keeps no pixel")
        return 1 - mask if invert_mask else mask
    if spec.reads == "image":
        return read_image(path, flag)
    return read_kernel(path, flag)


def read_kernel(path: Path, what: str) -> torch.Tensor:
    """A kernel file: a ``.npy`` array as stored, or an image (e.g. a PSF saved by an editor) read as one:
    gray → ``(h, w)``, colour → ``(3, h, w)``, divided by its sums, whose scale an image does not fix."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image, stored = read_stored(path, what)
        return normalized(image[0] if stored.gray else image)
    return torch.from_numpy(read_array(path, what))


def normalized(kernel: torch.Tensor) -> torch.Tensor:
    """``kernel`` divided by its sum (per channel for ``(C, h, w)``); a zero sum is left to be refused."""
    sums = kernel.sum(dim=(-2, -1) if kernel.dim() > 2 else tuple(range(kernel.dim())), keepdim=True)
    return kernel / torch.where(sums == 0, torch.ones_like(sums), sums)


def _check_kernel_sum(kernel: torch.Tensor, path: Path) -> None:
    """A blur keeps the mean brightness: each channel's kernel ``(1, 3, h, w)`` sums to 1 (± 1e-3)."""
    sums = kernel.double().sum(dim=(-2, -1)).flatten()
    if torch.any((sums - 1).abs() > KERNEL_SUM_TOL):
        found = ", ".join(f"{s:.4g}" for s in sums.tolist())
        fix = "; --normalize-kernel divides it by its sum" if torch.all(sums != 0) else ""
        raise InputError(f"--kernel {path}: it sums to {found} (per channel), not 1, so it changes the "
                         f"brightness{fix}")


def user_operator(model, shape: torch.Size, operators: dict[str, Path | None], normalize_kernel: bool = False,
                  on_warning: Callable[[str], None] | None = None, invert_mask: bool = False) -> Params | None:
    """The physics' parameters from a user's file (``{"mask": path, "kernel": path}``, as the flags),
    or None when none is given; the physics says which flag it takes and how it reads it. With
    ``normalize_kernel`` a kernel is divided by its sum first (otherwise one that does not sum to 1
    is refused, the message offering ``--normalize-kernel``); with ``invert_mask`` a mask is read white =
    holes. A mask that is probably inverted (:func:`~.values.keep_warning`) gives ``on_warning`` a line
    (default: a ``UserWarning``)."""
    physics = model.scheme.physics
    if normalize_kernel and operators.get("kernel") is None:
        raise InputError("--normalize-kernel applies to a --kernel FILE; give one or drop it")
    if invert_mask and operators.get("mask") is None:
        raise InputError("--invert-mask applies to a --mask FILE; give one or drop it")
    given = {flag: path for flag, path in operators.items() if path is not None}
    spec = physics.user_operator
    for flag in given:
        if spec is None or flag != spec.flag:
            raise InputError(
                f"--{flag} does not apply to {model.checkpoint.path}, whose physics is {physics.name}"
                + (f"; it takes --{spec.flag} ({spec.meaning})" if spec else "")
            )
    if not given:
        return None
    path = given[spec.flag]
    operator = _read_operator(path, spec, invert_mask)
    try:
        params = physics.operator_params(normalized(operator) if normalize_kernel else operator, shape)
    except ValueError as e:
        raise InputError(f"--{spec.flag} {path}: {e}") from None
    if spec.flag == "kernel":
        _check_kernel_sum(params["kernel"], path)
    if spec.flag == "mask" and (line := keep_warning(params["mask"], getattr(physics, "keep", None),
                                                     f"--mask {path}", model.checkpoint.path)):
        (on_warning or (lambda m: warnings.warn(m, UserWarning, stacklevel=3)))(line)
    return {k: v.to(model.device) for k, v in params.items()}


