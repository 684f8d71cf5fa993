"""Validation while training (``retune train --val DIR``): the mean PSNR of fixed observations.

Each clean image of the folder is degraded once, with the noise (and mask, kernel) seeded by
``(train.seed, "val", image name)``, so every evaluation — and every run with the same seed — sees the
same observations. Every ``train.val_every`` steps (and at the last) they are restored with the
current θ by the solve ``retune eval`` and ``retune restore`` use for the checkpoint (:func:`.restore.run`:
the run's K, restart budget and tolerance, ``train.accelerate``; no graph) and scored:
``val_psnr = mean_i PSNR(x̂_i, x_i)``, so that best.safetensors is the checkpoint eval scores best.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import Checkpoint
from .config import Config
from .core.physics import Observation
from .data import ImageFolder, Images, derive_seed, open_images, training_batch
from .errors import InputError
from .models import physics_from
from .restore import Model, run


@dataclass(frozen=True)
class Validation:
    """Clean images and their fixed observations, on the training device; ``checkpoint`` stands for the
    run's (its config fixes the solve, its path names it in messages)."""

    pairs: list[tuple[torch.Tensor, Observation]]
    checkpoint: Checkpoint

    @classmethod
    def open(cls, folder: Path, config: Config, physics, device, checkpoint: Path | None = None) -> Validation:
        """Read and degrade ``folder``'s images (refused by name when the physics cannot observe one);
        ``checkpoint``: where the validated θ is saved."""
        images = ImageFolder.open(folder, "--val")
        pairs = []
        for i, path in enumerate(images.files):
            clean = physics.fit_image(images[i].unsqueeze(0).to(device))
            try:
                physics.check_fits(clean.shape)
            except ValueError as e:
                raise InputError(f"--val {path}: {e}") from None
            with torch.no_grad():
                pairs.append((clean, physics.simulate(clean, derive_seed(config.train.seed, "val", path.name))))
        return cls(pairs, Checkpoint(checkpoint or folder, config, {}, {}, 0, float("nan")))

    def psnr(self, scheme: torch.nn.Module) -> float:
        """Mean PSNR (peak 1) of the restored observations with ``scheme``'s current θ, solved as eval
        solves the checkpoint (an :class:`~.errors.InputError` for a θ that gives no valid step or
        non-finite values)."""
        from deepinv.loss.metric import PSNR

        metric, model = PSNR(max_pixel=1.0), Model(self.checkpoint, scheme)
        scores = [float(metric(run(model, obs).x, clean)) for clean, obs in self.pairs]
        return sum(scores) / len(scores)


@torch.no_grad()
def observation_psnr(config: Config, data: Path | Images | None, step: int) -> float:
    """Mean PSNR of the observations' baseline (eval's observation column) on training step ``step``'s
    batch (0-based, the same crops and noise): what a θ that does nothing would score."""
    from deepinv.loss.metric import PSNR

    t, physics = config.train, physics_from(config)
    batch = training_batch(open_images(data), step, t.batch_size, t.crop, t.seed)
    obs = physics.simulate(batch, derive_seed(t.seed, "noise", step))
    return float(PSNR(max_pixel=1.0)(physics.baseline(obs), batch).mean())
