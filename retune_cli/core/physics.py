"""Forward models ``y = A x̄ + ε``, built on :mod:`deepinv.physics`.

* ``denoise``: ``A = I`` (deepinv ``Denoising``);
* ``inpaint``: ``A x = m ⊙ x``, a pixelwise mask shared by the channels (deepinv ``Inpainting``),
  keeping a fraction ``keep`` of the pixels; the mask is drawn per image from the observation seed,
  or given (``set_mask``) for a real image with known missing pixels;
* ``deblur``: channel-wise uniform blur of width ``w`` — red averaged horizontally, green vertically,
  blue along the main diagonal (the paper's §4.2) — with circular boundaries (deepinv ``BlurFFT``,
  built once per image size), so that ``A`` and ``Aᵀ`` are exact adjoints; ``set_kernel`` takes
  a measured kernel.

Every model adds per-channel Gaussian noise. Random parts (noise, mask) come from CPU generators
seeded explicitly, then move to the data's device: a seed gives the same observation on every device.
Operators whose random part depends on the observation are stateful: :func:`simulate` draws it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from deepinv.physics import BlurFFT, Denoising, Inpainting, LinearPhysics, NoiseModel

PHYSICS = ("denoise", "inpaint", "deblur")
MASK_STREAM = 0x5DEECE66D  # decorrelates the mask's generator from the noise's (same seed)


class ChannelGaussianNoise(NoiseModel):
    """White Gaussian noise with one standard deviation per channel: ``ε_c ~ N(0, σ_c² I)``.

    (deepinv's ``GaussianNoise`` reads a 1-D σ as one value per *sample*, not per channel.)
    """

    def __init__(self, sigma: Sequence[float]):
        super().__init__()
        sigma = torch.as_tensor(sigma, dtype=torch.float32).flatten()
        if sigma.numel() == 0 or not torch.all(torch.isfinite(sigma)) or torch.any(sigma < 0):
            raise ValueError("noise sigma must be finite and non-negative")
        self.register_buffer("sigma", sigma)

    def forward(self, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        channels = x.shape[1]
        if self.sigma.numel() not in (1, channels):
            raise ValueError(f"{self.sigma.numel()} noise levels for {channels} channels")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x)
        sigma = self.sigma.to(x).view(1, -1, 1, 1)
        return x + sigma * noise


class RandomInpainting(LinearPhysics):
    """``A x = m ⊙ x`` with a pixelwise binary mask ``m`` of shape ``(N, 1, H, W)``."""

    def __init__(self, keep: float, noise_model: NoiseModel):
        super().__init__(noise_model=noise_model)
        if not 0 < keep <= 1:
            raise ValueError("the fraction of kept pixels must be in (0, 1]")
        self.keep = keep
        self.mask: torch.Tensor | None = None  # the full batch's, as drawn or given
        self.operator: Inpainting | None = None

    def draw(self, shape: torch.Size, seed: int, device: torch.device | str = "cpu") -> None:
        """A fresh mask for a batch of ``shape``, each pixel kept with probability ``keep``."""
        n, _, h, w = shape
        generator = torch.Generator().manual_seed(seed ^ MASK_STREAM)
        self.set_mask((torch.rand((n, 1, h, w), generator=generator) < self.keep).to(device, torch.float32))

    def set_mask(self, mask: torch.Tensor) -> None:
        """Use ``mask`` (1 = kept), of shape ``(N or 1, 1, H, W)``."""
        self.mask = mask
        self.operator = Inpainting(img_size=tuple(mask.shape[1:]), mask=mask, device=mask.device)

    def _op(self) -> Inpainting:
        if self.operator is None:
            raise ValueError("the inpainting mask is not set: simulate an observation or give a mask")
        return self.operator

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._op().A(x)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._op().A_adjoint(y)


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


class ChannelBlur(LinearPhysics):
    """Circular convolution with one kernel per channel (``(1, C, h, w)``), via deepinv ``BlurFFT``."""

    def __init__(self, kernel: torch.Tensor, noise_model: NoiseModel):
        super().__init__(noise_model=noise_model)
        self.set_kernel(kernel)

    def set_kernel(self, kernel: torch.Tensor) -> None:
        """Use ``kernel`` ``(h, w)`` (shared), ``(C, h, w)`` or ``(1, C, h, w)``; it must sum to 1 per channel."""
        kernel = torch.as_tensor(kernel, dtype=torch.float32)
        while kernel.dim() < 4:
            kernel = kernel.unsqueeze(0)
        if kernel.dim() != 4 or kernel.shape[1] not in (1, 3) or not torch.all(torch.isfinite(kernel)):
            raise ValueError("a blur kernel is an (h, w), (3, h, w) or (1, 3, h, w) array of finite numbers")
        self.kernel = kernel.expand(1, 3, *kernel.shape[-2:]).contiguous()
        self._operators: dict[tuple, BlurFFT] = {}
        self._norms: dict[tuple, float] = {}  # ‖A‖ per image shape

    def _op(self, x: torch.Tensor) -> BlurFFT:
        key = (tuple(x.shape[-3:]), x.device, x.dtype)
        if key not in self._operators:
            h, w = x.shape[-2:]
            if self.kernel.shape[-2] > h or self.kernel.shape[-1] > w:
                raise ValueError(f"the {h}×{w} image is smaller than the blur kernel")
            kernel = self.kernel.to(x.device, x.dtype)
            self._operators[key] = BlurFFT(img_size=tuple(x.shape[-3:]), filter=kernel, device=x.device)
        return self._operators[key]

    def norm(self, like: torch.Tensor) -> float:
        """``‖A‖₂`` for images shaped like ``like``, by power iteration once per shape and kernel."""
        key = tuple(like.shape[1:])
        if key not in self._norms:
            self._norms[key] = operator_norm(self, like[:1].detach())
        return self._norms[key]

    def A(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._op(x).A(x).to(x.dtype)

    def A_adjoint(self, y: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._op(y).A_adjoint(y).to(y.dtype)


def build_physics(name: str, sigma: Sequence[float], keep: float = 0.1, blur_width: int = 25) -> LinearPhysics:
    """The degradation named ``name`` (one of :data:`PHYSICS`) with per-channel noise ``sigma``."""
    noise = ChannelGaussianNoise(sigma)
    if name == "denoise":
        return Denoising(noise_model=noise)
    if name == "inpaint":
        return RandomInpainting(keep, noise)
    if name == "deblur":
        return ChannelBlur(channel_blur_kernel(blur_width), noise)
    raise ValueError(f"unknown physics {name!r}; choose one of {', '.join(PHYSICS)}")


def is_identity(physics: LinearPhysics) -> bool:
    """Whether ``A = I`` (so ``D Aᵀ A Dᵀ = I`` and the wavelet step needs no transform)."""
    return isinstance(physics, Denoising)


def simulate(physics: LinearPhysics, x: torch.Tensor, seed: int, redraw: bool = True) -> torch.Tensor:
    """``y = A x + ε``; the operator's random part (a mask, unless ``redraw`` is False) and the noise
    are drawn from ``seed``."""
    if redraw and isinstance(physics, RandomInpainting):
        physics.draw(x.shape, seed, x.device)
    y = physics.noise_model(physics.A(x), seed=seed)
    return physics.A(y) if isinstance(physics, RandomInpainting) else y  # missing pixels stay 0


def restrict_batch(physics: LinearPhysics, index: slice) -> None:
    """Keep the per-image part of the operator (a mask) for the images ``index`` of the batch it was
    drawn for; ``slice(None)`` restores the whole batch. A no-op for operators shared by all images."""
    if isinstance(physics, RandomInpainting) and physics.mask is not None and physics.mask.shape[0] > 1:
        mask = physics.mask
        physics.operator = Inpainting(img_size=tuple(mask.shape[1:]), mask=mask[index], device=mask.device)


def operator_norm(physics: LinearPhysics, like: torch.Tensor, iterations: int = 100, tol: float = 1e-7) -> float:
    """``‖A‖₂`` by power iteration on ``AᵀA`` at the shape of ``like`` (seeded, deterministic)."""
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(like.shape, generator=generator, dtype=torch.float64).to(like)
    value = 0.0
    for _ in range(iterations):
        v = v / torch.linalg.vector_norm(v)
        w = physics.A_adjoint(physics.A(v))
        new = float(torch.sum(v * w))
        if abs(new - value) <= tol * max(new, 1e-30):
            value = new
            break
        value, v = new, w
    return value**0.5


def operator_norm_bounds(physics: LinearPhysics, like: torch.Tensor | None = None) -> tuple[float, float]:
    """``(‖A‖, a lower bound on σ_min(A))``: the extreme singular values that set the step size.

    Identity: ``(1, 1)``. A mask: ``(1, 0)`` (``‖A‖ = 1`` as soon as one pixel is kept). A blur:
    ``‖A‖`` by power iteration (cached per image shape), and ``0``.
    """
    if is_identity(physics):
        return 1.0, 1.0
    if isinstance(physics, RandomInpainting):
        return 1.0, 0.0
    if like is None:
        raise ValueError(f"the norm of {type(physics).__name__} needs an image shape")
    norm = physics.norm(like) if isinstance(physics, ChannelBlur) else operator_norm(physics, like[:1].detach())
    return norm, 0.0
