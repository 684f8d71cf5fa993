"""The orthonormal periodized DWT against PyWavelets, and its algebraic properties."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from retune_cli.core.wavelets import Coefficients, WaveletTransform

# (wavelet, levels, H, W): non-square sides, multiples of 2**levels; sym8 (length 16) on sides
# shorter than its filter at the coarse levels exercises the multiple-wrap periodization.
CASES = [("db4", 4, 48, 80), ("haar", 3, 24, 40), ("sym8", 2, 36, 20), ("sym8", 3, 16, 40), ("db4", 1, 6, 10)]
IDS = [f"{w}-J{j}-{h}x{wd}" for w, j, h, wd in CASES]

pytestmark = pytest.mark.filterwarnings("ignore:Level value of .* is too high:UserWarning")


def _flatten(c: Coefficients) -> torch.Tensor:
    return torch.cat([c.approx.flatten(), *[d.flatten() for d in c.details]])


def _random_coefficients(t: WaveletTransform, shape, dtype=torch.float64) -> Coefficients:
    n, ch, h, w = shape
    details = tuple(
        torch.randn(n, ch, 3, h // 2**j, w // 2**j, dtype=dtype) for j in range(t.levels, 0, -1)
    )
    return Coefficients(torch.randn(n, ch, h // 2**t.levels, w // 2**t.levels, dtype=dtype), details)


@pytest.mark.parametrize(("wavelet", "levels", "h", "w"), CASES, ids=IDS)
def test_matches_pywavelets_coefficient_for_coefficient(wavelet, levels, h, w):
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    c = WaveletTransform(wavelet, levels).analysis(x)
    ref = pywt.wavedec2(x.numpy(), wavelet, mode="periodization", level=levels, axes=(-2, -1))
    assert len(c.details) == levels == len(ref) - 1
    assert c.approx.shape == ref[0].shape
    np.testing.assert_allclose(c.approx.numpy(), ref[0], rtol=0, atol=1e-10)
    for level, (mine, theirs) in enumerate(zip(c.details, ref[1:])):
        assert mine.shape == (2, 3, 3, *theirs[0].shape[-2:]), f"level {level}"
        for band in range(3):  # (H, V, D) = PyWavelets' (cH, cV, cD)
            np.testing.assert_allclose(mine[:, :, band].numpy(), theirs[band], rtol=0, atol=1e-10)


@pytest.mark.parametrize(("wavelet", "levels", "h", "w"), CASES, ids=IDS)
def test_synthesis_matches_pywavelets_waverec2(wavelet, levels, h, w):
    t = WaveletTransform(wavelet, levels)
    c = _random_coefficients(t, (1, 2, h, w))
    ref = [c.approx.numpy()] + [tuple(d[:, :, b].numpy() for b in range(3)) for d in c.details]
    expected = pywt.waverec2(ref, wavelet, mode="periodization", axes=(-2, -1))
    np.testing.assert_allclose(t.synthesis(c).numpy(), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("wavelet", "levels", "h", "w"), CASES, ids=IDS)
def test_perfect_reconstruction_both_ways(wavelet, levels, h, w):
    t = WaveletTransform(wavelet, levels)
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    assert torch.allclose(t.synthesis(t.analysis(x)), x, rtol=0, atol=1e-10)  # DᵀD = I
    c = _random_coefficients(t, (2, 3, h, w))
    assert torch.allclose(_flatten(t.analysis(t.synthesis(c))), _flatten(c), rtol=0, atol=1e-10)  # DDᵀ = I


@pytest.mark.parametrize(("wavelet", "levels", "h", "w"), CASES, ids=IDS)
def test_norm_preserved(wavelet, levels, h, w):
    t = WaveletTransform(wavelet, levels)
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    norm_x = torch.linalg.vector_norm(x)
    assert abs(torch.linalg.vector_norm(_flatten(t.analysis(x))) - norm_x) <= 1e-10 * norm_x


@pytest.mark.parametrize(("wavelet", "levels", "h", "w"), CASES, ids=IDS)
def test_synthesis_is_the_adjoint(wavelet, levels, h, w):
    t = WaveletTransform(wavelet, levels)
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    c = _random_coefficients(t, (2, 3, h, w))
    lhs = torch.dot(_flatten(t.analysis(x)), _flatten(c))
    rhs = torch.dot(x.flatten(), t.synthesis(c).flatten())
    scale = torch.linalg.vector_norm(x) * torch.linalg.vector_norm(_flatten(c))
    assert abs(lhs - rhs) <= 1e-12 * scale


def test_float32_agrees_with_float64():
    t = WaveletTransform("db4", 4)
    x = torch.rand(2, 3, 32, 48, dtype=torch.float64)
    c32, c64 = t.analysis(x.float()), t.analysis(x)
    assert c32.approx.dtype == torch.float32 and all(d.dtype == torch.float32 for d in c32.details)
    assert torch.allclose(_flatten(c32).double(), _flatten(c64), rtol=0, atol=1e-5)
    back = t.synthesis(c32)
    assert back.dtype == torch.float32
    assert torch.allclose(back.double(), x, rtol=0, atol=1e-5)


def test_one_channel_at_a_time():
    """Channels and batch items are transformed independently."""
    t = WaveletTransform("db4", 2)
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    c = t.analysis(x)
    one = t.analysis(x[1:2, 2:3])
    assert torch.equal(one.approx, c.approx[1:2, 2:3])
    for a, b in zip(one.details, c.details):
        assert torch.equal(a, b[1:2, 2:3])


def test_gradcheck_analysis_and_synthesis():
    t = WaveletTransform("db4", 2)
    x = torch.randn(1, 2, 8, 12, dtype=torch.float64, requires_grad=True)

    def analysis(x):
        c = t.analysis(x)
        return (c.approx, *c.details)

    assert torch.autograd.gradcheck(analysis, (x,), fast_mode=True)  # random projections of the Jacobian
    c = _random_coefficients(t, (1, 2, 8, 12))
    leaves = [c.approx.requires_grad_(), *[d.requires_grad_() for d in c.details]]

    def synthesis(approx, *details):
        return t.synthesis(Coefficients(approx, tuple(details)))

    assert torch.autograd.gradcheck(synthesis, tuple(leaves), fast_mode=True)


@pytest.mark.parametrize(("h", "w"), [(48, 40), (40, 48), (24, 32), (15, 16)])
def test_sides_not_multiple_of_2_to_the_levels_raise(h, w):
    with pytest.raises(ValueError, match="multiples of 2\\*\\*levels = 16"):
        WaveletTransform("db4", 4).analysis(torch.zeros(1, 1, h, w))


@pytest.mark.parametrize("wavelet", ["bior2.2", "rbio3.1"])
def test_non_orthogonal_wavelet_raises(wavelet):
    with pytest.raises(ValueError, match="not orthogonal"):
        WaveletTransform(wavelet, 2)


def test_zero_levels_raise():
    with pytest.raises(ValueError, match="levels"):
        WaveletTransform("haar", 0)
