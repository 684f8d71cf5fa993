"""``retune train --grid``: the grid's text, and one validated config per combination."""

from __future__ import annotations

import itertools
import reprlib
from dataclasses import dataclass
from pathlib import Path

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


def check_preset(preset: str | None, config: Config, source: Path) -> None:
    """Refuse ``--preset`` naming another preset than the checkpoint's."""
    if preset is not None and preset != config.preset:
        raise InputError(f"--preset {preset}: {source} was trained with preset {config.preset}; drop --preset")


@dataclass
class TrainPlan:
    """What ``retune train`` runs: the config, the checkpoint resumed (if any), the data folder and one
    ``(name, config, folder)`` per run (several with ``--grid``), with the grid's own folder."""

    config: Config
    checkpoint: object
    data: Path | None
    runs: list[tuple[str, Config, Path]]
    grid_folder: Path | None


def plan(preset: str | None, overrides: dict, out: Path | None, data: Path | None, resume: Path | None,
         grid: str | None, force: bool, trust_code: bool = False) -> TrainPlan:
    """Resolve the config (a preset and overrides, or a resumed checkpoint's with its length changed)
    and the runs; checks the grid's folder before anything trains."""
    from . import DEFAULT_PRESET
    from .config import for_resume, resolve
    from .rundir import RunDir, default_folder

    checkpoint = None
    if resume is not None:
        from . import checkpoint as ckpt  # torch: only to resume

        checkpoint = ckpt.load(resume, trust_code)
        check_preset(preset, checkpoint.config, resume)
        config = for_resume(checkpoint.config, overrides, str(resume))
        out, data = out or resume.parent, data or checkpoint.data
    else:
        config = resolve(preset or DEFAULT_PRESET, overrides, trust_code)
        out = out or default_folder(config.preset)
    if grid is None:
        return TrainPlan(config, checkpoint, data, [(config.preset, config, out)], None)
    if resume is not None:
        raise InputError("--grid starts new runs; resume each sub-folder's run with --resume instead")
    runs = [(name, cfg, out / name) for name, cfg in grid_configs(config, parse_grid(grid))]
    RunDir(out).check(force, data)  # the grid's own psnr.png
    return TrainPlan(config, None, data, runs, out)
