"""Deblurring with ``physics.boundary: valid`` (boundary-free): ``y = C K x`` keeps the pixels whose blur window lies
inside the image, so x is larger than y by the kernel's reach. Exact adjoint, the same kernel as the padded modes
(y = their central crop), a norm bound from above, shapes, refusals, optimality of the fb solution, the CLI."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import smooth_image
from PIL import Image
from reliability import FAST, invoke, ok, save_checkpoint

from retune_cli import testing
from retune_cli.config import resolve
from retune_cli.contract_checks import _local_minimum, _perturbations
from retune_cli.core.boundary import window
from retune_cli.core.hypergrad import restore
from retune_cli.core.operators import ChannelBlur
from retune_cli.core.physics import operator_norm
from retune_cli.errors import InputError
from retune_cli.images import read_image
from retune_cli.models import build_scheme

F64 = {"dtype": torch.float64}


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), **F64)


KERNELS = {  # (N or 1, 3 or 1, h, w): odd and even sides, per channel, one per image
    "odd 5×5 per channel": lambda: rand(1, 3, 5, 5, seed=1),
    "even 4×6 shared": lambda: rand(1, 1, 4, 6, seed=2),
    "per image (2, 3) 3×4": lambda: rand(2, 3, 3, 4, seed=3),
    "per image (2, 1) 6×5": lambda: rand(2, 1, 6, 5, seed=4),
}


def blur(boundary: str = "valid") -> ChannelBlur:
    return ChannelBlur([0.05], kernel="gaussian", kernel_size=5, boundary=boundary)


def valid_convolution(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``conv2d`` unpadded, kernel flipped (a true convolution, scipy's ``mode='valid'``), per channel and image."""
    h, w = kernel.shape[-2:]
    out = [F.conv2d(x[i:i + 1], kernel[i if kernel.shape[0] > 1 else 0].expand(3, h, w).flip(-2, -1)[:, None],
                    groups=3) for i in range(x.shape[0])]
    return torch.cat(out)


@pytest.mark.parametrize("name", KERNELS)
def test_A_is_the_valid_convolution_and_A_adjoint_its_exact_adjoint(name):
    params = {"kernel": KERNELS[name]()}
    h, w = params["kernel"].shape[-2:]
    x = torch.randn(2, 3, 12, 15, generator=torch.Generator().manual_seed(0), **F64)
    physics = blur()
    ax = physics.A(x, params)
    assert ax.shape == (2, 3, 12 - h + 1, 15 - w + 1)
    assert torch.allclose(ax, valid_convolution(x, params["kernel"]), rtol=0, atol=1e-12)
    y = torch.randn(ax.shape, generator=torch.Generator().manual_seed(1), **F64)
    aty = physics.A_adjoint(y, params)
    assert aty.shape == x.shape
    assert abs(float((ax * y).sum() - (x * aty).sum())) <= 1e-10
    assert torch.allclose(physics.normal(x, params), physics.A_adjoint(ax, params), rtol=0, atol=1e-12)


