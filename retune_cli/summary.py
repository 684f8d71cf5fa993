"""``retune show``: what a checkpoint learned, in natural units.

Parameters are stored as logarithms (``theta.log_X``); shown as ``X = exp(log_X)``: λ_j per scale,
Λ_b per band (× channel), PnP's σ and τ. For wavelet schemes also the weights themselves,
``θ_{j,b(,c)} = λ_j √Λ_{b(,c)}`` per scale j (1 = finest) × band (H, V, D) (× channel R, G, B). ``start``
says where θ started: ``--init`` (another run's θ), PnP's (σ, τ), or the wavelet ``model.init``; for jfb
and deq with the run's log.csv, ``fixed point`` counts the steps that stopped at ``train.max_restarts``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .components import prior_class
from .config import Config
from .models import component_options
from .restart_cap import capped_steps
from .restore import load_model
from .rundir import LOG, read_log

BANDS = ("H", "V", "D")
CHANNELS = ("R", "G", "B")
GREEK = {"lambda": "λ", "Lambda": "Λ", "sigma": "σ", "tau": "τ"}


@dataclass(frozen=True)
class Summary:
    path: Path
    facts: dict[str, str]  # preset, physics, model, K, T, gradient, step, train PSNR, …
    values: dict[str, torch.Tensor]  # natural-unit parameters: "λ_j" → (levels,), "σ" → (1,), …
    theta: torch.Tensor | None  # wavelet weights (scales, bands, channels), scale 1 (finest) first
    log: list[dict]  # the run folder's log.csv rows, when it is beside the checkpoint
    denoiser_tensors: int  # denoiser weight tensors the checkpoint carries (learned denoiser)


def _values(scheme: torch.nn.Module) -> dict[str, torch.Tensor]:
    """θ in natural units (the prior's ``describe()``), named in Greek (λ_j, Λ_b, σ, τ)."""
    out = {}
    for base, values in scheme.theta.describe().items():
        label = GREEK.get(base, base) + {"lambda": "_j (j = 1 … J, finest first)", "Lambda": "_b"}.get(base, "")
        out[label] = values.flip(0) if base == "lambda" else values  # stored coarsest first
    return out


def wavelet_theta(scheme: torch.nn.Module) -> torch.Tensor | None:
    """θ ``(scales, 3, C)`` (C = 1 for θ_B), finest scale first, or None for a scheme without weights."""
    diagonal = getattr(scheme.theta, "diagonal", None)
    if diagonal is None:
        return None
    per_level = [d.detach().double().cpu()[0, :, :, 0, 0].t() for d in diagonal()]  # (3, C), coarsest first
    return torch.stack(per_level[::-1])


def _start(config: Config) -> str:
    """Where θ started: another run (``train.init``), PnP's (σ, τ), the prior's noise start or its
    ``init_lambda`` (``model.init``)."""
    m = config.model
    prior = prior_class(m.prior)
    if config.train.init:
        recorded = f" (σ = {m.init_sigma:g}, τ = {m.init_tau:g})" if prior.learns_step else ""
        return f"--init {config.train.init}{recorded}"
    if prior.learns_step:
        return f"σ = {m.init_sigma:g}, τ = {m.init_tau:g}"
    if m.init == "paper" or "noise start" not in prior.capabilities():
        return f"paper: λ_j = {m.init_lambda:g}, Λ = 1" if "levels" in prior.options else \
            f"init_lambda = {m.init_lambda:g}"
    return f"noise: the {m.prior} prior's noise start from physics.sigma"


def summarize(path: Path, trust_code: bool = False) -> Summary:
    """Load ``path`` and describe it (its run folder's log.csv too, when there)."""
    model = load_model(path, "cpu", trust_code)
    c, ck = model.config, model.checkpoint
    facts = {
        "preset": c.preset, "physics": f"{c.physics.name}, σ = {', '.join(f'{s:g}' for s in c.physics.sigma)}",
        "model": f"{c.model.prior} {c.model.scheme}" + "".join(
            f", {k} {v}" for k, v in component_options(c.model, prior_class(c.model.prior)).items()
            if k not in ("init_lambda", "init_sigma", "init_tau", "denoiser")),
        "K, T": f"{c.train.K}, {c.train.T}", "gradient": c.train.gradient, "step": str(ck.step),
        "train PSNR": f"{ck.train_psnr:.2f} dB", "data": str(ck.data or "built-in samples or images in memory"),
        "start": _start(c),
    }
    log = read_log(Path(path).parent / LOG)
    capped = capped_steps(c.train, log)
    if capped is not None and log:
        facts["fixed point"] = capped.fact()
    denoiser = sum(1 for k in ck.parameters if k.startswith("denoiser."))
    return Summary(Path(path), facts, _values(model.scheme), wavelet_theta(model.scheme), log, denoiser)
