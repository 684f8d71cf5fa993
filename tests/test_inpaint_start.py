"""Inpainting schemes start from the holes filled from the known pixels (pull–push), not from black holes."""

from __future__ import annotations

import pytest
import torch

from retune_cli.config import resolve
from retune_cli.core.masks import pull_push_fill
from retune_cli.models import build_scheme


def _holes(shape, seed: int = 0, known: float = 0.3) -> torch.Tensor:
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) < known).double()


def test_the_fill_keeps_known_pixels_and_stays_within_their_range():
    y = torch.rand(2, 3, 37, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mask = _holes((2, 1, 37, 50))
    filled = pull_push_fill(y * mask, mask)
    known = mask.expand_as(y) > 0
    assert torch.equal(filled[known], y[known])
    assert float(filled.min()) >= float(y[known].min()) - 1e-12 and float(filled.max()) <= float(y[known].max()) + 1e-12


def test_the_fill_reproduces_smooth_images_far_better_than_black_holes():
    """A constant image is filled exactly; a smooth ramp with 90 % of its pixels missing to within a few %."""
    mask = _holes((1, 1, 64, 64), seed=2, known=0.1)
    constant = torch.full((1, 3, 64, 64), 0.4, dtype=torch.float64)
    assert torch.allclose(pull_push_fill(constant * mask, mask), constant, rtol=0, atol=1e-12)
    ramp = torch.linspace(0, 1, 64, dtype=torch.float64).expand(1, 3, 64, 64)
    error = (pull_push_fill(ramp * mask, mask) - ramp).abs().mean()
    assert float(error) < 0.03 < float((ramp * mask - ramp).abs().mean())


@pytest.mark.parametrize(("preset", "overrides"), [("inpaint-wavelet", {}), ("inpaint-tv", {}), ("inpaint-pnp", {})])
def test_inpainting_schemes_start_from_the_fill(preset, overrides):
    scheme = build_scheme(resolve(preset, overrides)).double()
    clean = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        obs = scheme.physics.simulate(clean, 0)
        ctx = scheme.prepare(obs)
        start = scheme.output(scheme.init(ctx), ctx)
    expected = pull_push_fill(obs.y, obs.params["mask"].double())
    assert torch.allclose(start, expected, rtol=0, atol=1e-10)
