"""Image folders, the built-in samples, seeds, and the training batches drawn from them.

Every random draw is a pure function of ``(seed, purpose, step or image)``: a batch, its crops and
its noise depend only on the run's seed and the step number, so a resumed run sees exactly the data
an uninterrupted one would have seen.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from .errors import InputError
from .images import IMAGE_SUFFIXES, read_image
from .values import unit_range

CACHE_BYTES = 2 * 1024**3


def sample_dir() -> Path:
    """The photographs shipped with the package (see ``samples/LICENSES.md``)."""
    return Path(str(resources.files("retune_cli") / "samples"))


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across runs, platforms and Python versions."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def list_images(folder: Path, what: str = "--data") -> tuple[list[Path], list[Path]]:
    """``(images, skipped)``: files with an image suffix, sorted, and the other files (``what``: the
    folder's name in messages)."""
    if not folder.is_dir():
        raise InputError(f"{what} {folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise InputError(f"{what} {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images, [p for p in files if p not in images]


class Images(ABC):
    """Training images by index (``images[i]``: ``(3, H, W)``) with a name for messages."""

    skipped: list[Path]  # files of a folder that are not images

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, i: int) -> torch.Tensor: ...

    @abstractmethod
    def name(self, i: int) -> str: ...

    def check_min_size(self, side: int) -> None:
        """Refuse, naming it, any image with a side shorter than ``side`` (e.g. the crop)."""
        for i in range(len(self)):
            h, w = self[i].shape[-2:]
            if min(h, w) < side:
                raise InputError(f"{self.name(i)} is {w}×{h}, smaller than the crop {side}; "
                                 f"use --crop {min(h, w)} or drop it")


@dataclass
class ImageFolder(Images):
    """The images of a folder, decoded on first use and kept in memory up to a byte budget."""

    files: list[Path]
    skipped: list[Path] = field(default_factory=list)
    _cache: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _cached_bytes: int = 0

    @classmethod
    def open(cls, folder: Path | None, what: str = "--data") -> ImageFolder:
        """``folder`` (named ``what`` in messages), or the built-in samples when it is ``None``."""
        if folder is None:
            return cls(list_images(sample_dir())[0])
        return cls(*list_images(folder, what))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        if i in self._cache:
            return self._cache[i]
        image = read_image(self.files[i])
        size = image.numel() * image.element_size()
        if self._cached_bytes + size <= CACHE_BYTES:
            self._cache[i] = image
            self._cached_bytes += size
        return image

    def name(self, i: int) -> str:
        return f"image {self.files[i]}"


class TensorImages(Images):
    """Training images held in memory: a tensor ``(N, C, H, W)``, a sequence of ``(C, H, W)`` tensors,
    or any torch ``Dataset`` whose items are such a tensor (or a tuple starting with one), values in
    [0, 1] or ``uint8``/``uint16`` (:func:`~.values.unit_range`); one channel is repeated to RGB."""

    def __init__(self, source) -> None:
        self.skipped = []
        if not hasattr(source, "__getitem__") or not hasattr(source, "__len__") or len(source) == 0:
            raise InputError("the training data must be a non-empty tensor, sequence or sized Dataset of images")
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def name(self, i: int) -> str:
        return f"dataset item {i}"

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.source[i]
        item = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(item, torch.Tensor) or item.dim() != 3 or item.shape[0] not in (1, 3):
            kind = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
            raise InputError(f"{self.name(i)} is {kind}, not an image tensor (C, H, W) with C = 1 or 3")
        return unit_range(item.detach().to("cpu"), self.name(i)).expand(3, -1, -1)


def open_images(data: Path | Images | None) -> Images:
    """Images in memory as they are; otherwise the folder ``data`` (the built-in samples when None)."""
    return data if isinstance(data, Images) else ImageFolder.open(data)


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    return math.ceil(n_images / batch_size)


def training_batch(images: Images, step: int, batch_size: int, crop: int, seed: int) -> torch.Tensor:
    """Batch ``(B, 3, crop, crop)`` of step ``step``: images in a per-epoch shuffled order, random crops."""
    n = len(images)
    epoch, position = divmod(step, steps_per_epoch(n, batch_size))
    order = torch.randperm(n, generator=generator(seed, "order", epoch))
    picks = [int(order[(position * batch_size + i) % n]) for i in range(batch_size)]
    g = generator(seed, "crop", step)
    crops = []
    for i in picks:
        image = images[i]
        h, w = image.shape[-2:]
        top = int(torch.randint(0, h - crop + 1, (1,), generator=g))
        left = int(torch.randint(0, w - crop + 1, (1,), generator=g))
        crops.append(image[:, top : top + crop, left : left + crop])
    return torch.stack(crops)
