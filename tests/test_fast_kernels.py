"""The fast kernels of the wavelet step (issue 12, part 1): both synthesis paths against PyWavelets, the group
soft-threshold's hand-written backward against autograd's, and the graph-free step against the recorded one."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from retune_cli.config import resolve
from retune_cli.core import launch, wavelets
from retune_cli.core.priors import group_soft_threshold
from retune_cli.core.pytree import leaves
from retune_cli.core.wavelets import Coefficients, WaveletTransform
from retune_cli.models import build_scheme

# sym8 on sides shorter than its filter exercises the multiple-wrap periodization of both paths
CASES = [("db4", 4, 48, 80), ("haar", 3, 24, 40), ("sym8", 3, 16, 40), ("db3", 2, 20, 12), ("db4", 1, 6, 10)]
IDS = [f"{w}-J{j}-{h}x{wd}" for w, j, h, wd in CASES]
PATHS = {"separable": 0, "dense": 10**12, "gpu": 0}  # wavelets.SMALL_BANDS forcing one synthesis path at every
# level; "gpu": the paths a launch-bound device takes (gather periodization, dense synthesis), run on the CPU
LAYOUTS = {"bands": (2,), "bands-channels": (1, 2)}

pytestmark = pytest.mark.filterwarnings("ignore:Level value of .* is too high:UserWarning")


def _random_coefficients(t: WaveletTransform, shape) -> Coefficients:
    n, ch, h, w = shape
    details = tuple(torch.randn(n, ch, 3, h // 2**j, w // 2**j, dtype=torch.float64) for j in range(t.levels, 0, -1))
    return Coefficients(torch.randn(n, ch, h // 2**t.levels, w // 2**t.levels, dtype=torch.float64), details)


def _waverec2(c: Coefficients, wavelet: str) -> np.ndarray:
    ref = [c.approx.numpy()] + [tuple(d[:, :, b].numpy() for b in range(3)) for d in c.details]
    return pywt.waverec2(ref, wavelet, mode="periodization", axes=(-2, -1))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("wavelet", "levels", "h", "w"), CASES, ids=IDS)
def test_both_synthesis_paths_match_pywavelets_and_invert_the_analysis(monkeypatch, path, wavelet, levels, h, w):
    monkeypatch.setattr(wavelets, "SMALL_BANDS", PATHS[path])
    if path == "gpu":
        monkeypatch.setattr(launch, "launch_bound", lambda t: True)
    t = WaveletTransform(wavelet, levels)
    c = _random_coefficients(t, (2, 3, h, w))
    np.testing.assert_allclose(t.synthesis(c).numpy(), _waverec2(c, wavelet), rtol=0, atol=1e-10)
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    assert torch.allclose(t.synthesis(t.analysis(x)), x, rtol=0, atol=1e-10)


def test_levels_on_either_side_of_the_threshold():
    """128² with a batch of 2: the three coarse levels take the dense path, the finest the separable one."""
    t = WaveletTransform("db4", 4)
    sizes = [2 * (128 // 2**j) ** 2 for j in range(4, 0, -1)]
    assert min(sizes) < wavelets.SMALL_BANDS <= max(sizes)
    c = _random_coefficients(t, (1, 2, 128, 128))
    np.testing.assert_allclose(t.synthesis(c).numpy(), _waverec2(c, "db4"), rtol=0, atol=1e-10)
    x = torch.rand(1, 2, 128, 128, dtype=torch.float64)
    back = t.synthesis(t.analysis(x.float())).double()
    assert torch.allclose(back, x, rtol=0, atol=1e-5)  # float32 through both paths


def _reference_prox(z: torch.Tensor, level, dims) -> torch.Tensor:
    """The group soft-threshold written with plain autograd operations (the previous implementation)."""
    eps = torch.finfo(z.dtype).tiny ** 0.5
    return z * torch.clamp(1 - level * torch.rsqrt(torch.sum(z * z, dim=dims, keepdim=True) + eps), min=0)


def _groups(dims, seed: int = 0) -> torch.Tensor:
    """Details with groups below, near and above a threshold of 1, and one all-zero group."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 3, 3, 4, 5, generator=g, dtype=torch.float64)
    z = z * (0.2 + 2 * torch.rand(2, 1, 1, 4, 5, generator=g, dtype=torch.float64))
    z[..., 0, 0] = 0
    return z


