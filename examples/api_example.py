"""retune from Python: train θ on images held in memory, restore tensors, evaluate with deepinv.

Run: ``python examples/api_example.py`` (about ten seconds on a CPU). The same functions as the CLI:
``retune_cli.fit`` is ``retune train``, ``retune_cli.load`` gives what ``retune restore`` runs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import deepinv as dinv
import torch
from torch.utils.data import DataLoader, TensorDataset

import retune_cli
from retune_cli.core.physics import ChannelGaussianNoise
from retune_cli.data import sample_dir
from retune_cli.images import read_image

SIGMA = [0.10, 0.25, 0.50]  # the preset's noise level per channel


def main() -> None:
    photos = sorted(sample_dir().glob("*.png"))[:4]  # any torch Dataset of (3, H, W) images in [0, 1] works
    clean = torch.stack([read_image(p)[:, :96, :96] for p in photos])
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"train.steps": 10, "train.crop": 64, "train.batch_size": 2}
        restorer = retune_cli.fit("denoise-wavelet-b", TensorDataset(clean), out=Path(tmp) / "run",
                                  overrides=overrides)
        print(f"trained: train PSNR {restorer.checkpoint.train_psnr:.2f} dB")
        restorer = retune_cli.load(Path(tmp) / "run" / "theta.safetensors")  # the same, from the file
    noisy = ChannelGaussianNoise(SIGMA)(clean[:1], seed=0)
    restored = restorer(noisy[0, :, :77, :90])  # any size; (3, H, W) or (N, 3, H, W)
    print(f"restored a {tuple(restored.shape)} tensor")
    physics = dinv.physics.Denoising(ChannelGaussianNoise(SIGMA))
    loader = DataLoader(clean, batch_size=2)
    scores = dinv.test(restorer.to_deepinv(), loader, physics, online_measurements=True, show_progress_bar=False,
                       verbose=False, non_blocking_transfers=False)
    print(f"deepinv.test: PSNR {scores['PSNR']:.2f} dB (observation {scores['PSNR no learning']:.2f} dB)")


if __name__ == "__main__":
    main()
