"""Inpainting schemes start from the holes filled from the known pixels (pull–push, then Jacobi sweeps towards
the harmonic fill), not from black holes."""

from __future__ import annotations

import pytest
import torch

from retune_cli.config import resolve
from retune_cli.core.masks import harmonic_fill, pull_push_fill
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
    expected = harmonic_fill(obs.y, obs.params["mask"].double())
    assert torch.allclose(start, expected, rtol=0, atol=1e-10)


def test_jacobi_sweeps_bring_the_fill_towards_the_harmonic_one():
    """The discrete Laplacian on the holes (the harmonic fill's residual) shrinks with the sweeps."""
    import torch.nn.functional as F

    y = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = F.avg_pool2d(F.pad(y, (2, 2, 2, 2), mode="replicate"), 5, stride=1)  # a smoother image
    mask = _holes((1, 1, 48, 48), seed=5, known=0.5)

    def laplacian_on_holes(x):
        p = F.pad(x, (1, 1, 1, 1), mode="replicate")
        lap = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:] - 4 * x
        return float(lap[(mask == 0).expand_as(x)].abs().mean())

    residuals = [laplacian_on_holes(harmonic_fill(y * mask, mask, sweeps)) for sweeps in (0, 10, 100)]
    assert residuals[0] > residuals[1] > residuals[2]
    assert torch.equal(harmonic_fill(y * mask, mask, 0), pull_push_fill(y * mask, mask))