@pytest.mark.parametrize("weights", LAYOUTS)
def test_prox_backward_passes_gradcheck_and_gradgradcheck(weights):
    dims = LAYOUTS[weights]
    z = _groups(dims).requires_grad_(True)
    level = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)

    def prox(z, level):
        return group_soft_threshold(z, level, dims)

    assert torch.autograd.gradcheck(prox, (z, level))
    assert torch.autograd.gradgradcheck(prox, (z, level))


@pytest.mark.parametrize("weights", LAYOUTS)
def test_prox_values_and_gradients_equal_the_plain_autograd_ones(weights):
    dims = LAYOUTS[weights]
    g = torch.Generator().manual_seed(1)
    per_group = 0.5 + torch.rand((1, 1, 1, 4, 5) if dims == (1, 2) else (1, 3, 1, 4, 5), generator=g,
                                 dtype=torch.float64)
    for level in (torch.tensor(0.9, dtype=torch.float64), per_group):
        results = []
        for prox in (group_soft_threshold, _reference_prox):
            z, lv = _groups(dims).requires_grad_(True), level.clone().requires_grad_(True)
            out = prox(z, lv, dims)
            out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype))
            results.append((out.detach(), z.grad, lv.grad))
        for ours, reference in zip(*results):
            assert torch.allclose(ours, reference, rtol=1e-12, atol=1e-14)


def test_prox_in_place_without_autograd():
    z = _groups((2,))
    expected = _reference_prox(z, 0.9, (2,))
    with torch.no_grad():
        out = group_soft_threshold(z, 0.9, (2,), inplace=True)
    assert out.data_ptr() == z.data_ptr() and torch.equal(z, expected)
    with pytest.raises(RuntimeError, match="autograd off"):
        group_soft_threshold(_groups((2,)).requires_grad_(True), 0.9, (2,), inplace=True)


def test_prox_level_must_be_constant_within_groups():
    with pytest.raises(ValueError, match="constant within each group"):
        group_soft_threshold(_groups((2,)), torch.ones(1, 1, 3, 1, 1, dtype=torch.float64), (2,))


@pytest.mark.parametrize("preset", ["inpaint-wavelet", "deblur-wavelet", "denoise-wavelet-bc"])
def test_graph_free_step_equals_the_recorded_step(preset):
    """The in-place graph-free step (restarts) gives exactly the numbers of the step autograd records."""
    scheme = build_scheme(resolve(preset, {"physics.blur_width": 5} if preset.startswith("deblur") else {})).double()
    clean = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        obs = scheme.physics.simulate(clean, 0)
        ctx = scheme.prepare(obs)
        u = scheme.restart(scheme.init(ctx), ctx, 2)
        free = scheme.step(u, ctx)
    recorded = scheme.step(u, scheme.prepare(obs))
    assert recorded.details.requires_grad
    for a, b in zip(leaves(free), leaves(recorded)):
        assert torch.equal(a, b.detach())


def test_a_launch_bound_step_dispatches_under_100_operations_and_a_training_step_reads_back_two_values(monkeypatch):
    """Issue 22: on a GPU each operation is a kernel launch and each read waits for the queue. With the policy of
    a launch-bound device (forced here), the elementary inpainting step on 2×3×64² dispatches ≤ 100 operations
    (views included) and a ReTune training step reads back 2 values whatever T (Adam's host-side counters apart)."""
    from retune_cli.data import ImageFolder, training_batch
    from retune_cli.models import solve_options
    from retune_cli.op_counts import count_ops, host_reads
    from retune_cli.train import new_state, train_step

    monkeypatch.setattr(launch, "launch_bound", lambda t: True)
    settings = resolve("inpaint-wavelet", {"train.crop": 64, "train.batch_size": 2})
    state = new_state(settings, "cpu", None)
    clean = training_batch(ImageFolder.open(None), 0, 2, 64, 0)
    with torch.no_grad():
        obs = state.scheme.physics.simulate(clean, 1)
        ctx = state.scheme.prepare(obs)
        u = state.scheme.step(state.scheme.init(ctx), ctx)
        compute, views = count_ops(lambda: state.scheme.step(u, ctx))
    assert sum(compute.values()) + sum(views.values()) <= 100 and compute["convolution"] == 8
    for T in (1, 5):
        options = solve_options(settings.train, K=3, T=T)
        with host_reads() as reads:
            train_step(state, clean, obs, options, "retune")
        assert len(reads) == 2, reads
