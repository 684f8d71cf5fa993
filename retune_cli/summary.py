"""``retune show``: what a checkpoint learned, in natural units.

Parameters are stored as logarithms (``theta.log_X``); shown as ``X = exp(log_X)``: λ_j per scale,
Λ_b per band (× channel), PnP's σ and τ. For wavelet schemes also the weights themselves,
``θ_{j,b(,c)} = λ_j √Λ_{b(,c)}`` per scale j (1 = finest) × band (H, V, D) (× channel R, G, B). ``start``
says where θ started: ``--init`` (another run's θ), PnP's (σ, τ), or the wavelet ``model.init``; for jfb
and deq with the run's log.csv, ``fixed point`` counts the steps that stopped at ``train.max_restarts``.

Checkpoints store what needs the engine (:func:`stored`, JSON in their metadata), so that
:func:`summarize_stored` describes them without importing torch (``retune show`` in well under a second).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Config, TrainConfig
from .rundir import LOG, read_log

if TYPE_CHECKING:
    import torch

BANDS = ("H", "V", "D")
CHANNELS = {"rgb": ("R", "G", "B"), "opponent": ("lum", "R−B", "M−G")}  # model.colour → the analysed channels
GREEK = {"lambda": "λ", "Lambda": "Λ", "sigma": "σ", "tau": "τ"}


@dataclass(frozen=True)
class Summary:
    path: Path
    facts: dict[str, str]  # preset, physics, model, K, T, gradient, step, train PSNR, …
    values: dict  # natural-unit parameters: "λ_j" → (levels,), "σ" → (1,), …: tensors, or nested lists when stored
    theta: object  # wavelet weights (scales, bands, channels), scale 1 (finest) first: a tensor, a nested list, None
    log: list[dict]  # the run folder's log.csv rows, when it is beside the checkpoint
    denoiser_tensors: int  # denoiser weight tensors the checkpoint carries (learned denoiser)
    channels: tuple[str, ...] = CHANNELS["rgb"]  # labels of θ's channels (model.colour)


def _values(scheme: torch.nn.Module) -> dict[str, torch.Tensor]:
    """θ in natural units (the prior's ``describe()``), named in Greek (λ_j, Λ_b, σ, τ)."""
    out = {}
    for base, values in scheme.theta.describe().items():
        label = GREEK.get(base, base) + {"lambda": "_j (j = 1 … J, finest first)", "Lambda": "_b"}.get(base, "")
        out[label] = values.flip(0) if base == "lambda" else values  # stored coarsest first
    return out


def wavelet_theta(scheme: torch.nn.Module) -> torch.Tensor | None:
    """θ ``(scales, 3, C)`` (C = 1 for θ_B), finest scale first, or None for a scheme without weights."""
    import torch

    diagonal = getattr(scheme.theta, "diagonal", None)
    if diagonal is None:
        return None
    per_level = [d.detach().double().cpu()[0, :, :, 0, 0].t() for d in diagonal()]  # (3, C), coarsest first
    return torch.stack(per_level[::-1])


def _start(config: Config) -> str:
    """Where θ started: another run (``train.init``), PnP's (σ, τ), the prior's noise start or its
    ``init_lambda`` (``model.init``)."""
    from .components import prior_class

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


def _facts(config: Config) -> dict[str, str]:
    """The settings shown: preset, physics, model and its options, K, T, gradient, start."""
    from .components import prior_class
    from .models import component_options

    c = config
    return {
        "preset": c.preset, "physics": f"{c.physics.name}, σ = {', '.join(f'{s:g}' for s in c.physics.sigma)}",
        "model": f"{c.model.prior} {c.model.scheme}" + "".join(
            f", {k} {v}" for k, v in component_options(c.model, prior_class(c.model.prior)).items()
            if k not in ("init_lambda", "init_sigma", "init_tau", "denoiser")),
        "K, T": f"{c.train.K}, {c.train.T}", "gradient": c.train.gradient, "start": _start(c),
    }


def stored(config: Config, scheme: torch.nn.Module) -> str:
    """What :func:`summarize_stored` needs of the engine, as JSON: the facts, θ in natural units, the
    wavelet weights, and whether training runs to the fixed point (jfb, deq)."""
    from .core.hypergrad import GRADIENT_MODES

    theta = wavelet_theta(scheme)
    return json.dumps({"facts": _facts(config), "values": {k: v.tolist() for k, v in _values(scheme).items()},
                       "theta": None if theta is None else theta.tolist(),
                       "equilibrium": GRADIENT_MODES[config.train.gradient].equilibrium}, ensure_ascii=False)


def _progress(step: int, psnr: float, data: Path | None) -> dict[str, str]:
    """The run's progress shown: step, train PSNR, training data."""
    return {"step": str(step), "train PSNR": f"{psnr:.2f} dB",
            "data": str(data or "built-in samples or images in memory")}


def _capped_fact(train: TrainConfig, equilibrium: bool, log: list[dict]) -> dict[str, str]:
    """``fixed point``: the logged steps stopped at ``train.max_restarts`` (runs to the fixed point only)."""
    from .restart_cap import capped_steps

    capped = capped_steps(train, log, equilibrium)
    return {"fixed point": capped.fact()} if capped is not None and log else {}


def summarize_stored(path: Path) -> Summary | None:
    """``path`` described from its metadata alone (no torch), or None when it stores no summary (older
    checkpoints), names user code (plugins, a physics factory: :func:`summarize` asks for --trust-code)
    or is not a readable checkpoint (then :func:`summarize` says why)."""
    import yaml

    from .checkpoint import FORMAT, OPTIMIZER_PREFIX, text_path
    from .files import read_header

    header = read_header(Path(path))
    metadata = (header or {}).get("__metadata__") or {}
    if metadata.get("format") != FORMAT or "shown" not in metadata:
        return None
    try:
        shown = json.loads(metadata["shown"])
        config = yaml.safe_load(metadata["config"])  # parsed, not validated: that needs the engine
        if config.get("plugins") or config["physics"].get("factory"):
            return None  # user code: loaded (or refused without --trust-code) as every command does
        train = TrainConfig(tol=float(config["train"]["tol"]), max_restarts=int(config["train"]["max_restarts"]))
        step, psnr = int(metadata["step"]), float(metadata["train_psnr"])
    except (ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):  # malformed: summarize says what is wrong
        return None
    log = read_log(Path(path).parent / LOG)
    progress = _progress(step, psnr, text_path(metadata.get("data", "")))
    facts = shown["facts"] | progress | _capped_fact(train, shown["equilibrium"], log)
    denoiser = sum(1 for k in header if k.startswith("denoiser.") and not k.startswith(OPTIMIZER_PREFIX))
    channels = CHANNELS.get((config.get("model") or {}).get("colour", "rgb"), CHANNELS["rgb"])
    return Summary(Path(path), facts, shown["values"], shown["theta"], log, denoiser, channels)


def summarize(path: Path, trust_code: bool = False) -> Summary:
    """Load ``path`` and describe it (its run folder's log.csv too, when there)."""
    from .core.hypergrad import GRADIENT_MODES
    from .restore import load_model

    model = load_model(path, "cpu", trust_code)
    c, ck = model.config, model.checkpoint
    log = read_log(Path(path).parent / LOG)
    facts = _facts(c) | _progress(ck.step, ck.train_psnr, ck.data) | _capped_fact(
        c.train, GRADIENT_MODES[c.train.gradient].equilibrium, log)
    denoiser = sum(1 for k in ck.parameters if k.startswith("denoiser."))
    colour = getattr(model.scheme.theta, "colour", "rgb")
    return Summary(Path(path), facts, _values(model.scheme), wavelet_theta(model.scheme), log, denoiser,
                   CHANNELS.get(colour, CHANNELS["rgb"]))
