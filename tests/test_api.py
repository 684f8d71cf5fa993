"""The Python API: retune_cli.load → Restorer (nn.Module), to_deepinv, retune_cli.fit on any Dataset."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import deepinv as dinv
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import retune_cli
from retune_cli.core.physics import ChannelGaussianNoise
from retune_cli.errors import InputError
from retune_cli.images import read_image
from retune_cli.restore import load_model, run

ROOT = Path(__file__).resolve().parents[1]
SIGMA = [0.10, 0.25, 0.50]


def test_load_is_a_module_that_restores_any_size_as_the_cli_does(trained_run):
    path = trained_run / "theta.safetensors"
    restorer = retune_cli.load(path)
    assert isinstance(restorer, torch.nn.Module) and restorer.device == torch.device("cpu")
    y = torch.rand(3, 37, 51)
    x = restorer(y)
    assert x.shape == y.shape and x.dtype == torch.float32
    expected = run(load_model(path), y.unsqueeze(0)).x[0]  # what `retune restore` computes
    torch.testing.assert_close(x, expected)
    batch = restorer(torch.stack([y, y]).double())
    assert batch.shape == (2, 3, 37, 51) and batch.dtype == torch.float64
    assert {n for n, _ in restorer.named_parameters()} >= {"scheme.theta.log_lambda"}


def test_restorer_options_and_bad_input(trained_run):
    path = trained_run / "theta.safetensors"
    y = torch.rand(3, 32, 32)
    assert not torch.equal(retune_cli.load(path, T=1)(y), retune_cli.load(path, T=5)(y))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        retune_cli.load(path)(torch.rand(32, 32))
    with pytest.raises(InputError, match="config.yaml is not a readable safetensors file"):
        retune_cli.load(trained_run / "config.yaml")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_restorer_follows_its_device(trained_run):
    restorer = retune_cli.load(trained_run / "theta.safetensors").to("cuda")
    assert restorer(torch.rand(3, 32, 32)).device.type == "cpu"
    assert restorer(torch.rand(3, 32, 32, device="cuda")).device.type == "cuda"


def test_to_deepinv_runs_in_deepinvs_test_loop(trained_run, image_folder):
    restorer = retune_cli.load(trained_run / "theta.safetensors")
    model = restorer.to_deepinv()
    assert isinstance(model, dinv.models.Reconstructor)
    clean = torch.stack([read_image(p) for p in sorted(image_folder.glob("*.png"))])
    physics = dinv.physics.Denoising(ChannelGaussianNoise(SIGMA))
    scores = dinv.test(model, DataLoader(clean, batch_size=2), physics, online_measurements=True,
                       show_progress_bar=False, verbose=False, non_blocking_transfers=False)
    assert scores["PSNR"] > scores["PSNR no learning"]


class Crops(Dataset):
    """A user's Dataset: (image, label) pairs."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], 0


def test_fit_on_a_dataset_equals_the_cli_on_the_same_images(image_folder, tiny_overrides, tmp_path, trained_run):
    clean = torch.stack([read_image(p) for p in sorted(image_folder.glob("*.png"))])
    restorer = retune_cli.fit("denoise-wavelet-b", Crops(clean), out=tmp_path / "nb", overrides=tiny_overrides)
    assert (tmp_path / "nb" / "log.csv").is_file() and restorer.checkpoint.step == 3
    cli = retune_cli.load(trained_run / "theta.safetensors")  # same images, settings and seed
    torch.testing.assert_close(restorer.scheme.theta.log_lambda, cli.scheme.theta.log_lambda)
    steps = []
    retune_cli.fit(restorer.config, [c[:1] for c in clean], out=tmp_path / "gray", on_step=steps.append)
    assert [s.step for s in steps] == [1, 2, 3]


def test_fit_refuses_bad_data_naming_the_item(tiny_overrides, tmp_path):
    with pytest.raises(InputError, match="dataset item 1"):
        retune_cli.fit("denoise-wavelet-b", [torch.rand(3, 40, 40), torch.rand(40, 40)], out=tmp_path / "a",
                       overrides=tiny_overrides)
    with pytest.raises(InputError, match="dataset item 0 is 20×20, smaller than the crop 32"):
        retune_cli.fit("denoise-wavelet-b", TensorDataset(torch.rand(2, 3, 20, 20)), out=tmp_path / "b",
                       overrides=tiny_overrides)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_import_stays_light_and_names_the_api():
    code = "import sys, retune_cli; assert 'torch' not in sys.modules; print(retune_cli.API)"
    assert "load" in subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    with pytest.raises(AttributeError):
        retune_cli.nothing  # noqa: B018


@pytest.mark.slow
def test_api_example_runs(capsys):
    runpy.run_path(str(ROOT / "examples" / "api_example.py"), run_name="__main__")
    assert "deepinv.test: PSNR" in capsys.readouterr().out


def test_an_inpainting_restorer_takes_its_mask(tmp_path):
    from retune_cli import checkpoint as ckpt
    from retune_cli.config import resolve
    from retune_cli.models import build_scheme

    config = resolve("inpaint-wavelet", {"train.T": 2})
    path = tmp_path / "inpaint.safetensors"
    ckpt.save(path, config, ckpt.learned_parameters(build_scheme(config)), 0, 0.0)
    restorer = retune_cli.load(path)
    y = torch.rand(3, 32, 32)
    with pytest.raises(ValueError, match="inpaint.*'mask'"):
        restorer(y)
    known = (torch.rand(1, 1, 32, 32) < 0.5).float()
    assert restorer(y * known[0], {"mask": known}).shape == (3, 32, 32)
