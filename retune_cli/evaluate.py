"""Evaluation workflow: simulate every clean image once, restore it with each checkpoint, score.

Observations depend only on ``(seed, image name)``, so they are identical across checkpoints and
across runs. Checkpoints of different degradations (:mod:`.degradations`) are evaluated group by
group, each on its own observations. JSON schema (:func:`write_json`), for one degradation::

    {"checkpoints": [label, …],
     "rows": [{"image": name, "psnr": {label: x, "observation": x}, "ssim": {…}}, …],
     "mean": {"psnr": {label: x, "observation": x}, "ssim": {…}}}

and for several ``{"groups": [{"group": name, "checkpoints": …, "rows": …, "mean": …}, …]}``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import ImageFolder, derive_seed
from .degradations import degradations, group_by_degradation
from .errors import InputError
from .files import atomic_write, resolved, write_text
from .restore import Model, check_fits, load_model, run

OBSERVATION = "observation"
METRICS = ("psnr", "ssim")


def checkpoint_labels(paths: list[Path]) -> list[str]:
    """Each checkpoint's run-folder name, or ``run/stem`` (then the full path) when ambiguous (``best`` and
    ``theta`` of one run: ``run/best``, ``run/theta``)."""
    for label in (lambda p: resolved(p).parent.name, lambda p: f"{resolved(p).parent.name}/{p.stem}", str):
        labels = [label(p) for p in paths]
        if len(set(labels)) == len(labels) and OBSERVATION not in labels:
            return labels
    raise InputError("the same checkpoint is given twice; give each once")


@dataclass
class EvalResult:
    labels: list[str]
    rows: list[dict]
    group: str = ""  # the degradation's name

    @property
    def columns(self) -> list[str]:
        return [OBSERVATION, *self.labels]

    def mean(self) -> dict[str, dict[str, float]]:
        return {m: {c: sum(r[m][c] for r in self.rows) / len(self.rows) for c in self.columns} for m in METRICS}

    def to_json(self) -> dict:
        return {"checkpoints": self.labels, "rows": self.rows, "mean": self.mean()}

    def csv_rows(self, labels: list[str]) -> list[list[str]]:
        """One row per image and a ``mean`` row: ``image, <metric>:observation, <metric>:<label> …`` over
        ``labels`` (a cell is empty for a label of another group)."""
        columns = [OBSERVATION, *labels]
        cell = lambda values, m, c: f"{values[m][c]:.4f}" if c in values[m] else ""  # noqa: E731
        return [[name] + [cell(values, m, c) for m in METRICS for c in columns]
                for name, values in [(r["image"], r) for r in self.rows] + [("mean", self.mean())]]


def write_json(results: list[EvalResult], path: Path) -> None:
    """One degradation: :meth:`EvalResult.to_json`; several: ``{"groups": [{"group": name, …}, …]}``."""
    data = results[0].to_json() if len(results) == 1 else {"groups": [{"group": r.group} | r.to_json()
                                                                      for r in results]}
    write_text(path, json.dumps(data, indent=2))


def write_csv(results: list[EvalResult], path: Path) -> None:
    """One row per image and a ``mean`` row per degradation, columns ``<metric>:<label>`` (observation
    first); with several degradations a first column ``group`` (written atomically; an image name that
    is not UTF-8 keeps its bytes)."""
    labels = [label for r in results for label in r.labels]
    header = ["image"] + [f"{m}:{c}" for m in METRICS for c in (OBSERVATION, *labels)]
    grouped = len(results) > 1
    header = ["group", *header] if grouped else header
    rows = [[r.group, *row] if grouped else row for r in results for row in r.csv_rows(labels)]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            csv.writer(f).writerows([header, *rows])

    atomic_write(path, write)


SIDE_BY_SIDE = "side-by-side"
CLEAN = "clean"


def saved_images(save_dir: Path, data: Path | None, checkpoints: list[Path],
                 trust_code: bool = False) -> list[dict[str, dict[str, Path]]]:
    """``eval --save-dir``'s files per degradation group, per image name: ``<stem>.<label>.png`` for each
    checkpoint and ``<stem>.side-by-side.png`` (observation | each checkpoint | clean), with several
    groups ``<stem>.<group slug>.side-by-side.png``."""
    labels, groups = checkpoint_labels(checkpoints), degradations(checkpoints, trust_code)
    images = ImageFolder.open(data)
    side = lambda g: SIDE_BY_SIDE if len(groups) == 1 else f"{g.slug}.{SIDE_BY_SIDE}"  # noqa: E731
    return [{p.name: {labels[i]: save_dir / f"{p.stem}.{labels[i]}.png" for i in g.members}
             | {SIDE_BY_SIDE: save_dir / f"{p.stem}.{side(g)}.png"} for p in images.files} for g in groups]


def _save(files: dict[str, Path], outputs: dict[str, torch.Tensor], clean: torch.Tensor, row: dict) -> None:
    """Write the restored images and the side-by-side figure of one image."""
    from .images import write_image
    from .plots import plot_side_by_side

    panels = {c: (x[0], f"PSNR {row['psnr'][c]:.2f} dB · SSIM {row['ssim'][c]:.3f}") for c, x in outputs.items()}
    for label, path in files.items():
        if label != SIDE_BY_SIDE:
            write_image(path, outputs[label][0])
    plot_side_by_side(files[SIDE_BY_SIDE], panels | {CLEAN: (clean[0], "reference")})


def ssim(x: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """SSIM with its Gaussian window (σ = 1.5, 11×11), narrowed to fit images with a side under 6 pixels."""
    from deepinv.loss.metric import SSIM

    sigma = min(1.5, (min(clean.shape[-2:]) - 0.75) / 3.5)  # the window's half-width int(3.5σ + 0.5) < the side
    return SSIM(torchmetric_kwargs={"sigma": sigma})(x, clean)


@dataclass
class _Run:
    """What every group's evaluation shares: the images, the options, the progress callbacks."""

    images: ImageFolder
    T: int | None
    seed: int
    device: torch.device | str
    accelerate: str | None
    total: int  # images × checkpoints
    report: Callable[[int, int, str], None]
    on_row: Callable[[dict], None] | None
    done: int = 0  # restorations before the current group's


