"""``Physics.normal`` is ``Aᵀ A`` — one FFT pair for blurs, one product for masks — for every built-in
physics, with its parameters, in float64; and the wavelet step built on it is unchanged."""

from __future__ import annotations

import pytest
import torch

from retune_cli.config import resolve
from retune_cli.core.operators import ChannelBlur, Denoise, RandomInpainting
from retune_cli.core.resolution import Downsample
from retune_cli.models import build_scheme

PHYSICS = {
    "denoise": lambda: Denoise([0.1]),
    "inpaint": lambda: RandomInpainting([0.1], keep=0.3),
    "deblur-uniform": lambda: ChannelBlur([0.1], blur_width=5),
    "deblur-gaussian": lambda: ChannelBlur([0.1], kernel="gaussian", kernel_size=7),
    "deblur-motion": lambda: ChannelBlur([0.1], kernel="motion", kernel_size=7),
    "sr2": lambda: Downsample([0.1], factor=2),
}


@pytest.mark.parametrize("name", PHYSICS)
def test_normal_is_the_adjoint_of_A_composed_with_A(name):
    physics = PHYSICS[name]()
    x = torch.randn(2, 3, 24, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    params = {k: v.double() for k, v in physics.draw(x.shape, 5).items()}
    expected = physics.A_adjoint(physics.A(x, params), params)
    assert torch.allclose(physics.normal(x, params), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("preset", ["inpaint-wavelet", "deblur-wavelet"])
def test_the_scheme_uses_normal_on_the_image_crop(preset):
    """On a domain padded past the image, ``PaddedScheme.normal`` is ``Aᵀ A`` on the crop, zero outside."""
    scheme = build_scheme(resolve(preset, {"physics.blur_width": 5} if preset.startswith("deblur") else {})).double()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    clean = x[..., :27, :30].contiguous()
    obs = scheme.physics.simulate(clean, 0)
    params = {k: v.double() for k, v in obs.params.items()}
    out = scheme.normal(x, (27, 30), params)
    crop = x[..., :27, :30]
    assert torch.allclose(out[..., :27, :30], scheme.physics.A_adjoint(scheme.physics.A(crop, params), params),
                          rtol=0, atol=1e-12)
    assert out[..., 27:, :].abs().max() == 0 and out[..., :, 30:].abs().max() == 0
