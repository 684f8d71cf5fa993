"""Opponent colours for analysis priors (``model.colour``, :mod:`retune_cli.core.colour`): the transform is
orthonormal, the filter prior's operator stays exactly adjoint with the same norm bound, the noise start and
``--sigma`` scaling follow the noise of each opponent channel, and a bad value names the key."""

from __future__ import annotations

import math

import pytest
import torch
from reliability import refused_training

from retune_cli.config import resolve
from retune_cli.core.colour import OPPONENT, colour_noise, from_colour, to_colour
from retune_cli.core.filters import NOISE_START, FilterPrior
from retune_cli.core.tv import TVPrior
from retune_cli.core.wavelet_union import WaveletUnionPrior
from retune_cli.errors import InputError
from retune_cli.models import build_scheme


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_opponent_transform_is_orthonormal_and_inverted_by_its_adjoint():
    o = torch.tensor(OPPONENT, dtype=torch.float64)
    assert torch.allclose(o @ o.T, torch.eye(3, dtype=torch.float64), atol=1e-15)
    x = randn(2, 3, 5, 7)
    z = to_colour(x, "opponent")
    assert torch.allclose(from_colour(z, "opponent"), x, atol=1e-14)
    assert float(torch.linalg.vector_norm(z)) == pytest.approx(float(torch.linalg.vector_norm(x)), rel=1e-13)
    assert torch.allclose(z[:, 0], x.sum(1) / math.sqrt(3))  # channel 0: luminance
    assert to_colour(x, "rgb") is x and from_colour(x, "rgb") is x


def test_opponent_noise_levels():
    assert colour_noise([0.1], "opponent") == pytest.approx((0.1, 0.1, 0.1))
    s = (0.1, 0.2, 0.3)
    expected = tuple(math.sqrt(sum(o * o * v * v for o, v in zip(row, s))) for row in OPPONENT)
    assert colour_noise(s, "opponent") == pytest.approx(expected)
    assert colour_noise(s, "rgb") == s


def _perturbed(**options) -> FilterPrior:
    prior = FilterPrior(filters=8, filter_size=3, **options).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        prior.filters_raw.add_(torch.randn(prior.filters_raw.shape, generator=g, dtype=torch.float64))
        prior.log_weights.add_(0.5 * torch.randn(prior.log_weights.shape, generator=g, dtype=torch.float64))
    return prior


def test_filter_prior_in_opponent_colours_is_adjoint_and_bounded():
    prior = _perturbed(colour="opponent")
    x = randn(2, 3, 9, 11)
    (u,) = prior.analysis(x)
    z = randn(*u.shape, seed=2)
    with torch.no_grad():
        lhs, rhs = float((u * z).sum()), float((x * prior.analysis_adjoint([z])).sum())
    assert lhs == pytest.approx(rhs, rel=1e-12)
    v = randn(1, 3, 32, 32, seed=3)
    for _ in range(150):
        v = prior.analysis_adjoint(prior.analysis(v))
        v = v / torch.linalg.vector_norm(v)
    measured = float(torch.linalg.vector_norm(prior.analysis(v)[0]))
    assert measured <= float(prior.analysis_norm()) <= 1.1 * measured
    rgb = _perturbed()  # same θ, RGB: the responses differ by the transform alone
    assert torch.allclose(u, rgb.analysis(to_colour(x, "opponent"))[0], atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda colour: TVPrior("isotropic", 0.05, colour=colour),
    lambda colour: WaveletUnionPrior("haar,db4", levels=2, weights="bands-channels", colour=colour),
], ids=["tv", "wavelet-union"])
def test_other_analysis_priors_in_opponent_colours(make):
    """TV and the union: exact adjoint in opponent colours, responses = the RGB prior's on O x, the same
    norm bound, and noise starts per opponent channel."""
    opponent, rgb = make("opponent").double(), make("rgb").double()
    x = randn(2, 3, 16, 16)
    u = opponent.analysis(x)
    z = [randn(*b.shape, seed=2 + i) for i, b in enumerate(u)]
    with torch.no_grad():
        lhs = float(sum((a * b).sum() for a, b in zip(u, z)))
        rhs = float((x * opponent.analysis_adjoint(z)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-12)
    for a, b in zip(u, rgb.analysis(to_colour(x, "opponent"))):
        assert torch.allclose(a, b, atol=1e-12)
    assert float(opponent.analysis_norm()) == pytest.approx(float(rgb.analysis_norm()))
    noise = [0.1, 0.2, 0.3]
    opponent.init_from_noise(noise, 16 * 16)
    rgb.init_from_noise(list(colour_noise(noise, "opponent")), 16 * 16)
    for a, b in zip(opponent.parameters(), rgb.parameters()):
        assert torch.allclose(a, b)


def test_filter_prior_noise_start_and_scaling_in_opponent_colours():
    prior = FilterPrior(filters=4, filter_size=3, colour="opponent")
    prior.init_from_noise([0.1, 0.2, 0.3], 64 * 64)
    levels = torch.tensor(colour_noise([0.1, 0.2, 0.3], "opponent"), dtype=torch.float32)
    assert torch.allclose(prior.weights(), NOISE_START["huber"] * levels.expand(4, 3), rtol=1e-5)
    before = prior.weights().detach().clone()
    factors, _ = prior.scale_noise([0.1, 0.1, 0.1], [0.2, 0.2, 0.2])
    assert factors == pytest.approx((2.0, 2.0, 2.0))
    assert torch.allclose(prior.weights(), 2 * before, rtol=1e-5)


def test_bad_colour_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="model.colour"):
        FilterPrior(colour="lab")
    with pytest.raises(ValueError, match="3 channels"):
        FilterPrior(colour="opponent", channels=1)
    with pytest.raises(InputError, match="model.prior filters: model.colour"):
        build_scheme(resolve("denoise-filters", {"model.colour": "hsv"}))


@pytest.mark.parametrize(("preset", "option"), [("denoise-filters", "model.colour=hsv"),
                                                ("denoise-tv", "model.colour=lab"),
                                                ("denoise-filters", "model.filter_size=4")])
def test_cli_refuses_a_bad_prior_option_in_one_line(preset, option, image_folder, tmp_path):
    refused_training(image_folder, tmp_path / "run", "--preset", preset, "--set", option,
                     fragments=(option.split("=")[0],))


def test_show_labels_the_opponent_channels(tmp_path):
    """``retune show`` (the torch-free path and the engine's) names θ's channels after model.colour."""
    from reliability import invoke, ok, save_checkpoint

    from retune_cli.summary import summarize

    path = save_checkpoint(tmp_path / "theta.safetensors", "denoise-tv", **{"model.colour": "opponent"})
    output = ok(invoke("show", path)).output
    assert "lum:" in output and "R−B:" in output and "R:" not in output
    assert summarize(path).channels == ("lum", "R−B", "M−G")
    rgb = save_checkpoint(tmp_path / "rgb.safetensors", "denoise-tv")
    assert "R:" in ok(invoke("show", rgb)).output and summarize(rgb).channels == ("R", "G", "B")
