"""What the held-out experiments (``experiment_denoise.py``, ``experiment_restoration.py``) share: the
CBSD68 split, held-out crops, training one run and reading its log, the preset's untrained θ as a
checkpoint, the observations ``evaluate`` makes, residuals and scores.

Residuals are the engine's (:class:`retune_cli.core.hypergrad.Solution`): the relative residual
``‖u_t − u_{t−1}‖/‖u_t‖`` of the last restart on the scheme's own iterate (the weighted wavelet
coefficients ``u = θDx`` for wavelet schemes, the image for PnP).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from retune_cli import checkpoint as ckpt
from retune_cli.core.physics import Observation, Physics
from retune_cli.data import ImageFolder, derive_seed
from retune_cli.models import build_scheme
from retune_cli.restore import load_model, run
from retune_cli.rundir import read_log as read_rows
from retune_cli.train import train

DATA = Path(os.environ.get("CBSD68", "CBSD68"))  # the 68 CBSD68 photographs: set CBSD68=FOLDER
N_TRAIN, N_HELDOUT = 60, 8
LOG_COLUMNS = ("step", "loss", "psnr", "tau", "seconds")


def split(data: Path, workdir: Path, n_train: int = N_TRAIN, n_held: int = N_HELDOUT):
    """Two folders of symlinks: the first ``n_train`` images (sorted by name) and the last ``n_held``;
    returns them and their names."""
    import shutil

    files = sorted(p for p in data.iterdir() if p.suffix.lower() == ".png")
    if len(files) < n_train + n_held:
        raise SystemExit(f"{data} holds {len(files)} PNGs, expected {n_train + n_held}")
    folders = []
    for name, subset in (("train", files[:n_train]), ("heldout", files[-n_held:])):
        folder = workdir / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for f in subset:
            (folder / f.name).symlink_to(f.resolve())
        folders.append(folder)
    return folders[0], folders[1], [f.name for f in files[:n_train]], [f.name for f in files[-n_held:]]


def crop_heldout(src: Path, dst: Path, side: int, count: int | None = None) -> list[str]:
    """Center ``side``×``side`` crops of the PNGs of ``src`` (the first ``count``, default all), written
    as PNGs into ``dst``."""
    from PIL import Image

    dst.mkdir(parents=True, exist_ok=True)
    names = []
    for f in sorted(src.iterdir())[:count]:
        image = Image.open(f).convert("RGB")
        w, h = image.size
        left, top = (w - side) // 2, (h - side) // 2
        image.crop((left, top, left + side, top + side)).save(dst / f.name)
        names.append(f.name)
    return names


def heldout_setup(work: Path, side: int, count: int | None = None) -> tuple[Path, Path, list[str]]:
    """The CBSD68 split in ``work`` (:func:`split` of :data:`DATA`) and ``side``² center crops of the first
    ``count`` held-out images (default all) in ``work/heldout-crops``: ``(train folder, crops, held-out names)``."""
    train_dir, held, _, names = split(DATA, work)
    crops = work / "heldout-crops"
    crop_heldout(held, crops, side, count)
    return train_dir, crops, names


def learned_weights(path: Path) -> dict:
    """``λ = exp(log_lambda)``, ``Λ = exp(log_Lambda)`` and the per-level diagonal θ = λ_j sqrt(Λ)."""
    params = ckpt.load(path).parameters
    lam = torch.exp(params["theta.log_lambda"])
    Lam = torch.exp(params["theta.log_Lambda"])
    return {
        "lambda": lam.tolist(),
        "Lambda": Lam.tolist(),
        "theta": [(l_ * Lam.sqrt()).tolist() for l_ in lam],
    }


def read_log(path: Path) -> list[list[float]]:
    """A run's ``log.csv`` as ``[[step, loss, psnr, tau, seconds], …]``."""
    return [[float(r[k]) for k in LOG_COLUMNS] for r in read_rows(path)]


def log_summary(log: list[list[float]]) -> dict:
    """The last step's train PSNR and τ, the mean PSNR of the last 10 steps, and the log itself."""
    return {
        "final_psnr": log[-1][2],
        "final_psnr_last10": float(np.mean([r[2] for r in log[-10:]])),
        "final_tau": log[-1][3],
        "log": log,
    }


def train_run(config, out: Path, data: Path, reuse: bool = False) -> tuple[float | None, bool, list[list[float]]]:
    """Train ``config`` into ``out`` on ``data`` (CPU), or, with ``reuse``, keep a finished run found
    there; ``(seconds of train() or None when reused, reused, log)``."""
    path = out / "theta.safetensors"
    reused = reuse and path.is_file() and ckpt.load(path).step == config.train.steps
    seconds = None
    if not reused:
        t = config.train
        print(f"  training {out.name}: {t.steps} steps, K={t.K}, T={t.T}, crop {t.crop}…", flush=True)
        start = time.perf_counter()
        train(config, out, data=data, device="cpu", force=True)
        seconds = time.perf_counter() - start
    log = read_log(out / "log.csv")
    print(f"    {log[-1][4]:.0f} s (log), final train PSNR {log[-1][2]:.2f} dB", flush=True)
    return seconds, reused, log


def save_initial(path: Path, config) -> None:
    """The preset's untrained θ saved as a checkpoint, so that ``evaluate`` sees it."""
    ckpt.save(path, config, ckpt.learned_parameters(build_scheme(config)), 0, float("nan"))


def observations(physics: Physics, folder: Path, seed: int, count: int | None = None):
    """``[(clean, Observation)]`` of the first ``count`` images of ``folder`` (default all), observed as
    ``evaluate(…, seed=seed)`` observes them."""
    images = ImageFolder.open(folder)
    out = []
    for i, f in enumerate(images.files[:count]):
        clean = images[i].unsqueeze(0)
        with torch.no_grad():
            out.append((clean, physics.simulate(clean, derive_seed(seed, "eval", f.name))))
    return out


def residual(path: Path, obs: Observation, T: int) -> float:
    """Relative residual of the last restart after ``T`` restarts of the checkpoint's scheme."""
    return run(load_model(path), obs, T).residual


def scores(result, label: str) -> dict[str, float]:
    mean = result.mean()
    return {"psnr": mean["psnr"][label], "ssim": mean["ssim"][label]}
