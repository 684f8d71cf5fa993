"""Restoring noise of another level than training's (``restore --sigma S``, ``load(path, sigma=S)``).

Thresholds scale linearly with the noise (the universal threshold is ``σ√(2 log n)``), so a θ learned
at ``σ_train`` restores noise ``S`` with its thresholds scaled by ``S/σ_train``, per channel c.

* Wavelet schemes, ``min_x ½‖Ax − y‖² + ‖θ D x‖_{1,2}``: for A = I and θ constant in a group g the
  minimizer is group soft-thresholding of ``b = D y`` at θ, ``ŵ_g = b_g (1 − θ/‖b_g‖)₊``: the effective
  threshold on wavelet coefficients is θ itself, whatever τ (the iterate ``u = θ w``, the prox of
  ``τ‖·‖_{1,2}`` on u and τ(θ) of the step rule are the algorithm's, not the problem's). So
  ``θ_{j,b,c} ← r_c θ_{j,b,c}``, ``r_c = S_c/σ_c``, and τ follows θ through the step rule. θ_B has no
  channel axis but its groups lie within one channel (they span the bands), so per-channel factors act
  exactly on each group's threshold; θ_BC's groups span the channels, whose weights scale each by r_c.
* Plug-and-play: the denoiser takes one noise level per image, so ``σ ← σ · rms(S)/rms(σ_train)``
  (root mean square over the channels: the pooled noise's standard deviation); τ is unchanged.

Each prior owns its scaling (``Prior.scale_noise``); the physics then simulates noise S as well
(``restore --simulate --sigma S``). ``--sigma auto`` estimates S per channel from the observation
(:func:`estimated_sigma`). Noise levels are standard deviations of images in [0, 1]: one above 1 is a
0–255 habit and is refused with the value divided by 255.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import InputError
from .models import CHANNELS, QUANTIZATION_NOISE, per_channel

if TYPE_CHECKING:
    import torch


def parse_sigma(text: str, flag: str = "--sigma") -> tuple[float, ...]:
    """``"0.1"`` or ``"0.1,0.12,0.09"`` (one per channel R, G, B) → positive finite noise levels."""
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise InputError(f"{flag} takes one noise level or three (R,G,B), e.g. {flag} 0.1,0.12,0.09; "
                         f"not {text!r}") from None
    return check_sigma(values, flag)


def check_sigma(values: float | Sequence[float], flag: str = "sigma") -> tuple[float, ...]:
    """1 or 3 positive finite noise levels (standard deviations of images in [0, 1]): a number or a
    sequence."""
    try:
        values = (float(values),) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(f"{flag} must be a number or three (R,G,B), not {values!r}") from None
    if len(values) not in (1, CHANNELS) or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"{flag} must be one or three positive finite noise levels (R,G,B), "
                         f"not {_numbers(values) or 'nothing'}")
    if any(v > 1 for v in values):
        raise InputError(f"{flag} {_numbers(values)}: noise levels are standard deviations of images in [0, 1], "
                         f"at most 1; for a level on the 0–255 scale divide by 255 "
                         f"({flag} {','.join(f'{v / 255:.3g}' for v in values)})")
    return values


def estimated_sigma(y: torch.Tensor, known: torch.Tensor | None, what: str) -> tuple[float, ...]:
    """The noise level of an observation ``y (C, H, W)`` per channel, estimated on its ``known`` pixels
    ``(1, H, W)`` (all when None) by :func:`~.noise_estimate.estimate_noise`, within
    ``[QUANTIZATION_NOISE, 1]``: an image stored in 8 bits carries at least its rounding noise
    ``1/(255√12)`` (a clean photo reads about 0, and thresholds scaled to 0 would leave no prior);
    refused naming ``what`` when it cannot be estimated (too small)."""
    from .noise_estimate import estimate_noise

    try:
        sigma = estimate_noise(y.detach().cpu(), None if known is None else known.detach().cpu())
    except ValueError as e:
        raise InputError(f"{what}: {e}") from None
    return tuple(min(max(s, QUANTIZATION_NOISE), 1.0) for s in sigma)


def _numbers(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.3g}" for v in values)


@dataclass(frozen=True)
class NoiseScaling:
    """How a model was moved from its training noise to another: ``factors`` multiply θ per channel
    (wavelet) or the denoiser's σ (PnP, one factor)."""

    trained: tuple[float, ...]  # σ_train per channel
    given: tuple[float, ...]  # S per channel
    factors: tuple[float, ...]
    scaled: str  # "θ" or "the denoiser's σ"

    def describe(self) -> str:
        """``noise σ 0.2 (trained at 0.1, 0.25, 0.5): θ × 2, 0.8, 0.4 per channel``."""
        short = lambda v: _numbers(v[:1] if len(set(v)) == 1 else v)  # noqa: E731
        return (f"noise σ {short(self.given)} (trained at {short(self.trained)}): {self.scaled} × "
                f"{short(self.factors)}" + (" per channel" if len(set(self.factors)) > 1 else ""))


def rescale(scheme, trained: Sequence[float], sigma: float | Sequence[float], source: str) -> NoiseScaling:
    """Move ``scheme`` (θ loaded, trained at noise ``trained``) in place to noise ``sigma`` (see the
    module docstring); refuse a channel trained without noise, whose thresholds have no scale."""
    trained, given = per_channel(trained), per_channel(check_sigma(sigma))
    if not all(s > 0 for s in trained):
        raise InputError(f"--sigma: {source} was trained without noise on some channel (physics.sigma "
                         f"{_numbers(trained)}), so its thresholds have no noise scale")
    try:
        factors, scaled = scheme.theta.scale_noise(trained, given)
    except ValueError:
        raise InputError(f"--sigma: {source}'s prior ({scheme.theta.name}) has no known noise scaling") from None
    from .core.noise import ChannelGaussianNoise  # deepinv's: imported when a physics needs its noise

    scheme.physics.noise = ChannelGaussianNoise(given)
    return NoiseScaling(trained, given, factors, scaled)
