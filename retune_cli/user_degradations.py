"""A user's own degradation for training, validation and evaluation: the files a config names, read as
the tensors its physics takes (the engine reads no file). The config keeps the paths as given, so a
checkpoint's physics reads them again (and is refused, naming the file, once it is gone).

* ``physics.kernel: FILE`` (deblur): a ``.npy`` array — one kernel ``(h, w)``, ``(C, h, w)``, or a stack
  ``(N, h, w)``, ``(N, C, h, w)`` (:func:`read_kernels`) — or a PSF image (gray: shared
  by the channels, colour: one kernel per channel), read as ``restore --kernel`` reads it
  (:func:`~.user_operators.read_kernel`), each kernel divided by its sum;
* ``physics.masks: DIR`` (inpaint): mask images (white = kept), read as ``restore --mask`` reads them
  (:func:`~.images.read_mask`), each at least the training crop.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .components import physics_class
from .core.kernels import kernel_stack
from .data import list_images
from .errors import InputError
from .images import IMAGE_SUFFIXES, read_mask
from .user_operators import KERNEL_SUM_TOL, normalized, read_kernel

if TYPE_CHECKING:
    from .config import PhysicsConfig

KERNEL_SUFFIXES = (".npy", *IMAGE_SUFFIXES)


def read_kernels(path: Path) -> torch.Tensor:
    """``(N, 3, h, w)`` float32 kernels of ``physics.kernel FILE``, each channel's summing to 1: ``(h, w)``
    and ``(C, h, w)`` (``C`` = 1 or 3) are one kernel, ``(N, h, w)`` (another ``N``) and ``(N, C, h, w)``
    a stack;
    :class:`InputError` naming the file when it cannot be read, is no kernel, or a kernel sums to 0."""
    what = "physics.kernel"
    kernels = read_kernel(path, what)
    if kernels.dim() == 3 and kernels.shape[0] not in (1, 3):  # (N, h, w): N kernels shared by the channels
        kernels = kernels[:, None]
    try:
        kernels = kernel_stack(normalized(kernels))
    except ValueError as e:
        raise InputError(f"{what} {path}: {e}") from None
    if torch.any((kernels.double().sum(dim=(-2, -1)) - 1).abs() > KERNEL_SUM_TOL):
        raise InputError(f"{what} {path}: a kernel sums to 0, so no division makes it keep the brightness")
    return kernels


def read_masks(folder: Path, crop: int) -> list[torch.Tensor]:
    """The masks ``(1, H, W)`` (bool, True = kept) of ``physics.masks DIR``, one per image file, each at
    least ``crop × crop``; :class:`InputError` naming the folder or file otherwise."""
    what = "physics.masks"
    masks = []
    for path in list_images(folder, what)[0]:
        mask = read_mask(path, what)[:1] > 0
        h, w = mask.shape[-2:]
        if h < crop or w < crop:
            raise InputError(f"{what} {path} is {w}×{h}, smaller than the {crop}×{crop} training crop: "
                             "give larger masks or a smaller train.crop")
        masks.append(mask)
    return masks


def file_options(physics: PhysicsConfig, crop: int) -> dict[str, object]:
    """The physics' options that the config gives as files, read: ``kernel`` (a path with a
    :data:`KERNEL_SUFFIXES` suffix) and ``masks`` (None when no folder is given)."""
    declared = physics_class(physics.name).options
    options: dict[str, object] = {}
    if "kernel" in declared and Path(physics.kernel).suffix.lower() in KERNEL_SUFFIXES:
        options["kernel"] = read_kernels(Path(physics.kernel))
    if "masks" in declared:
        options["masks"] = read_masks(Path(physics.masks), crop) if physics.masks else None
    return options
