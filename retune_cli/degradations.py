"""Checkpoints grouped by their degradation: ``eval`` over runs of different presets evaluates each
group on its own observations.

Observations are comparable when the observation model agrees: the physics (``physics.name``), the
options its class declares (``keep``, ``mask``, ``masks``, ``blur_width``, ``kernel`` (a file's path as
given), ``factor``, ``factory``, …) and the noise σ per channel (one value stands for three equal ones).
Other config keys (the model, training) do not matter.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from . import checkpoint as ckpt
from .config import Config, PhysicsConfig
from .core.operators import PHYSICS
from .models import per_channel

DEFAULTS = {f.name: f.default for f in fields(PhysicsConfig)}


@dataclass(frozen=True)
class Degradation:
    """Checkpoints whose observation models agree (physics, its options, noise): one simulation of each
    image serves them all."""

    name: str  # e.g. "inpaint · keep = 0.1 · σ = 0.05"
    slug: str  # for file names: the physics' name, "-2", "-3", … for a second, third group of that physics
    members: tuple[int, ...]  # indices of the checkpoints, in the order given


def degradation_key(physics: PhysicsConfig) -> tuple:
    """What makes observations comparable: the physics, the options its class takes, σ per channel."""
    options = PHYSICS[physics.name].options
    return physics.name, tuple((k, getattr(physics, k)) for k in options), per_channel(physics.sigma)


def degradation_name(physics: PhysicsConfig) -> str:
    """``deblur · blur_width = 25 · … · σ = 0.05``: the key, read aloud (a choice at its default, e.g.
    ``mask = random``, ``masks`` unset, ``boundary = circular``, left out)."""
    name, options, sigma = degradation_key(physics)
    sigma = sigma[:1] if len(set(sigma)) == 1 else sigma
    shown = [f"{k} = {v}" for k, v in options if not (isinstance(v, str) and v == DEFAULTS.get(k))]
    return " · ".join([name, *shown, "σ = " + ", ".join(f"{s:g}" for s in sigma)])


def group_by_degradation(configs: list[Config]) -> list[Degradation]:
    """The checkpoints' configs grouped by :func:`degradation_key`, in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(degradation_key(config.physics), []).append(i)
    out, seen = [], []
    for key, members in groups.items():
        seen.append(key[0])
        slug = key[0] + (f"-{seen.count(key[0])}" if seen.count(key[0]) > 1 else "")
        out.append(Degradation(degradation_name(configs[members[0]].physics), slug, tuple(members)))
    return out


def degradations(checkpoints: list[Path], trust_code: bool = False) -> list[Degradation]:
    """:func:`group_by_degradation` of the checkpoints' stored configs (θ is not loaded)."""
    return group_by_degradation([ckpt.load(p, trust_code).config for p in checkpoints])