def _evaluate_group(r: _Run, labels: list[str], models: list[Model], name: str,
                    save: dict[str, dict[str, Path]] | None) -> EvalResult:
    """One degradation: every image simulated once, restored by each of ``models``, scored."""
    from deepinv.loss.metric import PSNR

    physics = models[0].scheme.physics  # one observation (noise, mask) per image, shared by all models
    scores = {"psnr": PSNR(max_pixel=1.0), "ssim": ssim}
    rows = []
    for i, path in enumerate(r.images.files):
        clean = physics.fit_image(r.images[i].unsqueeze(0).to(r.device))
        check_fits(models[0], clean.shape, path)
        with torch.no_grad():
            observed = physics.simulate(clean, derive_seed(r.seed, "eval", path.name))
        outputs = {OBSERVATION: physics.baseline(observed)}
        for j, (label, m) in enumerate(zip(labels, models)):
            r.report(r.done + i * len(models) + j, r.total, f"{path.name} · {label}")
            outputs[label] = run(m, observed, r.T, accelerate=r.accelerate).x
        rows.append(
            {"image": path.name} | {k: {c: float(f(x, clean)) for c, x in outputs.items()} for k, f in scores.items()}
        )
        if save is not None:
            _save(save[path.name], outputs, clean, rows[-1])
        r.report(r.done + (i + 1) * len(models), r.total, path.name)
        if r.on_row:
            r.on_row(rows[-1])
    r.done += len(r.images) * len(models)
    return EvalResult(labels, rows, name)


def evaluate_groups(
    checkpoints: list[Path],
    data: Path | None = None,
    T: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_restore: Callable[[int, int, str], None] | None = None,
    trust_code: bool = False,
    accelerate: str | None = None,
    on_row: Callable[[dict], None] | None = None,
    save: list[dict[str, dict[str, Path]]] | None = None,
    on_group: Callable[[str], None] | None = None,
) -> list[EvalResult]:
    """PSNR/SSIM of every checkpoint (and of the observation) on every image of ``data``, one result
    per degradation (:func:`group_by_degradation`); ``on_restore(done, images × checkpoints, what)``
    after each restoration, ``on_row(row)`` after each image, ``on_group(name)`` as each group starts
    when there are several; ``save``: :func:`saved_images`' files, written as each image is done."""
    if not checkpoints:
        raise InputError("give at least one checkpoint")
    labels = checkpoint_labels(checkpoints)
    models = [load_model(p, device, trust_code) for p in checkpoints]
    groups = group_by_degradation([m.config for m in models])
    images = ImageFolder.open(data)
    r = _Run(images, T, seed, device, accelerate, len(images) * len(models),
             on_restore or (lambda done, total, what: None), on_row)
    results = []
    for g, group in enumerate(groups):
        if on_group and len(groups) > 1:
            on_group(group.name)
        results.append(_evaluate_group(r, [labels[i] for i in group.members], [models[i] for i in group.members],
                                       group.name, None if save is None else save[g]))
    return results


def evaluate(checkpoints: list[Path], *args, trust_code: bool = False, **options) -> EvalResult:
    """:func:`evaluate_groups` (same arguments) for checkpoints that all degrade images alike; several
    degradations are refused."""
    groups = degradations(checkpoints, trust_code)
    if len(groups) > 1:
        first, other = (checkpoints[g.members[0]] for g in groups[:2])
        raise InputError(f"{other} degrades images differently from {first}; evaluate them separately")
    return evaluate_groups(checkpoints, *args, trust_code=trust_code, **options)[0]
