"""The prior contract and the scheme registry: capabilities, refused combinations naming both keys, the
wavelet and PnP priors behind it (old configs and checkpoint names), and the contract repairs (norm
bounds over a whole batch, physics that need a user operator must name it, steps out of range told
apart from other errors, compare-grads' note on non-contractive schemes)."""

from __future__ import annotations

import pytest
import torch
import yaml

from retune_cli.commands.gradients import contraction_note
from retune_cli.components import composed_class, prior_class
from retune_cli.config import from_yaml, resolve
from retune_cli.core.composed import DouglasRachford, ForwardBackward
from retune_cli.core.physics import Physics, register_physics
from retune_cli.core.prior import Prior, register_prior
from retune_cli.core.schemes import NoValidStep, WaveletFB, optimal_step
from retune_cli.errors import InputError
from retune_cli.models import build_scheme, trainable


def test_capabilities_come_from_the_methods_a_prior_overrides():
    assert prior_class("wavelet").capabilities() == {"prox", "noise start"}
    assert prior_class("pnp").capabilities() == {"prox"}

    class Analysis(Prior):
        name = "test-analysis"

        def analysis(self, x):
            return [x]

        def analysis_adjoint(self, z):
            return z[0]

        def analysis_norm(self):
            return torch.tensor(1.0)

        def conjugate_prox(self, z, sigma):
            return [t.clamp(-1, 1) for t in z]

    assert Analysis.capabilities() == {"analysis"}
    with pytest.raises(TypeError, match="neither prox nor"):
        register_prior(type("Nothing", (Prior,), {"name": "nothing"}))


def test_the_registry_composes_and_refuses_naming_both_keys():
    assert composed_class("fb", "wavelet") is WaveletFB  # the paper's scheme, specialized to the pair
    assert composed_class("fb", "pnp") is ForwardBackward
    assert composed_class("drs", "wavelet", "deblur") is DouglasRachford
    with pytest.raises(ValueError, match=r"model.scheme pd needs a prior with analysis.*model.prior wavelet"):
        composed_class("pd", "wavelet")
    with pytest.raises(InputError, match=r"model.scheme pd .*model.prior wavelet"):
        resolve("denoise-wavelet-b", {"model.scheme": "pd"})
    with pytest.raises(InputError, match="model.prior must be one of"):
        resolve("denoise-wavelet-b", {"model.prior": "nonesuch"})


def test_unknown_model_keys_are_named_with_what_is_known():
    with pytest.raises(InputError, match=r"unknown key model.colour; known: .*levels"):
        resolve("denoise-wavelet-b", {"model.colour": 1})


def test_configs_written_with_model_name_still_load():
    """Checkpoints of earlier versions store ``model.name``: it reads as ``model.prior``."""
    data = yaml.safe_load(resolve("inpaint-pnp").to_yaml())
    data["model"]["name"] = data["model"].pop("prior")
    config = from_yaml(yaml.safe_dump(data), "old checkpoint")
    assert config.model.prior == "pnp"


def test_pnp_checkpoint_names_are_unchanged():
    """θ = (σ, τ) as ``theta.log_sigma``/``theta.log_tau``; the denoiser's weights as ``denoiser.*``, stored
    and trained only when learned."""
    from retune_cli.checkpoint import learned_parameters

    scheme = build_scheme(resolve("inpaint-pnp"))
    assert set(learned_parameters(scheme)) == {"theta.log_sigma", "theta.log_tau"}
    assert set(trainable(scheme)) == {"theta.log_sigma", "theta.log_tau"}
    learning = build_scheme(resolve("inpaint-pnp", {"model.learn": "denoiser"}))
    names = set(trainable(learning))
    assert names and all(n.startswith("denoiser.") for n in names)
    assert {"theta.log_sigma", "theta.log_tau"} < set(learned_parameters(learning))


class _Scaled(Physics):
    """``A x = s_n x`` with one factor per image (parameter ``scale``): a per-image operator."""

    name = "test-scaled"

    def A(self, x, params=None):
        return x * params["scale"].view(-1, 1, 1, 1)

    def A_adjoint(self, y, params=None):
        return self.A(y, params)


def test_default_norm_bounds_take_the_whole_batch():
    physics = _Scaled([0.0])
    like = torch.zeros(3, 1, 4, 4, dtype=torch.float64)
    params = {"scale": torch.tensor([0.5, 3.0, 1.0], dtype=torch.float64)}
    assert physics.norm_bounds(like, params).norm == pytest.approx(3.0, rel=1e-6)


def test_a_physics_that_needs_a_user_operator_must_name_it():
    with pytest.raises(TypeError, match="needs_user_operator"):
        register_physics(type("NoFlag", (_Scaled,), {"name": "no-flag", "needs_user_operator": True}))


def test_no_valid_step_is_its_own_error():
    with pytest.raises(NoValidStep):
        optimal_step(torch.tensor(1.0), torch.tensor(0.0))
    assert issubclass(NoValidStep, ValueError)


def test_compare_grads_says_when_phi_k_does_not_contract():
    assert contraction_note([{"K": 10, "theory": 0.5, "measured": 0.4}]) is None
    note = contraction_note([{"K": 10, "theory": float("nan"), "measured": 0.998}])
    assert "not a contraction" in note and "K=10" in note and "anderson" in note