@pytest.mark.parametrize("boundary", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("name", KERNELS)
def test_valid_y_is_the_central_crop_of_the_padded_modes_y(boundary, name):
    """One kernel means one blur in every mode: the modes differ only where the window leaves the image."""
    params = {"kernel": KERNELS[name]()}
    x = torch.rand(2, 3, 13, 16, generator=torch.Generator().manual_seed(0), **F64)
    padded = blur(boundary).A(x, params)
    assert torch.allclose(blur().A(x, params), window(padded, params["kernel"].shape[-2:]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", KERNELS)
def test_norm_bound_is_above_the_power_iteration_norm_and_at_most_the_l1_norm(name):
    params = {"kernel": KERNELS[name]()}
    x = torch.zeros(2, 3, 12, 15, **F64)
    physics = blur()
    bound = physics.norm_bounds(physics.A(x, params), params)
    power = operator_norm(physics, x, params, iterations=1000, tol=1e-12)
    assert bound.sigma_min == 0.0
    l1 = float(params["kernel"].abs().sum((-2, -1)).max())  # non-negative kernels: max |k̂| = ‖k‖₁
    assert power - 1e-9 <= bound.norm <= l1 + 1e-12


def test_contract_checks_pass_with_drawn_kernels():
    """``retune_cli.testing.check_physics`` (one motion kernel per image): adjoint, normal, norm bound."""
    checks = testing.check_physics(ChannelBlur([0.05], kernel="motion", kernel_size=7, boundary="valid"))
    assert [c.name for c in checks] == ["adjoint", "normal", "norm_bounds"]
    assert all(c.passed for c in checks), [str(c) for c in checks]


def test_shapes_start_baseline_and_window():
    """The image is y larger by (h − 1, w − 1); start and baseline are y reflected onto it, y in their window."""
    physics = blur()
    clean = torch.rand(2, 3, 20, 23, generator=torch.Generator().manual_seed(0))
    obs = physics.simulate(clean, seed=3)
    assert obs.y.shape == (2, 3, 16, 19) and obs.params["kernel"].shape[-2:] == (5, 5)
    assert physics.image_size(obs.y) == (20, 23)
    start, baseline = physics.start(obs.y, obs.params), physics.baseline(obs)
    assert start.shape == baseline.shape == clean.shape
    assert torch.equal(physics.observed_window(start, obs.params), obs.y)
    assert torch.equal(window(baseline, (5, 5)), obs.y)
    assert torch.equal(start[..., 0, 2:-2], obs.y[..., 2, :])  # reflected about the first row: dcb|abcd
    for other in ("reflect", "circular"):
        assert blur(other).image_size(obs.y) == (16, 19) and blur(other).observed_window(clean) is clean


def test_refusals_name_the_keys():
    physics = blur()
    with pytest.raises(ValueError, match="the 9×5 image is not larger than the 5×5 blur kernel"):
        physics.check_fits((1, 3, 5, 9))
    physics.check_fits((1, 3, 6, 6))
    with pytest.raises(InputError, match="train.crop must fit physics deblur.*not larger than the 25×25"):
        resolve("deblur-wavelet", {"physics.boundary": "valid", "train.crop": 24, "model.levels": 2})
    with pytest.raises(InputError, match="model.scheme drs needs the exact proximal.*physics.boundary valid"):
        resolve("deblur-wavelet-drs", {"physics.boundary": "valid"})
    z = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="boundary valid has no exact proximal operator.*model.scheme fb or pd"):
        physics.prox_data(z, z, torch.tensor(0.5), {"kernel": torch.ones(1, 1, 3, 3) / 9})
    with pytest.raises(ValueError, match="circular, reflect, replicate, valid, not 'zero'"):
        ChannelBlur([0.05], boundary="zero")


def test_fb_solution_is_optimal():
    """Wavelet fb to convergence on a 12×14 image (y 10×12): x̂ minimizes ½‖A x − y‖² + ‖θ D x‖_{1,2} — no
    perturbation lowers it, and the data gradient ``D Aᵀ(A x̂ − y)`` vanishes on the unpenalized band."""
    config = resolve("deblur-wavelet", {"physics.boundary": "valid", "physics.blur_width": 3, "model.levels": 1,
                                        "physics.sigma": [0.02], "train.crop": 16, "model.init_lambda": 0.02})
    scheme = build_scheme(config).double()
    coarse = rand(1, 3, 4, 4, seed=0)
    clean = F.interpolate(coarse, size=(12, 14), mode="bilinear", align_corners=False)
    obs = scheme.physics.simulate(clean, seed=1)
    assert obs.y.shape[-2:] == (10, 12)
    physics, prior = scheme.physics, scheme.theta
    with torch.no_grad():
        solution = restore(scheme, obs, K=10, max_restarts=3000, tol=1e-11)
        x = solution.x
        assert x.shape == clean.shape and solution.residual <= 1e-11

        def objective(v: torch.Tensor) -> torch.Tensor:
            return 0.5 * (physics.A(v, obs.params) - obs.y).pow(2).sum() + prior.value(v)

        drop, worst = _local_minimum(objective, x, _perturbations(x, 0))
        gradient = physics.A_adjoint(physics.A(x, obs.params) - obs.y, obs.params)
        approximation = prior.transform.analysis(gradient).approx
    assert drop <= 1e-12, worst
    assert float(approximation.abs().max()) <= 1e-8 * float(gradient.abs().max()) + 1e-10


def test_train_and_eval_with_valid_boundary(tmp_path, image_folder):
    out = tmp_path / "run"
    ok(invoke("train", "--preset", "deblur-wavelet", "--set", "physics.boundary=valid", "--set", "physics.blur_width=5",
              *FAST, "--steps", 1, "--data", image_folder, "--out", out))
    assert yaml.safe_load((out / "config.yaml").read_text())["physics"]["boundary"] == "valid"
    result = ok(invoke("eval", out / "theta.safetensors", "--data", image_folder, "--device", "cpu", "--T", 1))
    mean = re.search(r"mean\D+([\d.]+) / [\d.]+\D+([\d.]+) /", result.output)
    assert mean and all(10 < float(v) < 60 for v in mean.groups()), result.output


def valid_blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``image`` (H×W×3) convolved as ``scipy.signal.convolve2d(mode='valid')`` does, per channel (numpy)."""
    h, w = kernel.shape
    flipped, (rows, cols) = kernel[::-1, ::-1], (image.shape[0] - h + 1, image.shape[1] - w + 1)
    return sum(flipped[i, j] * image[i:i + rows, j:j + cols] for i in range(h) for j in range(w))


def test_restore_a_boundary_free_blur_writes_the_photo_size(tmp_path):
    """A photo blurred 'valid' outside retune (48×40 → 42×34): restored on the 48×40 grid, written 42×34, scored
    against the clean window; better than assuming reflected edges."""
    checkpoint = save_checkpoint(tmp_path / "theta.safetensors", "deblur-wavelet", **{"physics.blur_width": 5})
    yy, xx = np.mgrid[-3:4, -3:4]
    kernel = np.exp(-(yy**2 + xx**2) / (2 * 1.5**2))
    np.save(tmp_path / "k.npy", kernel / kernel.sum())
    clean = smooth_image(np.random.default_rng(0), 40, 48) / 255.0
    blurred = valid_blur(clean, kernel / kernel.sum()) + np.random.default_rng(1).normal(0, 0.01, (34, 42, 3))
    Image.fromarray((np.clip(blurred, 0, 1) * 255).round().astype(np.uint8)).save(tmp_path / "blurred.png")
    Image.fromarray((clean[3:-3, 3:-3] * 255).round().astype(np.uint8)).save(tmp_path / "clean.png")
    scores = {}
    for boundary in ("valid", "reflect"):
        out = tmp_path / f"{boundary}.png"
        result = ok(invoke("restore", checkpoint, tmp_path / "blurred.png", "--kernel", tmp_path / "k.npy",
                           "--boundary", boundary, "-o", out, "--reference", tmp_path / "clean.png", "--T", 5,
                           "--device", "cpu"))
        assert f"physics.boundary {boundary} for this restore" in result.output
        assert read_image(out).shape == (3, 34, 42)
        scores[boundary] = float(re.search(r"PSNR (\S+) dB", result.output).group(1))
    print(scores)
    assert scores["valid"] > scores["reflect"] + 1, scores


def test_api_restores_with_a_kernel_of_another_size_at_the_observation_size(tmp_path):
    """The Python API on a valid checkpoint (kernel 5×5 in its config) with a 7×7 kernel: the image grid follows
    the kernel given, and the result is y's size."""
    import retune_cli

    checkpoint = save_checkpoint(tmp_path / "theta.safetensors", "deblur-wavelet",
                                 **{"physics.blur_width": 5, "physics.boundary": "valid"})
    restorer = retune_cli.load(checkpoint, T=2)
    y = torch.rand(3, 30, 26)
    x = restorer(y, params={"kernel": torch.ones(1, 3, 7, 7) / 49})
    assert x.shape == y.shape and bool(torch.isfinite(x).all())
