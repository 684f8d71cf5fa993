"""Reading and writing images as float tensors ``(3, H, W)`` with values in [0, 1].

Read: anything Pillow opens (PNG, JPEG, TIFF, BMP, WebP…); 16-bit PNG and TIFF keep their 16 bits
(pypng, tifffile); float TIFF and ``.npy`` arrays ``H×W×C`` (or ``H×W``). Grayscale is repeated on three
channels and palette and CMYK images are converted to RGB, an alpha channel is dropped; how the file
stored its values (:class:`Stored`: gray or colour, 8 or 16 bits) is kept for writing the result alike.
Every read goes through :func:`~.files.reading` (a regular file; any decoder failure names it); the
values then pass the one policy of :mod:`.values` (integers scaled by their range, floats in [0, 1],
masks binary). Write, by suffix, atomically: ``.png``/``.tif``/``.tiff`` in 8 or 16 bits (clipped to
[0, 1]), ``.jpg``/``.jpeg`` in 8 bits (JPEG quality 1–100), ``.npy`` float32 ``H×W×C`` not clipped;
``gray``: one channel (the mean of the three)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .files import atomic_write, check_outputs, reading
from .values import binary_mask, unit_range

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
WRITE_SUFFIXES = (".png", ".tif", ".tiff", ".npy", ".jpg", ".jpeg")
JPEG = (".jpg", ".jpeg")


@dataclass(frozen=True)
class Stored:
    """How a file stored an image: ``gray`` (one channel, with or without alpha) and ``bits`` (8, or 16
    for 16-bit integers and floats): what a result written alike keeps."""

    gray: bool = False
    bits: int = 8

    @classmethod
    def of(cls, array: np.ndarray) -> Stored:
        """The storage of a decoded array ``H×W`` or ``H×W×C``, as stored."""
        gray = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 2))
        return cls(gray, 16 if array.dtype == np.uint16 or array.dtype.kind == "f" else 8)


def _to_rgb(array: np.ndarray) -> np.ndarray:
    """``H×W`` or ``H×W×C`` → ``H×W×3`` (gray repeated, alpha dropped)."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"unsupported array shape {array.shape}")
    if array.shape[2] in (2, 4):
        array = array[..., :-1]
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return array


def _png_header(path: Path) -> tuple[int, int, int]:
    """``(width, height, bit depth)`` from a PNG's IHDR chunk (``(0, 0, 8)`` if it is not a PNG)."""
    with open(path, "rb") as f:
        header = f.read(25)
    if len(header) < 25 or header[:8] != b"\x89PNG\r\n\x1a\n":
        return 0, 0, 8
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big"), header[24]


