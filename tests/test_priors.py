"""Weighted ℓ2,1 prior: the group soft-threshold is the prox, θ has the paper's values (eqs. 44–45)."""

from __future__ import annotations

import math

import pytest
import torch

from retune_cli.core.priors import WaveletWeights, group_soft_threshold, weighted_l21

LAYOUTS = ["bands", "bands-channels"]


def group_norm(z: torch.Tensor, dims) -> torch.Tensor:
    """Euclidean norm of each group, written here (independent of the package's helper)."""
    return torch.sqrt(torch.sum(z * z, dim=dims, keepdim=True))


def _details(n=2, c=3, h=6, w=5) -> torch.Tensor:
    return torch.randn(n, c, 3, h, w, dtype=torch.float64)


def _threshold_between_groups(z: torch.Tensor, dims) -> float:
    """A level that zeroes some groups and keeps others (the median group norm)."""
    return float(group_norm(z, dims).median())


def _objective(p: torch.Tensor, z: torch.Tensor, tau: float, dims) -> torch.Tensor:
    return 0.5 * torch.sum((p - z) ** 2) + tau * group_norm(p, dims).sum()


@pytest.mark.parametrize("weights", LAYOUTS)
def test_group_dims(weights):
    expected = {"bands": (2,), "bands-channels": (1, 2)}[weights]
    assert WaveletWeights(4, weights).group_dims == expected


@pytest.mark.parametrize("weights", LAYOUTS)
def test_prox_optimality_condition(weights):
    """(z − p)/τ ∈ ∂‖p‖_{1,2}: = p_g/‖p_g‖ where p_g ≠ 0, and ‖z_g‖ ≤ τ where p_g = 0."""
    dims = WaveletWeights(4, weights).group_dims
    z = _details()
    tau = _threshold_between_groups(z, dims)
    p = group_soft_threshold(z, tau, dims)
    p_norm, z_norm = group_norm(p, dims), group_norm(z, dims)
    kept = (p_norm > 0).expand_as(p)
    zeroed = p_norm == 0
    assert kept.any() and zeroed.any(), "the test needs both kinds of groups"
    subgradient = tau * p / p_norm.clamp_min(1e-300)
    assert torch.allclose((z - p)[kept], subgradient[kept], rtol=0, atol=1e-12)
    assert torch.all(z_norm[zeroed] <= tau)
    assert torch.all(p[zeroed.expand_as(p)] == 0)


@pytest.mark.parametrize("weights", LAYOUTS)
def test_prox_groups_are_the_layout_groups(weights):
    """Zeroing a group is decided by the norm over the layout's dims only (bands, or bands and channels)."""
    dims = WaveletWeights(4, weights).group_dims
    z = torch.zeros(1, 3, 3, 1, 1, dtype=torch.float64)
    z[0, 0, :, 0, 0] = 1.0  # channel 0: group norm sqrt(3) on its own
    z[0, 1, 0, 0, 0] = 0.5  # channel 1: 0.5 on its own
    p = group_soft_threshold(z, 1.0, dims)
    if weights == "bands":
        assert torch.all(p[0, 1] == 0)  # 0.5 ≤ 1: zeroed
        assert torch.allclose(p[0, 0, :, 0, 0], torch.full((3,), 1 - 1 / math.sqrt(3), dtype=torch.float64))
    else:  # one group of norm sqrt(3.25) over all channels and bands
        factor = 1 - 1 / math.sqrt(3.25)
        assert torch.allclose(p, factor * z)


@pytest.mark.parametrize("weights", LAYOUTS)
def test_prox_minimizes_the_objective(weights):
    """½‖p − z‖² + τ‖p‖_{1,2} never decreases under perturbations of p."""
    dims = WaveletWeights(4, weights).group_dims
    z = _details()
    tau = _threshold_between_groups(z, dims)
    p = group_soft_threshold(z, tau, dims)
    best = _objective(p, z, tau, dims)
    g = torch.Generator().manual_seed(1)
    for scale in (1e-6, 1e-3, 1e-1, 1.0):
        for _ in range(20):
            q = p + scale * torch.randn(p.shape, generator=g, dtype=p.dtype)
            assert _objective(q, z, tau, dims) >= best - 1e-12
    for other in (z, 0.99 * p, 1.01 * p, torch.zeros_like(p)):
        assert _objective(other, z, tau, dims) > best


def test_prox_with_tensor_level_and_zero_input():
    z = torch.zeros(1, 3, 3, 4, 4, dtype=torch.float64)
    p = group_soft_threshold(z, torch.tensor(0.3, dtype=torch.float64), (2,))
    assert torch.equal(p, z)


