"""Train the small DRUNet shipped as retune's offline default denoiser.

deepinv's DRUNet architecture with fewer channels (nc = 16, 32, 64, 128; nb = 2 residual blocks per
scale), trained from scratch on random 64×64 crops (with flips and quarter turns) of the built-in
sample photographs (public domain / CC0, retune_cli/samples/LICENSES.md), for Gaussian noise with
σ drawn uniformly in [0, 0.2] per image, L1 loss, Adam. Deterministic given --seed. Writes a
safetensors file whose metadata records all of this.

    python scripts/train_small_drunet.py --steps 8000 --out retune_cli/weights/drunet_small.safetensors
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from deepinv.models import DRUNet
from safetensors.torch import save_file

from retune_cli.data import ImageFolder

NC = (16, 32, 64, 128)
NB = 2
SIGMA_MAX = 0.2


def batch(images: ImageFolder, size: int, crop: int, g: torch.Generator) -> torch.Tensor:
    out = []
    for _ in range(size):
        image = images[int(torch.randint(len(images), (1,), generator=g))]
        h, w = image.shape[-2:]
        top = int(torch.randint(h - crop + 1, (1,), generator=g))
        left = int(torch.randint(w - crop + 1, (1,), generator=g))
        patch = image[:, top : top + crop, left : left + crop]
        patch = torch.rot90(patch, int(torch.randint(4, (1,), generator=g)), dims=(1, 2))
        out.append(patch.flip(-1) if torch.rand(1, generator=g) < 0.5 else patch)
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("retune_cli/weights/drunet_small.safetensors"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    images = ImageFolder.open(None)
    model = DRUNet(3, 3, nc=NC, nb=NB, pretrained=None)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    start = time.time()
    for step in range(args.steps):
        clean = batch(images, args.batch_size, args.crop, g)
        sigma = torch.rand(args.batch_size, generator=g) * SIGMA_MAX
        noisy = clean + sigma.view(-1, 1, 1, 1) * torch.randn(clean.shape, generator=g)
        loss = (model(noisy, sigma) - clean).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 200 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
    metadata = {
        "architecture": json.dumps({"class": "deepinv.models.DRUNet", "in_channels": 3, "out_channels": 3,
                                    "nc": list(NC), "nb": NB}),
        "training_data": "retune_cli/samples (public domain / CC0), random 64x64 crops, flips, quarter turns",
        "noise": f"Gaussian, sigma ~ U[0, {SIGMA_MAX}] per image",
        "training": json.dumps({**{k: str(v) for k, v in vars(args).items()}, "loss": "L1", "optimizer": "Adam",
                                "schedule": "cosine"}),
        "licence": "BSD-3-Clause (retune); trained only on public-domain / CC0 images",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out), metadata=metadata)
    print(f"wrote {args.out} ({sum(p.numel() for p in model.parameters())} parameters)")


if __name__ == "__main__":
    main()
