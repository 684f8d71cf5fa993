"""Deblurring with a non-circular boundary (``physics.boundary`` reflect / replicate): ``A = C K P`` against a
direct convolution, exact adjoint, gradients, a norm bound from above, refusals, the CLI, and no border ringing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import smooth_image
from reliability import FAST, invoke, ok, one_line_error

from retune_cli import checkpoint as ckpt
from retune_cli.config import resolve
from retune_cli.core.hypergrad import restore
from retune_cli.core.operators import ChannelBlur, channel_blur_kernel
from retune_cli.core.physics import operator_norm
from retune_cli.errors import InputError
from retune_cli.models import build_scheme

MODES = ("reflect", "replicate")
F64 = {"dtype": torch.float64}
KERNELS = {  # (N or 1, 3 or 1, h, w), as a fixed kernel or ``draw`` gives them; even and odd sides
    "uniform-channel": lambda: channel_blur_kernel(5).double(),
    "gaussian-like": lambda: gaussian_like(torch.Generator().manual_seed(1)),
    "per-image (N, 1)": lambda: torch.rand(2, 1, 5, 4, generator=torch.Generator().manual_seed(2), **F64),
    "per-image (N, 3)": lambda: torch.rand(2, 3, 3, 6, generator=torch.Generator().manual_seed(3), **F64),
}


def gaussian_like(generator: torch.Generator) -> torch.Tensor:
    """``(1, 3, 5, 6)``: an anisotropic Gaussian per channel, random widths and centre, normalized."""
    yy, xx = torch.meshgrid(torch.arange(5, **F64), torch.arange(6, **F64), indexing="ij")
    scale = torch.tensor([2.0, 2.0, 1.0, 1.0], **F64).view(4, 1, 1, 1)
    sx, sy, cx, cy = 0.6 + torch.rand(4, 3, 1, 1, generator=generator, **F64) * scale
    kernel = torch.exp(-((xx - 2 - cx) / sx) ** 2 / 2 - ((yy - 2 - cy) / sy) ** 2 / 2)
    return (kernel / kernel.sum((-2, -1), keepdim=True))[None]


def blur(mode: str) -> ChannelBlur:
    return ChannelBlur([0.05], kernel="gaussian", kernel_size=5, boundary=mode)


def reference(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """``F.pad(mode)`` then ``conv2d`` with the flipped kernel per channel (groups = 3), image by image."""
    h, w = kernel.shape[-2:]
    out = []
    for i in range(x.shape[0]):
        padded = F.pad(x[i:i + 1], (w - 1 - w // 2, w // 2, h - 1 - h // 2, h // 2), mode=mode)
        k = kernel[i if kernel.shape[0] > 1 else 0].expand(3, h, w).flip(-2, -1)[:, None]
        out.append(F.conv2d(padded, k, groups=3))
    return torch.cat(out)


def case(name: str, seed: int = 0):
    kernel = KERNELS[name]()
    generator = torch.Generator().manual_seed(seed)
    shape = (max(kernel.shape[0], 2), 3, 12, 13)
    x, y = (torch.randn(shape, generator=generator, **F64) for _ in range(2))
    return {"kernel": kernel}, x, y


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", KERNELS)
def test_A_is_the_padded_convolution_and_A_adjoint_its_adjoint(mode, name):
    params, x, y = case(name)
    physics = blur(mode)
    ax = physics.A(x, params)
    assert torch.allclose(ax, reference(x, params["kernel"], mode), rtol=0, atol=1e-10)
    gap = float((ax * y).sum() - (x * physics.A_adjoint(y, params)).sum())
    assert abs(gap) <= 1e-10
    assert torch.allclose(physics.normal(x, params), physics.A_adjoint(ax, params), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", KERNELS)
def test_norm_bound_is_above_the_power_iteration_norm_and_tight(mode, name):
    params, x, _ = case(name)
    physics = blur(mode)
    bound = physics.norm_bounds(x, params)
    power = operator_norm(physics, x, params, iterations=1000, tol=1e-12)
    assert bound.sigma_min == 0.0
    assert power - 1e-6 <= bound.norm <= 1.03 * power


@pytest.mark.parametrize("mode", MODES)
def test_contract_checks_pass_without_a_data_prox(mode):
    """``retune_cli.testing.check_physics``: adjoint, normal, norm bound; prox_data not offered, so not checked."""
    from retune_cli import testing

    checks = testing.check_physics(ChannelBlur([0.05], kernel="motion", kernel_size=7, boundary=mode))
    assert [c.name for c in checks] == ["adjoint", "normal", "norm_bounds"]


def test_circular_is_unchanged_deepinv_blur_fft():
    from deepinv.physics import BlurFFT

    x = torch.rand(2, 3, 16, 18, generator=torch.Generator().manual_seed(0))
    physics = ChannelBlur([0.05], blur_width=5)
    assert physics.boundary == "circular" and physics.exact_data_prox
    reference_op = BlurFFT(img_size=(3, 16, 18), filter=channel_blur_kernel(5))
    assert torch.equal(physics.A(x), reference_op.A(x))
    assert torch.equal(physics.A_adjoint(x), reference_op.A_adjoint(x))
    assert torch.equal(physics.normal(x), reference_op.A_adjoint_A(x))
    tau = torch.tensor(0.7)
    assert torch.equal(physics.prox_data(x, x.flip(-1), tau), reference_op.prox_l2(x, x.flip(-1), tau))


@pytest.mark.parametrize("mode", MODES)
def test_gradients_flow_through_A_and_its_adjoint(mode):
    physics = blur(mode)
    params = {"kernel": torch.rand(1, 3, 3, 4, generator=torch.Generator().manual_seed(0), **F64)}
    x = torch.randn(1, 3, 5, 6, **F64, requires_grad=True)
    for op in (physics.A, physics.A_adjoint, physics.normal):
        assert torch.autograd.gradcheck(lambda v, op=op: op(v, params), (x,))
        assert torch.autograd.gradgradcheck(lambda v, op=op: op(v, params).pow(2).sum(), (x,))


def test_reflect_has_no_exact_data_prox():
    physics = blur("reflect")
    z = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="boundary reflect has no exact proximal operator.*model.scheme fb or pd"):
        physics.prox_data(z, z, torch.tensor(0.5), {"kernel": torch.ones(1, 1, 3, 3) / 9})
    with pytest.raises(InputError, match="model.scheme drs needs the exact proximal.*physics.boundary reflect"):
        resolve("deblur-wavelet-drs", {"physics.boundary": "reflect"})


def test_unknown_boundary_is_refused(tmp_path, image_folder):
    with pytest.raises(ValueError, match="boundary must be one of circular, reflect, replicate, valid, not 'zero'"):
        ChannelBlur([0.05], boundary="zero")
    one_line_error(invoke("train", "--preset", "deblur-wavelet", "--set", "physics.boundary=zero", "--steps", 1,
                          "--data", image_folder, "--out", tmp_path / "run", "--device", "cpu"),
                   "physics.boundary must be one of circular, reflect, replicate, valid, not 'zero'")
    assert not (tmp_path / "run").exists()


def test_boundary_from_a_preset_file(tmp_path):
    data = yaml.safe_load(resolve("deblur-wavelet").to_yaml())
    data["physics"]["boundary"] = "replicate"
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(data))
    config = resolve(str(tmp_path / "mine.yaml"))
    assert config.physics.boundary == "replicate"
    assert "boundary: replicate" in config.to_yaml()


def test_train_with_reflect_boundary_records_it(tmp_path, image_folder, monkeypatch):
    monkeypatch.setenv("RETUNE_THREADS", "1")
    out = tmp_path / "run"
    ok(invoke("train", "--preset", "deblur-wavelet", "--set", "physics.boundary=reflect",
              "--set", "physics.blur_width=5", *FAST, "--steps", 1, "--data", image_folder, "--out", out))
    assert yaml.safe_load((out / "config.yaml").read_text())["physics"]["boundary"] == "reflect"
    assert ckpt.load(out / "theta.safetensors").config.physics.boundary == "reflect"


def band_psnr(x: torch.Tensor, clean: torch.Tensor, band: int = 16) -> tuple[float, float]:
    """PSNR on the ``band``-pixel frame along the borders and on the inside."""
    error = (x - clean).pow(2).mean(1)[0]
    frame = torch.ones_like(error, dtype=torch.bool)
    frame[band:-band, band:-band] = False
    return tuple(float(10 * torch.log10(1 / error[m].mean())) for m in (frame, ~frame))


def test_reflect_model_restores_reflect_blur_without_border_ringing():
    """A reflect-blurred 64×64 image restored by wavelet FB: the reflect model's borders are as good as its
    inside; the circular model's ring (its data term wraps the other side's pixels in)."""
    clean = torch.tensor(smooth_image(np.random.default_rng(1), 64, 64)).permute(2, 0, 1)[None].double() / 255
    overrides = {"physics.blur_width": 9, "physics.sigma": [0.01], "model.init_lambda": 0.005, "train.crop": 64}
    schemes = {b: build_scheme(resolve("deblur-wavelet", {**overrides, "physics.boundary": b})).double()
               for b in ("reflect", "circular")}
    obs = schemes["reflect"].physics.simulate(clean, seed=3)
    psnr = {b: band_psnr(restore(s, obs, K=10, max_restarts=30).x, clean) for b, s in schemes.items()}
    print({b: f"border {p[0]:.2f} dB, interior {p[1]:.2f} dB" for b, p in psnr.items()})
    (border, interior), (circular_border, circular_interior) = psnr["reflect"], psnr["circular"]
    assert border >= interior - 3
    assert circular_border <= border - 5 and circular_border <= circular_interior - 3