@pytest.mark.parametrize("weights", LAYOUTS)
def test_prox_gradient_finite_at_a_zero_group(weights):
    """Regression: sqrt's backward at an all-zero group used to give 0/0 = NaN; the prox is locally 0 there."""
    dims = WaveletWeights(4, weights).group_dims
    z = _details(1, 3, 2, 2)
    z[..., 0, 0] = 0  # one all-zero group in both layouts
    z.requires_grad_(True)
    group_soft_threshold(z, 0.5, dims).sum().backward()
    assert torch.all(torch.isfinite(z.grad))
    assert torch.all(z.grad[..., 0, 0] == 0)


def _set(weights: WaveletWeights, lambdas: torch.Tensor, Lambdas: torch.Tensor) -> None:
    with torch.no_grad():
        weights.log_lambda.copy_(lambdas.log())
        weights.log_Lambda.copy_(Lambdas.log())


def test_diagonal_bands():
    w = WaveletWeights(4, "bands").double()
    lambdas = torch.tensor([0.5, 0.2, 0.1, 0.05], dtype=torch.float64)
    Lambdas = torch.tensor([1.5, 0.7, 2.0], dtype=torch.float64)
    _set(w, lambdas, Lambdas)
    theta = w.diagonal()
    assert len(theta) == 4
    for j, t in enumerate(theta):
        t = t.detach()
        assert t.shape == (1, 1, 3, 1, 1)
        for b in range(3):
            assert math.isclose(float(t[0, 0, b, 0, 0]), float(lambdas[j] * Lambdas[b].sqrt()), rel_tol=1e-12)


def test_diagonal_bands_channels():
    w = WaveletWeights(4, "bands-channels", channels=3).double()
    lambdas = torch.tensor([0.5, 0.2, 0.1, 0.05], dtype=torch.float64)
    Lambdas = torch.tensor([[1.5, 0.7, 2.0], [0.3, 1.1, 0.9], [2.5, 0.4, 1.2]], dtype=torch.float64)  # [band, channel]
    _set(w, lambdas, Lambdas)
    for j, t in enumerate(w.diagonal()):
        t = t.detach()
        assert t.shape == (1, 3, 3, 1, 1)
        for b in range(3):
            for c in range(3):
                expected = float(lambdas[j] * Lambdas[b, c].sqrt())
                assert math.isclose(float(t[0, c, b, 0, 0]), expected, rel_tol=1e-12), (j, b, c)


def test_initial_weights():
    w = WaveletWeights(3, "bands-channels", init_lambda=0.2)
    for t in w.diagonal():
        assert torch.allclose(t.detach(), torch.full_like(t, 0.2))
    with pytest.raises(ValueError):
        WaveletWeights(3, "bands", init_lambda=0.0)
    with pytest.raises(ValueError):
        WaveletWeights(3, "scales")


def _loop_l21(details, lambdas, Lambdas, weights) -> float:
    """Paper eq. 45 (θ_B) / eq. 44 (θ_BC) written as plain loops over j, k, c, b."""
    total = 0.0
    for j, d in enumerate(details):
        n, channels, _, h, w = d.shape
        for i in range(n):
            for y in range(h):
                for x in range(w):
                    if weights == "bands":  # Σ_j λ_j Σ_{k,c} sqrt(Σ_b Λ_b w²)
                        for c in range(channels):
                            s = sum(float(Lambdas[b]) * float(d[i, c, b, y, x]) ** 2 for b in range(3))
                            total += float(lambdas[j]) * math.sqrt(s)
                    else:  # Σ_j λ_j Σ_k sqrt(Σ_{b,c} Λ_{b,c} w²)
                        s = sum(
                            float(Lambdas[b, c]) * float(d[i, c, b, y, x]) ** 2
                            for b in range(3)
                            for c in range(channels)
                        )
                        total += float(lambdas[j]) * math.sqrt(s)
    return total


@pytest.mark.parametrize("weights", LAYOUTS)
def test_weighted_l21_matches_paper_formula(weights):
    w = WaveletWeights(3, weights).double()
    lambdas = torch.tensor([0.4, 0.15, 0.07], dtype=torch.float64)
    Lambdas = torch.rand(w.log_Lambda.shape, dtype=torch.float64) + 0.5
    _set(w, lambdas, Lambdas)
    details = [torch.randn(2, 3, 3, s, s + 1, dtype=torch.float64) for s in (2, 4, 8)]
    got = float(weighted_l21(details, w.diagonal(), w.group_dims).detach())
    assert math.isclose(got, _loop_l21(details, lambdas, Lambdas, weights), rel_tol=1e-12)
