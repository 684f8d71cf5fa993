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


SIDE_BY_SIDE = "side-by-side"
CLEAN = "clean"


def saved_images(save_dir: Path, data: Path | None, labels: list[str]) -> dict[str, dict[str, Path]]:
    """``eval --save-dir``'s files per image name: ``<stem>.<label>.png`` for each checkpoint and
    ``<stem>.side-by-side.png`` (observation | each checkpoint | clean)."""
    images = ImageFolder.open(data)
    return {p.name: {c: save_dir / f"{p.stem}.{c}.png" for c in (*labels, SIDE_BY_SIDE)} for p in images.files}


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
    on_restore: Callable[[int, int, str], None] | None = None,
    trust_code: bool = False,
    accelerate: str | None = None,
    on_row: Callable[[dict], None] | None = None,
    save: dict[str, dict[str, Path]] | None = None,
) -> EvalResult:
    """PSNR/SSIM of every checkpoint (and of the observation) on every image of ``data``;
    ``on_restore(done, images × checkpoints, what)`` after each restoration, ``on_row(row)`` after
    each image; ``save``: :func:`saved_images`' files, written as each image is done."""
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
    total = len(images) * len(models)
    report = on_restore or (lambda done, total, what: None)
    for i, path in enumerate(images.files):
        clean = physics.fit_image(images[i].unsqueeze(0).to(device))
        check_fits(models[0], clean.shape, path)
        with torch.no_grad():
            observed = physics.simulate(clean, derive_seed(seed, "eval", path.name))
        outputs = {OBSERVATION: physics.baseline(observed)}
        for j, (label, m) in enumerate(zip(labels, models)):
            report(i * len(models) + j, total, f"{path.name} · {label}")
            outputs[label] = run(m, observed, T, accelerate=accelerate).x
        rows.append(
            {"image": path.name} | {k: {c: float(f(x, clean)) for c, x in outputs.items()} for k, f in scores.items()}
        )
        if save is not None:
            _save(save[path.name], outputs, clean, rows[-1])
        report((i + 1) * len(models), total, path.name)
        if on_row:
            on_row(rows[-1])
    return EvalResult(labels, rows)
