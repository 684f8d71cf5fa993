"""Reading and writing images as float tensors ``(3, H, W)`` with values in [0, 1].

Read: anything Pillow opens (PNG, JPEG, TIFF, BMP, WebP…); 16-bit PNG and TIFF keep their 16 bits
(pypng, tifffile); ``.npy`` arrays ``H×W×C`` (or ``H×W``) of floats. Grayscale and palette images are
converted to RGB, an alpha channel is dropped, CMYK is converted to RGB.
Write, by suffix: ``.png``/``.tif``/``.tiff`` in 8 or 16 bits (clipped to [0, 1]), ``.npy`` float32
``H×W×C`` not clipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
WRITE_SUFFIXES = (".png", ".tif", ".tiff", ".npy")


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
    """Pillow's decompression-bomb guard, for the decoders that bypass Pillow (pypng, tifffile)."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS and width * height > 2 * Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"{width}×{height} pixels")


def _read_array(path: Path) -> np.ndarray:
    """Float array ``H×W×3`` in [0, 1] (``.npy``: as stored)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _to_rgb(np.load(path, allow_pickle=False).astype(np.float32))
    width, height, depth = _png_header(path) if suffix == ".png" else (0, 0, 8)
    if depth == 16:
        import png

        _check_pixels(width, height)
        try:
            width, height, rows, info = png.Reader(filename=str(path)).asDirect()
            array = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, info["planes"])
        except png.Error as e:
            raise ValueError(str(e)) from None
        return _to_rgb(array.astype(np.float32) / 65535.0)
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            _check_pixels(page.imagewidth, page.imagelength)
            if page.dtype == np.uint16:
                return _to_rgb(page.asarray().astype(np.float32) / 65535.0)
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            return _to_rgb(np.asarray(im, dtype=np.float32) / 65535.0)
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def read_image(path: Path | str) -> torch.Tensor:
    """``(3, H, W)`` float32 tensor; :class:`InputError` for a missing, unreadable or non-image file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist")
    try:
        array = _read_array(path)
    except Image.DecompressionBombError:
        raise InputError(f"{path} is too large to decode safely (decompression bomb guard)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise InputError(f"cannot read image {path}: {str(e).splitlines()[0] or 'not an image or truncated'}") from None
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"image {path} is empty")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def write_image(path: Path | str, x: torch.Tensor, bits: int = 8) -> None:
    """Write ``x (3, H, W)``; the format follows the suffix (see the module docstring)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise InputError(f"cannot write {path}: use a .png, .tif, .tiff or .npy file name")
    if bits not in (8, 16):
        raise InputError(f"--bits must be 8 or 16, not {bits}")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, x, bits)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None


def _write(path: Path, x: torch.Tensor, bits: int) -> None:
    suffix = path.suffix.lower()
    array = x.detach().to("cpu", torch.float32).numpy().transpose(1, 2, 0)
    if suffix == ".npy":
        np.save(path, np.ascontiguousarray(array))
        return
    scale, dtype = (255.0, np.uint8) if bits == 8 else (65535.0, np.uint16)
    quantized = np.round(np.clip(array, 0, 1) * scale).astype(dtype)
    if suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, quantized, photometric="rgb")
    elif bits == 16:
        import png

        h, w, c = quantized.shape
        with open(path, "wb") as f:
            png.Writer(w, h, greyscale=False, bitdepth=16).write(f, quantized.reshape(h, w * c))
    else:
        from PIL import Image

        Image.fromarray(quantized).save(path)
