"""Super-resolution of real low-resolution images: the bicubic observation model samples where PIL's (and
torchvision's) antialiased bicubic resize does, its data prox stays exact, and every scheme starts from the
bicubic upsampling of y, not from Aᵀy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from retune_cli.config import resolve
from retune_cli.core.operators import build_physics
from retune_cli.models import build_scheme


def smooth_image(side: int, seed: int = 0) -> np.ndarray:
    """A band-limited colour image in [0, 1] (random low frequencies), so that borders matter little."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, side // 8, side // 8, generator=g, dtype=torch.float64)
    return F.interpolate(low, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)[0].permute(
        1, 2, 0).numpy()


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_bicubic_observation_matches_pil_resize(factor):
    side = 128
    x = smooth_image(side)
    pil = Image.fromarray(np.round(x * 255).astype(np.uint8)).resize((side // factor,) * 2, Image.BICUBIC)
    ours = build_physics("sr", sigma=[0.0], factor=factor).A(
        torch.from_numpy(np.round(x * 255) / 255).permute(2, 0, 1)[None])
    reference = torch.from_numpy(np.asarray(pil, dtype=np.float64) / 255).permute(2, 0, 1)[None]
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    mse = float(((ours - reference)[inner] ** 2).mean())
    assert 10 * np.log10(1 / mse) >= 45  # 8-bit rounding of PIL's output alone is ~59 dB


@pytest.mark.parametrize("factor", [2, 4])
def test_shifted_data_prox_is_optimal(factor):
    """``p = prox_{τf}(z)`` of ``f = ½‖A x − y‖²`` satisfies ``p − z + τ Aᵀ(A p − y) = 0``."""
    physics = build_physics("sr", sigma=[0.0], factor=factor)
    g = torch.Generator().manual_seed(1)
    z = torch.rand(2, 3, 32, 40, generator=g, dtype=torch.float64)
    y = torch.rand(2, 3, 32 // factor, 40 // factor, generator=g, dtype=torch.float64)
    tau = torch.tensor(0.7, dtype=torch.float64)
    p = physics.prox_data(z, y, tau)
    residual = p - z + tau * physics.A_adjoint(physics.A(p) - y)
    assert float(residual.abs().max()) <= 1e-10


@pytest.mark.parametrize(("preset", "overrides"), [("sr4-wavelet", {}), ("sr4-pnp", {}),
                                                   ("sr4-wavelet", {"model.prior": "tv", "model.scheme": "pd"})])
def test_schemes_start_from_the_bicubic_upsampling(preset, overrides):
    scheme = build_scheme(resolve(preset, overrides)).double()
    y = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        ctx = scheme.prepare(y)
        start = scheme.output(scheme.init(ctx), ctx)
    bicubic = F.interpolate(y, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    assert torch.allclose(start, bicubic, rtol=0, atol=1e-10)
