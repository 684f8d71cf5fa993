"""Restoring a folder of images (``retune restore CKPT photos/ -o restored/``): the job checked before any
work, each image restored and written, scored against a reference folder of the same names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import InputError
from .restore import Model, Output, RestoreResult, restore_file


@dataclass(frozen=True)
class FolderJob:
    """A folder restore: ``(image, output)`` pairs, the non-image files skipped, and per image its
    reference (a clean image of the same stem in ``--reference DIR``) or None."""

    pairs: list[tuple[Path, Path]]
    skipped: list[Path]
    references: list[Path | None] | None = None


def folder_job(folder: Path, out: Path | None, force: bool, suffix: str = ".png",
               reference: Path | None = None) -> FolderJob:
    """Every image of ``folder`` → ``out/<stem>.restored<suffix>`` (the single-image name, in ``out``);
    with a ``reference`` folder, each image's clean image of the same stem. Refused before any work: no
    ``out``, two images of one stem, outputs that exist (without ``force``), an image without reference."""
    from .data import list_images

    if out is None:
        raise InputError(f"{folder} is a folder: give -o OUTDIR for its restored images")
    images, skipped = list_images(folder, "the image folder")
    pairs = [(image, out / f"{image.stem}.restored{suffix}") for image in images]
    stems = [image.stem for image in images]
    twins = sorted({s for s in stems if stems.count(s) > 1})
    if twins:
        raise InputError(f"{folder}: several images are named {twins[0]} (different suffixes); their outputs "
                         "would collide; restore them separately")
    existing = [o for _, o in pairs if o.exists()]
    if existing and not force:
        raise InputError(f"-o {out}: {len(existing)} of the outputs exist already (first {existing[0].name}); "
                         "--force overwrites them")
    return FolderJob(pairs, skipped, None if reference is None else _references(images, reference))


def _references(images: list[Path], folder: Path) -> list[Path]:
    """The image of each stem in the ``--reference`` folder; refused if one is missing."""
    from .data import list_images

    if not folder.is_dir():
        raise InputError(f"--reference {folder}: restoring a folder, the reference is a folder of clean images "
                         "with the same names")
    found = {p.stem: p for p in list_images(folder, "--reference")[0]}
    missing = [image.name for image in images if image.stem not in found]
    if missing:
        raise InputError(f"--reference {folder} has no image named like {missing[0]}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return [found[image.stem] for image in images]


def restore_folder(model: Model, job: FolderJob, output: Output,
                   on_image: Callable[[int, int, str], None] | None = None,
                   on_result: Callable[[Path, RestoreResult], None] | None = None,
                   **options) -> list[RestoreResult]:
    """Restore each image of ``job`` (``options`` as :func:`~.restore.restore_file`'s), written as
    ``output`` says (its path replaced by each pair's) and scored against its reference if the job has
    them; ``on_image(done, total, name)`` before each, ``on_result(output, result)`` after."""
    results = []
    for i, (image, path) in enumerate(job.pairs):
        if on_image:
            on_image(i, len(job.pairs), image.name)
        reference = None if job.references is None else job.references[i]
        results.append(restore_file(model, image, output=replace(output, path=path), reference=reference, **options))
        if on_result:
            on_result(path, results[-1])
    return results


def summary_rows(job: FolderJob, results: list[RestoreResult]) -> list[list[str]]:
    """``[image, PSNR, SSIM, observation PSNR, observation SSIM]`` per scored image and their mean."""
    scored = [(image.name, r) for (image, _), r in zip(job.pairs, results) if r.psnr is not None]
    keys = ("psnr", "ssim", "psnr_observation", "ssim_observation")
    rows = [[name, *(f"{getattr(r, k):.{2 if 'psnr' in k else 3}f}" for k in keys)] for name, r in scored]
    if scored:
        means = [sum(getattr(r, k) for _, r in scored) / len(scored) for k in keys]
        rows.append(["mean", *(f"{m:.{2 if 'psnr' in k else 3}f}" for m, k in zip(means, keys))])
    return rows
