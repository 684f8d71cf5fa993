"""``retune train --grid``: the grid's text, and one validated config per combination."""

from __future__ import annotations

import itertools
import reprlib

import yaml

from .config import Config, with_overrides
from .errors import InputError
from .rundir import folder_name
from .yamlfiles import load_yaml


def parse_grid(text: str) -> dict[str, list[object]]:
    """``"K=1,10 T=1,10"`` → ``{"train.K": [1, 10], "train.T": [1, 10]}`` (bare keys are train keys;
    scalar values only)."""
    grid = {}
    for item in text.split():
        key, sep, raw = item.partition("=")
        try:
            values = [load_yaml(v) for v in raw.split(",") if v]
        except yaml.YAMLError:
            values = []
        if not sep or not key or not values:
            raise InputError(
                f'--grid {reprlib.repr(text)}: write KEY=v1,v2 … separated by spaces, e.g. --grid "K=1,10 T=1,10"'
            )
        grid[key if "." in key else f"train.{key}"] = values
    return grid


def grid_configs(config: Config, grid: dict[str, list[object]]) -> list[tuple[str, Config]]:
    """Every combination of the grid's values applied to ``config``, named like ``K1-T10`` (a text value
    names itself: ``gradient=retune,deq`` gives ``retune``, ``deq``)."""
    runs = []
    for values in itertools.product(*grid.values()):
        overrides = dict(zip(grid, values))
        name = folder_name(
            "-".join(v if isinstance(v, str) else f"{k.rpartition('.')[2]}{v}" for k, v in overrides.items())
        )
        if any(name == other for other, _ in runs):
            raise InputError(f"--grid gives two runs the folder name {name}; give each value once")
        runs.append((name, with_overrides(config, overrides, f"--grid {name}")))
    return runs