def _check_pixels(width: int, height: int) -> None:
    """Pillow's decompression-bomb guard, for the decoders that bypass Pillow (pypng, tifffile, numpy)."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS and width * height > 2 * Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"{width}×{height} pixels")


def _load_npy(path: Path, as_float: bool = True) -> np.ndarray:
    """A copy of a ``.npy`` array of real numbers (float32, or its own dtype unless ``as_float``), its
    header checked before anything is allocated (memory-mapped: a header promising more than the file
    holds is refused)."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if not isinstance(array, np.ndarray):
        array.close()
        raise ValueError("an .npz archive, not a .npy array")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"its dtype {array.dtype} is not real numbers")
    _check_pixels(array.size // 4, 1)  # as many values as the guard's count of RGBA pixels
    return np.array(array, dtype=np.float32 if as_float else array.dtype.newbyteorder("="))


def _decoded(path: Path, what: str, decode) -> np.ndarray:
    """``decode(path)`` behind :func:`~.files.reading`, the bomb guard's refusal named too."""
    from PIL import Image

    with reading(path, what):
        try:
            return decode(path)
        except Image.DecompressionBombError:
            raise InputError(f"{what} {path} is too large to decode safely (decompression bomb guard)") from None


def read_array(path: Path | str, what: str) -> np.ndarray:
    """A ``.npy`` array of real numbers as float32 (e.g. a blur kernel); :class:`InputError` otherwise."""
    return _decoded(Path(path), what, _load_npy)


def _read_raw(path: Path) -> np.ndarray:
    """Array ``H×W`` or ``H×W×C`` of the values as stored (``uint8``, ``uint16``, floats…)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _load_npy(path, as_float=False)
    width, height, depth = _png_header(path) if suffix == ".png" else (0, 0, 8)
    if depth == 16:
        import png

        _check_pixels(width, height)
        try:
            width, height, rows, info = png.Reader(filename=str(path)).asDirect()
            array = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, info["planes"])
        except png.Error as e:
            raise ValueError(str(e)) from None
        return array
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            _check_pixels(page.imagewidth, page.imagelength)
            if page.dtype is not None and (page.dtype == np.uint16 or page.dtype.kind == "f"):
                return page.asarray()
    return _read_pillow(path)


def _read_pillow(path: Path) -> np.ndarray:
    """What Pillow decodes: 8-bit gray or RGB, 16-bit integers as ``uint16``, 32-bit floats as they are."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode == "F":
            return np.asarray(im, dtype=np.float32)
        if im.mode.startswith("I"):
            array = np.asarray(im)
            fits = array.size and 0 <= array.min() and array.max() <= 65535
            return array.astype(np.uint16) if fits else array
        return np.asarray(im.convert("L" if im.mode in ("1", "L", "LA") else "RGB"))


def _read_checked(path: Path, what: str) -> tuple[np.ndarray, Stored]:
    """``(H×W×3 array, how it was stored)``."""
    array = _decoded(path, what, _read_raw)
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{what} {path} is empty")
    try:
        return _to_rgb(array), Stored.of(array)
    except ValueError as e:
        raise InputError(f"{what} {path}: {e}") from None


def read_stored(path: Path | str, what: str = "image", observed: bool = False) -> tuple[torch.Tensor, Stored]:
    """``(image, how the file stored it)``: a ``(3, H, W)`` float32 tensor in [0, 1]
    (:func:`~.values.unit_range`; ``observed``: an observation to restore, kept as stored);
    :class:`InputError` for a missing, unreadable, non-image, empty, non-finite or out-of-range file
    (``what`` names it in messages, e.g. ``--reference``)."""
    path = Path(path)
    array, stored = _read_checked(path, what)
    return unit_range(array, f"{what} {path}", observed).permute(2, 0, 1).contiguous(), stored


def read_image(path: Path | str, what: str = "image", observed: bool = False) -> torch.Tensor:
    """The image of :func:`read_stored`."""
    return read_stored(path, what, observed)[0]


def read_mask(path: Path | str, what: str = "--mask") -> torch.Tensor:
    """A mask image as a ``(3, H, W)`` float32 tensor of 0 and 1 (white = kept), refused unless binary
    and keeping a pixel (:func:`~.values.binary_mask`)."""
    path = Path(path)
    return binary_mask(_read_checked(path, what)[0].transpose(2, 0, 1), f"{what} {path}")


def _check_format(path: Path, bits: int, what: str) -> None:
    if path.suffix.lower() not in WRITE_SUFFIXES:
        raise InputError(f"{what} {path}: use a .png, .tif, .tiff, .jpg or .npy file name")
    if bits not in (8, 16):
        raise InputError(f"--bits must be 8 or 16, not {bits}")
    if bits == 16 and path.suffix.lower() in JPEG:
        raise InputError(f"{what} {path}: a JPEG holds 8 bits; use .png or .tif for --bits 16")


def check_image_outputs(outputs: Iterable[tuple[str, Path | None]], bits: int,
                        inputs: Iterable[tuple[str, Path | None]]) -> None:
    """Before any work: each image output (``(flag, path)``) has a format :func:`write_image` knows, and
    passes :func:`~.files.check_outputs` against the ``inputs``."""
    outputs = list(outputs)
    for flag, path in outputs:
        if path is not None:
            _check_format(Path(path), bits, flag)
    check_outputs(outputs, inputs)


def write_image(path: Path | str, x: torch.Tensor, bits: int = 8, quality: int = 95, gray: bool = False) -> None:
    """Write ``x (3, H, W)`` atomically; the format follows the suffix (see the module docstring);
    ``quality`` (1–100) for JPEG; ``gray``: one channel, the mean of the three."""
    path = Path(path)
    suffix = path.suffix.lower()
    _check_format(path, bits, "cannot write")
    x = x.detach().to("cpu", torch.float32)
    x = x.mean(0, keepdim=True) if gray else x
    array = np.ascontiguousarray(x.numpy().transpose(1, 2, 0))
    atomic_write(path, lambda tmp: _write(tmp, suffix, array, bits, quality))


def _write(tmp: str, suffix: str, array: np.ndarray, bits: int, quality: int = 95) -> None:
    """``array`` (H×W×C float32, C = 3 or 1 for gray) into the file ``tmp`` in the format of ``suffix``."""
    gray = array.shape[2] == 1
    if suffix == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, array[..., 0] if gray else array)
        return
    scale, dtype = (255.0, np.uint8) if bits == 8 else (65535.0, np.uint16)
    quantized = np.round(np.clip(array, 0, 1) * scale).astype(dtype)
    if suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(tmp, quantized[..., 0] if gray else quantized, photometric="minisblack" if gray else "rgb")
    elif bits == 16:
        import png

        h, w, c = quantized.shape
        with open(tmp, "wb") as f:
            png.Writer(w, h, greyscale=gray, bitdepth=16).write(f, quantized.reshape(h, w * c))
    else:
        from PIL import Image

        jpeg = suffix in JPEG
        Image.fromarray(quantized[..., 0] if gray else quantized).save(
            tmp, format="JPEG" if jpeg else "PNG", **({"quality": quality} if jpeg else {}))
