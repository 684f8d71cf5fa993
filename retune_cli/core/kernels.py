"""Blur kernels ``(N, C, h, w)``: the paper's channel-wise uniform kernels, a user's checked, random ones
drawn per image (deepinv's Gaussian and motion generators, or from a given stack), and ``‖A‖`` of a
circular convolution.
"""

from __future__ import annotations

import torch

KERNEL_STREAM = 0x2545F491  # decorrelates the kernels' generator from the noise's (same seed)


def channel_blur_kernel(width: int, channels: int = 3) -> torch.Tensor:
    """``(1, 3, w, w)`` uniform kernels of width ``w``: R horizontal, G vertical, B diagonal."""
    if width < 1 or channels != 3:
        raise ValueError("the channel-wise blur needs a positive width and 3 channels")
    kernel = torch.zeros(1, 3, width, width)
    centre = width // 2
    kernel[0, 0, centre, :] = 1.0 / width
    kernel[0, 1, :, centre] = 1.0 / width
    kernel[0, 2] = torch.eye(width) / width
    return kernel


def as_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """``(h, w)`` (shared), ``(C, h, w)`` or ``(1, C, h, w)`` → ``(1, 3, h, w)`` float32; ValueError saying
    what was found for another shape, an empty, non-finite or all-zero kernel (``A = 0``)."""
    kernel = torch.as_tensor(kernel, dtype=torch.float32)
    found = tuple(kernel.shape)
    while kernel.dim() < 4:
        kernel = kernel.unsqueeze(0)
    if kernel.dim() != 4 or kernel.shape[:2] not in ((1, 1), (1, 3)):
        raise ValueError(f"a blur kernel is an (h, w), (3, h, w) or (1, 3, h, w) array, not {found}")
    if kernel.numel() == 0:
        raise ValueError(f"the kernel is empty (shape {found})")
    if not torch.all(torch.isfinite(kernel)):
        raise ValueError(f"the kernel has {int((~torch.isfinite(kernel)).sum())} non-finite values (NaN or ±inf)")
    if not torch.any(kernel != 0):
        raise ValueError("the kernel is all zero")
    return kernel.expand(1, 3, *kernel.shape[-2:]).contiguous()


def kernel_stack(kernels: torch.Tensor) -> torch.Tensor:
    """A stack ``(N, C, h, w)`` (``C`` = 1 or 3) or one kernel (fewer dimensions, :func:`as_kernel`) →
    ``(N, 3, h, w)`` float32, each kernel checked by :func:`as_kernel`."""
    kernels = torch.as_tensor(kernels, dtype=torch.float32)
    if kernels.dim() != 4:
        return as_kernel(kernels)
    if kernels.shape[0] == 0:
        raise ValueError(f"the stack of kernels is empty (shape {tuple(kernels.shape)})")
    return torch.cat([as_kernel(kernel[None]) for kernel in kernels])


def pick_kernels(stack: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``(n, 3, h, w)``: for each image, one kernel of ``stack`` ``(N, 3, h, w)`` drawn at random (seeded)."""
    generator = torch.Generator().manual_seed(seed ^ KERNEL_STREAM)
    return stack[torch.randint(len(stack), (n,), generator=generator)]


KERNELS = ("uniform-channel", "gaussian", "motion")


def draw_kernels(kind: str, n: int, size: int, seed: int) -> torch.Tensor:
    """``(n, 1, size, size)`` kernels from deepinv's generators: Gaussian (random σ and orientation) or
    motion (random camera shake), seeded."""
    from deepinv.physics.generator import GaussianBlurGenerator, MotionBlurGenerator

    cls = GaussianBlurGenerator if kind == "gaussian" else MotionBlurGenerator
    generator = cls((size, size), rng=torch.Generator().manual_seed(seed ^ KERNEL_STREAM))
    return generator.step(n, seed=seed ^ KERNEL_STREAM)["filter"].to(torch.float32)


def fft_norm(kernel: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``‖A‖₂`` of circular convolutions by ``kernel`` ``(N, C, h, w)`` on ``size`` images: the largest
    modulus of the kernels' DFTs (A is diagonal in Fourier, block-diagonal over images and channels): a 0-dim
    float64 tensor on the kernel's device (not read back)."""
    h, w = kernel.shape[-2:]
    padded = torch.nn.functional.pad(kernel.detach().double(), (0, size[1] - w, 0, size[0] - h))
    return torch.fft.fft2(padded).abs().max()
