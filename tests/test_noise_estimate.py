"""The single-image noise-level estimator (``restore --sigma auto``) on 256×256 crops of the built-in samples,
noised as a saved 8-bit PNG would be: Gaussian noise, clipped to [0, 1], quantized to 1/255."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from retune_cli.noise_estimate import estimate_noise

SAMPLES = Path(__file__).resolve().parents[1] / "retune_cli" / "samples"
CROPS = {"astronaut": (0, 0), "chelsea": (0, 0), "rocket": (43, 128)}  # top-left corners of 256×256 crops


@cache
def _sample(name: str, size: int = 256) -> torch.Tensor:
    from PIL import Image

    top, left = CROPS[name]
    with Image.open(SAMPLES / f"{name}.png") as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(rgb).permute(2, 0, 1)[:, top : top + size, left : left + size].contiguous()


def _noisy(x: torch.Tensor, sigma: float | tuple[float, ...], seed: int = 0) -> torch.Tensor:
    """``x`` plus seeded Gaussian noise σ (one per channel or one for all), clipped and 8-bit quantized."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    return ((x + sigma * noise).clamp(0, 1) * 255).round() / 255


def _assert_within(estimate: tuple[float, ...], truth: tuple[float, ...], tol: float = 0.10) -> None:
    errors = [e / t - 1 for e, t in zip(estimate, truth, strict=True)]
    assert all(abs(e) <= tol for e in errors), f"estimated {estimate} for {truth}: relative errors {errors}"


@pytest.mark.parametrize("name", sorted(CROPS))
@pytest.mark.parametrize("sigma", [0.03, 0.05, 0.1, 0.15])
def test_estimate_within_10_percent_per_channel(name, sigma):
    _assert_within(estimate_noise(_noisy(_sample(name), sigma)), (sigma,) * 3)


@pytest.mark.parametrize("name", ["astronaut", "chelsea"])
def test_different_levels_per_channel_are_told_apart(name):
    sigma = (0.03, 0.08, 0.12)
    _assert_within(estimate_noise(_noisy(_sample(name), sigma, seed=1)), sigma)


def test_blurred_then_noised_image():
    """A 9×9 uniform blur (reflect padding) leaves the noise added after it white: still within 10 %."""
    x = _sample("astronaut")
    kernel = torch.full((3, 1, 9, 9), 1 / 81)
    blurred = F.conv2d(F.pad(x[None], (4, 4, 4, 4), mode="reflect"), kernel, groups=3)[0]
    _assert_within(estimate_noise(_noisy(blurred, 0.05, seed=2)), (0.05,) * 3)


def test_noise_free_smooth_image_gives_a_small_level():
    v, u = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    smooth = torch.stack([0.5 + 0.3 * torch.sin(u / 20 + c) * torch.cos(v / 27 - c) for c in range(3)])
    sigma = estimate_noise((smooth * 255).round() / 255)
    assert all(s < 0.005 for s in sigma), sigma


def test_auto_sigma_of_a_clean_image_is_the_quantization_floor():
    """``--sigma auto`` never scales θ to (almost) 0: a flat or clean image reads at least the 8-bit rounding
    noise 1/(255√12) per channel (an estimate of 5e-31 once scaled θ by 1e-29 into non-finite restorations)."""
    from retune_cli.models import QUANTIZATION_NOISE
    from retune_cli.noise_level import estimated_sigma

    flat = torch.full((3, 64, 64), 0.5)
    assert estimated_sigma(flat, None, "flat.png") == pytest.approx((QUANTIZATION_NOISE,) * 3)
    noisy = estimated_sigma(_noisy(_sample("astronaut"), 0.05), None, "noisy.png")
    assert noisy == estimate_noise(_noisy(_sample("astronaut"), 0.05))  # above the floor: unchanged


def test_grayscale_image_gives_one_level():
    gray = _sample("chelsea").mean(dim=0, keepdim=True)
    sigma = estimate_noise(_noisy(gray, 0.05))
    assert len(sigma) == 1
    _assert_within(sigma, (0.05,))


def test_mask_restricts_the_estimate_to_known_pixels():
    """Noise 0.1 on the known half, 0.03 on the other (the flatter: what the whole image would give)."""
    x = _sample("chelsea")
    known = torch.zeros(1, 256, 256)
    known[..., :, :128] = 1
    y = torch.where(known.bool(), _noisy(x, 0.1, seed=3), _noisy(x, 0.03, seed=4))
    _assert_within(estimate_noise(y, known), (0.1,) * 3)
    _assert_within(estimate_noise(y * known, known), (0.1,) * 3)  # holes at 0, as an inpainting observation
    assert max(estimate_noise(y)) < 0.07


def test_a_50_percent_block_mask_still_estimates_within_10_percent():
    x = _sample("rocket")
    known = torch.ones(1, 256, 256)
    for i in range(0, 256, 64):  # a checkerboard of 32×32 blocks: half the pixels
        for j in range(0, 256, 64):
            known[..., i : i + 32, j : j + 32] = 0
            known[..., i + 32 : i + 64, j + 32 : j + 64] = 0
    y = _noisy(x, 0.1, seed=5) * known
    _assert_within(estimate_noise(y, known), (0.1,) * 3)


def test_too_small_image_is_refused():
    with pytest.raises(ValueError, match=r"smaller than one 7×7 patch"):
        estimate_noise(torch.rand(3, 5, 40))
    with pytest.raises(ValueError, match=r"only 16 7×7 patches .* needs at least 490"):
        estimate_noise(torch.rand(3, 10, 10))


def test_mask_with_too_few_whole_patches_is_refused():
    y = _noisy(_sample("chelsea"), 0.05)
    known = torch.zeros(1, 256, 256)
    known[..., 100:120, 100:120] = 1  # 14×14 = 196 patches of 7×7
    with pytest.raises(ValueError, match=r"only 196 7×7 patches wholly on known pixels .* needs at least 490"):
        estimate_noise(y, known)
    scattered = (torch.rand(1, 256, 256, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    with pytest.raises(ValueError, match=r"only 0 7×7 patches"):  # random pixels: no whole patch
        estimate_noise(y, scattered)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        estimate_noise(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"mask of known pixels must be \(1, 64, 64\)"):
        estimate_noise(torch.rand(3, 64, 64), torch.ones(3, 64, 64))


def test_deterministic_whatever_the_call_order_or_seed():
    a, b = _noisy(_sample("astronaut"), 0.05), _noisy(_sample("rocket"), 0.1)
    first = estimate_noise(a)
    estimate_noise(b)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        again = estimate_noise(a)
    finally:
        torch.set_num_threads(threads)
    assert again == first
    assert estimate_noise(a.clone()) == first


def test_high_frequency_energy_is_that_of_the_2d_dct():
    """The separable energies equal ``Σ c_uv²`` of the explicit 2-D DCT of each patch, on a strided grid."""
    from retune_cli.noise_estimate import _dct, high_frequency_energy

    x = torch.rand(40, 33, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    d = _dct(7)
    energy = high_frequency_energy(x, 7, stride=2)
    assert energy.shape == (17, 14)
    u = torch.arange(7)
    high = (u[:, None] + u[None]) >= 9
    for i, j in [(0, 0), (5, 3), (16, 13)]:
        c = d @ x[2 * i : 2 * i + 7, 2 * j : 2 * j + 7] @ d.T
        assert torch.allclose(energy[i, j], c[high].square().sum())
