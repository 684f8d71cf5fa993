"""Super-resolution: ``A x = S(h ∗ x)``, an anti-aliasing filter ``h`` (bicubic or Gaussian) then
keeping one pixel in ``factor`` along each axis, with circular boundaries (deepinv ``Downsampling``),
so that ``A`` and ``Aᵀ`` are exact adjoints and ``prox_{τf}`` has a closed form in Fourier.

Observations are ``factor`` times smaller than the images; a clean image is cut to sides that are
multiples of ``factor`` before it is observed; the evaluation baseline is bicubic upsampling of y.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .physics import NormBounds, Observation, Params, Physics, register_physics

FILTERS = ("bicubic", "gaussian")


@register_physics
class Downsample(Physics):
    """``y = S(h ∗ x) + ε`` with ``factor`` ∈ {2, 4, …} and ``filter`` ∈ :data:`FILTERS`."""

    name = "sr"
    options = ("factor", "filter")

    def __init__(self, sigma: Sequence[float], factor: int = 4, filter: str = "bicubic"):
        super().__init__(sigma)
        if factor < 2:
            raise ValueError("the super-resolution factor must be at least 2")
        if filter not in FILTERS:
            raise ValueError(f"the anti-aliasing filter must be one of {', '.join(FILTERS)}, not {filter!r}")
        from deepinv.physics.functional.blur import bicubic_filter, gaussian_blur

        self.factor, self.filter = factor, filter
        # bicubic: sample where PIL's and torchvision's antialiased resize do (measured on photographs: 49–54 dB
        # agreement at even factors, one high-resolution pixel off at 4 without it); odd factors as deepinv's
        self.shift = -(factor // 2 - 1) if filter == "bicubic" and factor % 2 == 0 else 0
        kernel = bicubic_filter(factor) if filter == "bicubic" else gaussian_blur(sigma=(factor, factor))
        self.kernel = kernel.to(torch.float64)  # cast per dtype: a float32 filter limits float64 to ~1e-7
        self._operators: dict[tuple, object] = {}

    def _op(self, image_shape: tuple[int, int, int], like: torch.Tensor):
        """deepinv ``Downsampling`` for images of ``(C, H, W)``, per device and dtype."""
        from deepinv.physics import Downsampling

        key = (tuple(image_shape), like.device, like.dtype)
        if key not in self._operators:
            self.check_fits(image_shape)
            kernel = self.kernel.to(like.device, like.dtype)
            self._operators[key] = Downsampling(img_size=tuple(image_shape), filter=kernel, factor=self.factor,
                                                padding="circular")
        return self._operators[key]

    def _image_shape(self, y: torch.Tensor) -> tuple[int, int, int]:
        return (y.shape[-3], *self.image_size(y))

    def _roll(self, x: torch.Tensor, sign: int) -> torch.Tensor:
        """``R x`` (``sign`` 1) or ``Rᵀ x`` (−1): the circular shift by :attr:`shift` along both axes."""
        return torch.roll(x, (sign * self.shift,) * 2, (-2, -1)) if self.shift else x

    def A(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """``S(h ∗ R x)``: deepinv's downsampling after the shift ``R`` to PIL's sampling phase."""
        return self._op(x.shape[-3:], x).A(self._roll(x, 1)).to(x.dtype)

    def A_adjoint(self, y: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        return self._roll(self._op(self._image_shape(y), y).A_adjoint(y), -1).to(y.dtype)

    def start(self, y: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """Bicubic upsampling of y (:meth:`baseline`): far closer to the image than ``Aᵀy``."""
        return self.baseline(Observation(y, params or {}))

    def image_size(self, y: torch.Tensor, params: Params | None = None) -> tuple[int, int]:
        return (y.shape[-2] * self.factor, y.shape[-1] * self.factor)

    def fit_image(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return x[..., : h - h % self.factor, : w - w % self.factor]

    def check_fits(self, shape) -> None:
        h, w = shape[-2:]
        least = max(2 * self.factor, *self.kernel.shape[-2:])
        if h % self.factor or w % self.factor or min(h, w) < least:
            raise ValueError(f"a {w}×{h} image cannot be downsampled by {self.factor}: its sides must be multiples "
                             f"of {self.factor}, at least {least}")

    def baseline(self, obs: Observation) -> torch.Tensor:
        """Bicubic upsampling of y."""
        return F.interpolate(obs.y, scale_factor=self.factor, mode="bicubic", align_corners=False).clamp(0, 1)

    def norm_bounds(self, like: torch.Tensor, params: Params | None = None) -> NormBounds:
        """``‖A‖`` exactly: ``A Aᵀ = S H Hᵀ Sᵀ`` is circulant on the low-resolution grid with symbol the
        mean of ``|Ĥ|²`` over the ``factor²`` frequencies that alias together, so ``‖A‖²`` is its
        largest value; ``σ_min = 0``."""
        h, w = self.image_size(like)
        kh, kw = self.kernel.shape[-2:]
        power = torch.fft.fft2(F.pad(self.kernel[0, 0], (0, w - kw, 0, h - kh))).abs() ** 2
        f = self.factor
        return NormBounds(float(power.reshape(f, h // f, f, w // f).mean(dim=(0, 2)).max()) ** 0.5, 0.0)

    def prox_data(self, z: torch.Tensor, y: torch.Tensor, tau: torch.Tensor, params: Params | None = None):
        """Closed form in Fourier for circular downsampling (deepinv ``Downsampling.prox_l2``), conjugated by the
        shift: ``prox_{τ½‖A₀R· − y‖²}(z) = Rᵀ prox_{τ½‖A₀· − y‖²}(R z)``."""
        return self._roll(self._op(z.shape[-3:], z).prox_l2(self._roll(z, 1), y, tau), -1).to(z.dtype)
