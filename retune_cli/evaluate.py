"""Evaluation workflow: simulate every clean image once, restore it with each checkpoint, score.

Observations depend only on ``(seed, image name)``, so they are identical across checkpoints and
across runs. JSON schema (``EvalResult.to_json``)::

    {"checkpoints": [label, …],
     "rows": [{"image": name, "psnr": {label: x, "observation": x}, "ssim": {…}}, …],
     "mean": {"psnr": {label: x, "observation": x}, "ssim": {…}}}
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import ImageFolder, derive_seed
from .errors import InputError
from .files import atomic_write, write_text
from .restore import Model, check_fits, load_model, run

OBSERVATION = "observation"
METRICS = ("psnr", "ssim")


def checkpoint_labels(paths: list[Path]) -> list[str]:
    """Each checkpoint's run-folder name, or its file stem (then the full path) when ambiguous."""
    for label in (lambda p: p.resolve().parent.name, lambda p: p.stem, lambda p: str(p)):
        labels = [label(p) for p in paths]
        if len(set(labels)) == len(labels) and OBSERVATION not in labels:
            return labels
    raise InputError("the same checkpoint is given twice; give each once")


@dataclass
class EvalResult:
    labels: list[str]
    rows: list[dict]

    @property
    def columns(self) -> list[str]:
        return [OBSERVATION, *self.labels]

    def mean(self) -> dict[str, dict[str, float]]:
        return {m: {c: sum(r[m][c] for r in self.rows) / len(self.rows) for c in self.columns} for m in METRICS}

    def to_json(self) -> dict:
        return {"checkpoints": self.labels, "rows": self.rows, "mean": self.mean()}

    def write_json(self, path: Path) -> None:
        write_text(path, json.dumps(self.to_json(), indent=2))

    def write_csv(self, path: Path) -> None:
        """One row per image and a final ``mean`` row; columns ``<metric>:<label>`` (written atomically;
        an image name that is not UTF-8 keeps its bytes)."""
        header = ["image"] + [f"{m}:{c}" for m in METRICS for c in self.columns]
        mean = self.mean()
        rows = [[name] + [f"{values[m][c]:.4f}" for m in METRICS for c in self.columns]
                for name, values in [(r["image"], r) for r in self.rows] + [("mean", mean)]]

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
                csv.writer(f).writerows([header, *rows])

        atomic_write(path, write)


def ssim(x: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """SSIM with its Gaussian window (σ = 1.5, 11×11), narrowed to fit images with a side under 6 pixels."""
    from deepinv.loss.metric import SSIM

    sigma = min(1.5, (min(clean.shape[-2:]) - 0.75) / 3.5)  # the window's half-width int(3.5σ + 0.5) < the side
    return SSIM(torchmetric_kwargs={"sigma": sigma})(x, clean)


def _same_physics(models: list[Model]) -> None:
    first = models[0].config.physics
    for m in models[1:]:
        if m.config.physics != first:
            raise InputError(
                f"{m.checkpoint.path} degrades images differently from {models[0].checkpoint.path}; "
                "evaluate them separately"
            )


def evaluate(
    checkpoints: list[Path],
    data: Path | None = None,
    T: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_image: Callable[[int, int, str], None] | None = None,
    trust_code: bool = False,
    accelerate: str | None = None,
) -> EvalResult:
    """PSNR/SSIM of every checkpoint (and of the observation) on every image of ``data``."""
    from deepinv.loss.metric import PSNR

    if not checkpoints:
        raise InputError("give at least one checkpoint")
    labels = checkpoint_labels(checkpoints)
    models = [load_model(p, device, trust_code) for p in checkpoints]
    _same_physics(models)
    physics = models[0].scheme.physics  # one observation (noise, mask) per image, shared by all models
    images = ImageFolder.open(data)
    scores = {"psnr": PSNR(max_pixel=1.0), "ssim": ssim}
    rows = []
    for i, path in enumerate(images.files):
        if on_image:
            on_image(i, len(images), path.name)
        clean = physics.fit_image(images[i].unsqueeze(0).to(device))
        check_fits(models[0], clean.shape, path)
        with torch.no_grad():
            observed = physics.simulate(clean, derive_seed(seed, "eval", path.name))
        baseline = {OBSERVATION: physics.baseline(observed)}
        outputs = baseline | {label: run(m, observed, T, accelerate=accelerate).x for label, m in zip(labels, models)}
        rows.append(
            {"image": path.name} | {k: {c: float(f(x, clean)) for c, x in outputs.items()} for k, f in scores.items()}
        )
    return EvalResult(labels, rows)
