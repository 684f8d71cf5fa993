"""The built-in physics and the registry that maps ``physics.name`` to a class.

* ``denoise``: ``A = I``;
* ``inpaint``: ``A x = m ⊙ x``, a pixelwise mask shared by the channels (as deepinv ``Inpainting``),
  drawn per image from the observation seed (parameter ``mask``, ``(N, 1, H, W)``): of a kind
  (:mod:`.masks`: ``random`` keeps a fraction ``keep`` of the pixels; ``strokes``, ``text``, ``blocks``)
  or cut from given masks; or given for a real image; missing pixels of an observation are 0;
* ``deblur``: channel-wise uniform blur of width ``w`` — red averaged horizontally, green vertically,
  blue along the main diagonal (the paper's §4.2) — with circular boundaries (deepinv ``BlurFFT``,
  built once per image size and kernel), so that ``A`` and ``Aᵀ`` are exact adjoints, or (``boundary``
  ``reflect``, ``replicate``) ``A = C K P`` on the padded image (:mod:`.boundary`), or (``valid``) ``y = C K x``,
  only the ``(H − h + 1)×(W − w + 1)`` pixels whose window lies inside the image; a measured kernel is
  the parameter ``kernel`` ``(1, 3, h, w)``; a stack of given kernels is drawn from per image.

A new physics is one subclass of :class:`~.physics.Physics` decorated with :func:`register_physics`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import custom, resolution  # noqa: F401  (register the super-resolution and user-code physics)
from .boundary import BOUNDARIES, PaddedBlur, ValidBlur, extend, window
from .kernels import KERNELS, as_kernel, channel_blur_kernel, draw_kernels, fft_norm, kernel_stack, pick_kernels
from .masks import MASK_KINDS, cut_masks, draw_masks, harmonic_fill
from .physics import PHYSICS, NormBounds, Observation, Params, Physics, UserOperator, register_physics

MASK_STREAM = 0x5DEECE66D  # decorrelates the mask's generator from the noise's (same seed)


def build_physics(name: str, sigma: Sequence[float], **options) -> Physics:
    """The physics registered as ``name``, given the config options it declares."""
    if name not in PHYSICS:
        raise ValueError(f"unknown physics {name!r}; choose one of {', '.join(PHYSICS)}")
    cls = PHYSICS[name]
    return cls(sigma, **{k: options[k] for k in cls.options if k in options})


@register_physics
class Denoise(Physics):
    """``A = I``: ``D Aᵀ A Dᵀ = I``, so the wavelet step needs no transform."""

    name = "denoise"
    identity = True
    injective = True

    def A(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        return x

    def A_adjoint(self, y: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        return y

    def norm_bounds(self, like: torch.Tensor, params: Params | None = None) -> NormBounds:
        return NormBounds(1.0, 1.0)

    def prox_data(self, z: torch.Tensor, y: torch.Tensor, tau: torch.Tensor, params: Params | None = None):
        """``(z + τ y)/(1 + τ)``."""
        return (z + tau * y) / (1 + tau)


@register_physics
class RandomInpainting(Physics):
    """``A x = m ⊙ x`` with a pixelwise binary mask ``m`` ``(N or 1, 1, H, W)``, the parameter ``mask``.

    ``mask``: the kind drawn per image (:data:`~.masks.MASK_KINDS`; ``random`` keeps a fraction ``keep``);
    ``masks``: given masks ``(1, H', W')`` (1 = kept) to cut the images' from instead.
    """

    name = "inpaint"
    options = ("keep", "mask", "masks")
    user_operator = UserOperator("mask", "image", "white = known pixels")
    needs_user_operator = True

    def __init__(self, sigma: Sequence[float], keep: float = 0.1, mask: str = "random",
                 masks: Sequence[torch.Tensor] | None = None):
        super().__init__(sigma)
        if not 0 < keep <= 1:
            raise ValueError("the fraction of kept pixels must be in (0, 1]")
        if mask not in MASK_KINDS:
            raise ValueError(f"the mask must be one of {', '.join(MASK_KINDS)}, not {mask!r}")
        if masks is not None and mask != "random":
            raise ValueError(f"masks are given (a folder) and drawn ({mask}): choose one")
        self.keep, self.mask, self.masks = keep, mask, masks

    def draw(self, shape: torch.Size, seed: int) -> Params:
        """One mask per image: of kind ``mask`` (:func:`~.masks.draw_masks`) or cut from ``masks``."""
        seed ^= MASK_STREAM
        if self.masks is not None:
            return {"mask": cut_masks(self.masks, shape, seed)}
        return {"mask": draw_masks(self.mask, shape, seed, self.keep)}

    @staticmethod
    def _mask(x: torch.Tensor, params: Params | None) -> torch.Tensor:
        if not params or "mask" not in params:
            raise ValueError("the inpainting mask is not set: simulate an observation or give a mask")
        return params["mask"].to(x.dtype)

    def A(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        return self._mask(x, params) * x

    A_adjoint = A  # a mask is self-adjoint

    normal = A  # m ⊙ m ⊙ x = m ⊙ x for a 0/1 mask: one product

    def observe(self, x: torch.Tensor, seed: int, params: Params) -> torch.Tensor:
        """``m ⊙ (m ⊙ x + ε)``: missing pixels stay 0."""
        return self.A(super().observe(x, seed, params), params)

    def start(self, y: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """The holes filled from the known pixels (:func:`~.masks.harmonic_fill`), not left black as in ``Aᵀy``."""
        return harmonic_fill(y, self._mask(y, params))

    def observed_pixels(self, params: Params) -> torch.Tensor | None:
        """The mask of the first image, ``(1, H, W)``: missing pixels carry no noise."""
        return self._mask(params["mask"], params)[0]

    def norm_bounds(self, like: torch.Tensor, params: Params | None = None) -> NormBounds:
        """``‖A‖ = 1`` as soon as one pixel is kept; ``σ_min = 0``."""
        return NormBounds(1.0, 0.0)

    def prox_data(self, z: torch.Tensor, y: torch.Tensor, tau: torch.Tensor, params: Params | None = None):
        """``(z + τ m ⊙ y)/(1 + τ m)``, pixel by pixel."""
        mask = self._mask(z, params)
        return (z + tau * mask * y) / (1 + tau * mask)

    def operator_params(self, operator: torch.Tensor, shape: torch.Size) -> Params:
        """A mask image ``(C, H, W)`` in [0, 1]: pixels above 0.5 in its first channel are known."""
        if tuple(operator.shape[-2:]) != tuple(shape[-2:]):
            found, want = f"{operator.shape[-1]}×{operator.shape[-2]}", f"{shape[-1]}×{shape[-2]}"
            raise ValueError(f"the mask is {found}, the image {want}")
        return {"mask": (operator[..., :1, :, :].reshape(1, 1, *shape[-2:]) > 0.5).to(torch.float32)}


@register_physics
class ChannelBlur(Physics):
    """Convolution with one kernel per channel (or per image): circular via deepinv ``BlurFFT``, or
    ``A = C K P`` (:class:`~.boundary.PaddedBlur`) for a ``reflect`` or ``replicate`` boundary, or ``A = C K``
    (:class:`~.boundary.ValidBlur`) for ``valid``: ``y`` is ``(H − h + 1)×(W − w + 1)``, the pixels whose window
    lies inside the ``H×W`` image; the unknown extends the observation by the kernel's reach.

    ``kernel``: ``uniform-channel`` (the paper's, width ``blur_width``, fixed), ``gaussian`` or ``motion``
    (``kernel_size``², drawn per image from the observation seed), or a tensor: one kernel, fixed, or a
    stack ``(N, C, h, w)`` (:func:`~.kernels.kernel_stack`) drawn from per image. The parameter
    ``kernel`` (drawn, or a user's) replaces the configured one. ``boundary``: how the image extends
    beyond its edges, one of :data:`~.boundary.BOUNDARIES`.
    """

    name = "deblur"
    options = ("blur_width", "kernel", "kernel_size", "boundary")
    user_operator = UserOperator("kernel", "array", "an (h, w) or (3, h, w) .npy array, or a PSF image")

    def __init__(self, sigma: Sequence[float], blur_width: int = 25, kernel: str | torch.Tensor = "uniform-channel",
                 kernel_size: int = 25, boundary: str = "circular"):
        super().__init__(sigma)
        if isinstance(kernel, str) and kernel not in KERNELS:
            raise ValueError(f"the blur kernel must be one of {', '.join(KERNELS)}, not {kernel!r}")
        if boundary not in BOUNDARIES:
            raise ValueError(f"the boundary must be one of {', '.join(BOUNDARIES)}, not {boundary!r}")
        self.boundary = boundary
        self.kind = kernel if isinstance(kernel, str) else "given"
        if isinstance(kernel, str):
            kernel = channel_blur_kernel(blur_width) if kernel == "uniform-channel" else None
        kernels = None if kernel is None else kernel_stack(kernel)
        self.stack = kernels if kernels is not None and len(kernels) > 1 else None  # one drawn per image
        self.kernel = None if self.stack is not None else kernels
        self.size = (kernel_size, kernel_size) if kernels is None else tuple(kernels.shape[-2:])
        self._operators: dict[tuple, object] = {}

    def draw(self, shape: torch.Size, seed: int) -> Params:
        """One kernel per image for ``gaussian``, ``motion`` and a stack; none for a fixed kernel."""
        if self.stack is not None:
            return {"kernel": pick_kernels(self.stack, shape[0], seed)}
        if self.kernel is not None:
            return {}
        return {"kernel": draw_kernels(self.kind, shape[0], self.size[0], seed)}

    def _kernel(self, params: Params | None) -> torch.Tensor:
        if params and "kernel" in params:
            return params["kernel"]
        if self.kernel is None:
            raise ValueError(f"the {self.kind} blur kernels are drawn per image: simulate an observation or give one")
        return self.kernel

    @property
    def exact_data_prox(self) -> bool:
        """:meth:`prox_data` exists in Fourier, for circular boundaries only."""
        return self.boundary == "circular"

    def _op(self, x: torch.Tensor, params: Params | None, observed: bool = False):
        """deepinv ``BlurFFT`` (circular), a :class:`~.boundary.PaddedBlur` or a :class:`~.boundary.ValidBlur` — the
        kernel's FFT — per image shape (``x`` an observation when ``observed``), device, dtype and kernel object;
        the entry keeps the kernel alive, so its ``id`` is not reused while cached."""
        from deepinv.physics import BlurFFT

        kernel = self._kernel(params)
        shape = (x.shape[-3], *x.shape[-2:])
        if observed and self.boundary == "valid":
            shape = (shape[0], shape[1] + kernel.shape[-2] - 1, shape[2] + kernel.shape[-1] - 1)
        key = (id(kernel), shape, x.device, x.dtype)
        if key not in self._operators:
            if len(self._operators) >= 16:  # kernels come and go (drawn per step, users'): keep the cache small
                self._operators.clear()
            self.check_fits(shape, kernel)
            if self.boundary == "circular":
                op = BlurFFT(img_size=shape, filter=kernel.to(x.device, x.dtype), device=x.device)
            elif self.boundary == "valid":
                op = ValidBlur(kernel, shape[1:], x)
            else:
                op = PaddedBlur(kernel, shape[1:], self.boundary, x)
            self._operators[key] = (kernel, op)
        return self._operators[key][1]

    def A(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        return self._op(x, params).A(x).to(x.dtype)

    def A_adjoint(self, y: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        return self._op(y, params, observed=True).A_adjoint(y).to(y.dtype)

    def normal(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """Circular: ``Aᵀ A x = F⁻¹(|K̂|² F x)``, one FFT pair instead of two (deepinv ``BlurFFT.A_adjoint_A``);
        otherwise ``Pᵀ Kᵀ Cᵀ C K P x``."""
        return self._op(x, params).A_adjoint_A(x).to(x.dtype)

    def norm_bounds(self, like: torch.Tensor, params: Params | None = None) -> NormBounds:
        """Circular: ``‖A‖ = max |DFT(kernel)|`` exactly (the largest over the images' kernels); otherwise a
        certified upper bound, within 2 % when 30 iterations reach it (:meth:`~.boundary.PaddedBlur.norm_bound`);
        valid: ``max|K̂|`` on the image's grid (:meth:`~.boundary.ValidBlur.norm_bound`); ``σ_min = 0``."""
        if self.boundary == "circular":
            return NormBounds(fft_norm(self._kernel(params), like.shape[-2:]).to(like.dtype), 0.0)
        return NormBounds(self._op(like, params, observed=True).norm_bound(like.shape[-3]), 0.0)

    def prox_data(self, z: torch.Tensor, y: torch.Tensor, tau: torch.Tensor, params: Params | None = None):
        """In Fourier, ``(Ẑ + τ K̂* Ŷ)/(1 + τ|K̂|²)`` (deepinv ``BlurFFT.prox_l2``); circular boundaries only."""
        if not self.exact_data_prox:
            raise ValueError(f"boundary {self.boundary} has no exact proximal operator of the data term; "
                             "use model.scheme fb or pd")
        return self._op(z, params).prox_l2(z, y, tau).to(z.dtype)

    def check_fits(self, shape: torch.Size, kernel: torch.Tensor | None = None) -> None:
        """Images of ``shape`` at least the kernel's size (valid: larger, so that some pixel is observed)."""
        kh, kw = self.size if kernel is None else kernel.shape[-2:]
        if self.boundary == "valid" and (shape[-2] <= kh or shape[-1] <= kw):
            raise ValueError(f"the {shape[-1]}×{shape[-2]} image is not larger than the {kw}×{kh} blur kernel: a valid "
                             f"blur observes only its pixels whose kernel window lies inside it")
        if shape[-2] < kh or shape[-1] < kw:
            raise ValueError(f"the {shape[-1]}×{shape[-2]} image is smaller than the {kw}×{kh} blur kernel")

    def operator_params(self, operator: torch.Tensor, shape: torch.Size) -> Params:
        """A measured kernel; the image must be at least its size. Valid: ``shape`` is the observation's, and the
        kernel's size sets how much larger the image is (:meth:`image_size` with these params)."""
        kernel = as_kernel(operator)
        if self.boundary != "valid":
            self.check_fits(shape, kernel)
        return {"kernel": kernel}

    def image_size(self, y: torch.Tensor, params: Params | None = None) -> tuple[int, int]:
        """Valid: ``(H + h − 1, W + w − 1)`` for an ``H×W`` observation and the ``h×w`` kernels; else y's size."""
        if self.boundary != "valid":
            return tuple(y.shape[-2:])
        h, w = self._size(params)
        return (y.shape[-2] + h - 1, y.shape[-1] + w - 1)

    def start(self, y: torch.Tensor, params: Params | None = None) -> torch.Tensor | None:
        """Valid: y extended by reflection onto the image's grid (:func:`~.boundary.extend`); else ``Aᵀy``."""
        return extend(y, self._size(params)) if self.boundary == "valid" else None

    def baseline(self, obs: Observation) -> torch.Tensor:
        """Valid: y extended onto the image's grid, as :meth:`start`; else y."""
        return self.start(obs.y, obs.params) if self.boundary == "valid" else obs.y

    def observed_window(self, x: torch.Tensor, params: Params | None = None) -> torch.Tensor:
        """Valid: the window of ``x`` whose pixels the observation shows (:func:`~.boundary.window`); else ``x``."""
        return window(x, self._size(params)) if self.boundary == "valid" else x

    def _size(self, params: Params | None) -> tuple[int, int]:
        """``(h, w)`` of the kernels: the parameter's, else the configured size."""
        return tuple(params["kernel"].shape[-2:]) if params and "kernel" in params else self.size
