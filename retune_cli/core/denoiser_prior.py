"""A denoiser as a prior (plug-and-play, paper §4.2): ``prox_{τg}(x) ≈ D_σ(x)``.

θ = (σ, τ) — the denoiser's noise level and the scheme's step, learned as logarithms — or the
denoiser's weights (``learn: denoiser``), the other part frozen. The step τ is θ's, not a rule's
(``learns_step``); no contraction factor is known for a network. The network comes from the caller
(:func:`retune_cli.denoisers.load_denoiser` for a config), so this module reads no file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .prior import Prior

LEARN = ("parameters", "denoiser")


class DenoiserPrior(Prior):
    """``prox_{τg}(x) = D_σ(x)`` with ``D_σ(x, σ)`` a denoiser network (``denoiser``)."""

    name = "pnp"
    options = {"denoiser": "builtin", "learn": "parameters", "init_sigma": 0.2, "init_tau": 0.5}
    network = "denoiser"
    learns_step = True
    multiple = 8  # DRUNet's three downsamplings

    def __init__(self, denoiser: nn.Module, learn: str = "parameters", init_sigma: float = 0.2,
                 init_tau: float = 0.5):
        super().__init__()
        if init_sigma <= 0 or init_tau <= 0:
            raise ValueError("the PnP σ and τ must be positive")
        if learn not in LEARN:
            raise ValueError(f"learn must be one of {', '.join(LEARN)}, not {learn!r}")
        self.log_sigma = nn.Parameter(torch.tensor([math.log(init_sigma)]))
        self.log_tau = nn.Parameter(torch.tensor([math.log(init_tau)]))
        self.denoiser = denoiser
        frozen = self.denoiser.parameters() if learn == "parameters" else [self.log_sigma, self.log_tau]
        for p in frozen:
            p.requires_grad_(False)

    def prox(self, x: torch.Tensor, tau) -> torch.Tensor:
        """``D_σ(x)`` (τ is the scheme's step; the denoiser's strength is σ)."""
        return self.denoiser(x, torch.exp(self.log_sigma).to(x).expand(x.shape[0]))

    def step(self) -> torch.Tensor:
        return torch.exp(self.log_tau)

    def scale_noise(self, trained: Sequence[float], given: Sequence[float]) -> tuple[tuple[float, ...], str]:
        """``σ' = σ · rms(s') / rms(s)``: one denoiser strength for all channels."""
        rms = lambda v: math.sqrt(sum(s * s for s in v) / len(v))  # noqa: E731
        factor = rms(given) / rms(trained)
        with torch.no_grad():
            self.log_sigma.add_(math.log(factor))
        return (factor,), "the denoiser's σ"

    def describe(self) -> dict[str, torch.Tensor]:
        return {"sigma": torch.exp(self.log_sigma.detach()).double().cpu(),
                "tau": torch.exp(self.log_tau.detach()).double().cpu()}
