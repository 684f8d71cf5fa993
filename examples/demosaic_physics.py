"""An example of your own physics for retune: Bayer demosaicing with deepinv.

Name it in a config as ``physics.factory: "examples/demosaic_physics.py:bayer"`` (a file path,
relative to the folder retune runs in) or ``"mypackage.module:bayer"`` (an importable module):

    retune train --preset examples/demosaic-wavelet.yaml --out runs/demosaic
    retune restore runs/demosaic/theta.safetensors photo.png --simulate --trust-code -o out.png

retune calls ``bayer((C, H, W))`` for each image size and uses the returned deepinv ``LinearPhysics``:
its ``A``, ``A_adjoint`` and ``prox_l2``; per-channel Gaussian noise comes from ``physics.sigma``.
"""

from __future__ import annotations

from deepinv.physics import Demosaicing


def bayer(shape: tuple[int, int, int]) -> Demosaicing:
    """Keep one colour per pixel in an RGGB Bayer pattern: A is a mask per channel (‖A‖ = 1)."""
    return Demosaicing(img_size=shape, pattern="bayer")
