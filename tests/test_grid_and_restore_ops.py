"""train --grid, and restore/eval with inpainting and deblurring checkpoints (--mask, --kernel)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from retune_cli import checkpoint as ckpt
from retune_cli.cli import app
from retune_cli.config import resolve
from retune_cli.core.operators import ChannelBlur, build_physics
from retune_cli.errors import InputError
from retune_cli.grid import grid_configs, parse_grid
from retune_cli.images import read_image

WIDE = {"COLUMNS": "400"}
TINY = ["--steps", "1", "--crop", "32", "--batch-size", "1", "--K", "2", "--T", "2", "--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


def ok(result):
    assert result.exit_code == 0, result.output
    assert result.exception is None
    return result


def bad(result, *fragments):
    """Exit 2 with one line on stderr naming what is wrong."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def load_array(path: Path) -> np.ndarray:
    return read_image(path).numpy().transpose(1, 2, 0)


# --------------------------------------------------------------------------- parse_grid / grid_configs


def test_parse_grid():
    assert parse_grid("K=1,10 T=1,10") == {"train.K": [1, 10], "train.T": [1, 10]}
    assert parse_grid("  model.weights=bands,bands-channels   lr=0.01 ") == {
        "model.weights": ["bands", "bands-channels"],
        "train.lr": [0.01],
    }
    assert parse_grid("K=1,,2,") == {"train.K": [1, 2]}  # empty items are skipped
    assert parse_grid("gradient=retune,unrolled") == {"train.gradient": ["retune", "unrolled"]}


@pytest.mark.parametrize("text", ["K", "K=", "=1,2", "K=,", "K=1 T"])
def test_parse_grid_refuses_malformed_text(text):
    with pytest.raises(InputError, match="--grid"):
        parse_grid(text)


def test_grid_configs_names_and_values():
    base = resolve("denoise-wavelet-b", {"train.steps": 7})
    runs = grid_configs(base, parse_grid("K=1,10 T=1,5"))
    assert [name for name, _ in runs] == ["K1-T1", "K1-T5", "K10-T1", "K10-T5"]
    for name, config in runs:
        K, T = (int(part[1:]) for part in name.split("-"))
        assert (config.train.K, config.train.T) == (K, T)
        assert config.train.steps == 7 and config.preset == "denoise-wavelet-b"  # the rest is the base's
    assert (base.train.K, base.train.T) == (10, 10)  # the base config is not modified
    # a text value names itself; a number is named with its key
    [(name, config)] = grid_configs(base, parse_grid("model.weights=bands-channels"))
    assert name == "bands-channels" and config.model.weights == "bands-channels"
    runs = grid_configs(base, parse_grid("gradient=retune,deq K=2"))
    assert [name for name, _ in runs] == ["retune-K2", "deq-K2"]
    assert [(c.train.gradient, c.train.K) for _, c in runs] == [("retune", 2), ("deq", 2)]
    assert [c.train.lr for _, c in grid_configs(base, parse_grid("lr=1e-2,0.5"))] == [0.01, 0.5]


@pytest.mark.parametrize(("text", "key"), [("K=0,1", "train.K"), ("K=a", "train.K"), ("Q=1", "train.Q"),
                                           ("model.weights=stripes", "model.weights")])
def test_grid_configs_validate_every_combination(text, key):
    with pytest.raises(InputError, match=key):
        grid_configs(resolve("denoise-wavelet-b"), parse_grid(text))


# --------------------------------------------------------------------------- train --grid


def test_train_grid_runs_every_combination(image_folder, tmp_path):
    out = tmp_path / "grid"
    result = ok(invoke("train", "--grid", "K=1,2 T=1,2", "--steps", 2, "--crop", 32, "--batch-size", 1,
                       "--data", image_folder, "--out", out, "--device", "cpu"))
    names = ["K1-T1", "K1-T2", "K2-T1", "K2-T2"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == names
    for name in names:
        K, T = (int(part[1:]) for part in name.split("-"))
        loaded = ckpt.load(out / name / "theta.safetensors")
        assert (loaded.config.train.K, loaded.config.train.T) == (K, T)
        assert loaded.step == 2 and loaded.config.train.crop == 32 and loaded.config.train.batch_size == 1
        assert (out / name / "log.csv").read_text().count("\n") == 3  # header and two steps
        assert (out / name / "psnr.png").is_file() and (out / name / "config.yaml").is_file()
    assert (out / "psnr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "theta.safetensors").exists()
    assert "grid:" in result.stdout


@pytest.mark.parametrize(("grid", "fragment"), [("K", "--grid"), ("K=0,1", "train.K"), ("Q=1,2", "train.Q"),
                                                ("K=1 T=", "--grid"), ("K=a", "train.K")])
def test_train_bad_grid_exits_2(image_folder, tmp_path, grid, fragment):
    out = tmp_path / "grid"
    bad(invoke("train", "--grid", grid, *TINY, "--data", image_folder, "--out", out), fragment)
    assert not out.exists() or not any(out.rglob("theta.safetensors"))


@pytest.mark.parametrize("grid", ["K=[1", "physics.sigma=[0.1,0.2,0.3]"])
def test_train_grid_with_brackets_exits_2(image_folder, tmp_path, grid):
    bad(invoke("train", "--grid", grid, *TINY, "--data", image_folder, "--out", tmp_path / "g"), "--grid")


def test_train_grid_with_resume_exits_2(trained_run, tmp_path):
    checkpoint = trained_run / "theta.safetensors"
    before = checkpoint.read_bytes()
    bad(invoke("train", "--resume", checkpoint, "--grid", "K=1,2", "--out", tmp_path / "g", "--steps", 5), "--grid")
    assert checkpoint.read_bytes() == before
    assert not (tmp_path / "g").exists()


# --------------------------------------------------------------------------- inpainting and deblurring checkpoints


@pytest.fixture(scope="module")
def operator_runs(tmp_path_factory, image_folder) -> dict[str, Path]:
    """One-step runs of inpaint-wavelet and deblur-wavelet: name → checkpoint."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("operator-runs")
        runs = {}
        for name in ("inpaint", "deblur"):
            out = root / name
            ok(invoke("train", "--preset", f"{name}-wavelet", *TINY, "--data", image_folder, "--out", out))
            runs[name] = out / "theta.safetensors"
        return runs
    finally:
        torch.set_num_threads(threads)


def drawn_mask(shape: tuple[int, int], seed: int, keep: float = 0.1) -> np.ndarray:
    """The mask restore --simulate --seed draws for an image of ``shape`` (H, W): 1 = kept."""
    physics = build_physics("inpaint", sigma=[0.05], keep=keep)
    params = physics.draw((1, 3, *shape), seed)
    assert params["mask"].shape == (1, 1, *shape)
    return physics.A(torch.ones(1, 3, *shape), params)[0, 0].numpy()


def write_mask(path: Path, mask: np.ndarray) -> Path:
    Image.fromarray((mask * 255).astype(np.uint8)).save(path)
    return path


def test_inpainting_restore_needs_a_mask_or_simulate(operator_runs, image_folder, tmp_path):
    line = bad(invoke("restore", operator_runs["inpaint"], image_folder / "im0.png", "-o", tmp_path / "o.png"))
    assert "--mask" in line and "--simulate" in line
    assert not (tmp_path / "o.png").exists()


def test_inpainting_restore_with_a_known_mask(operator_runs, image_folder, tmp_path):
    checkpoint, clean = operator_runs["inpaint"], image_folder / "im0.png"
    ok(invoke("restore", checkpoint, clean, "--simulate", "--seed", 3, "-o", tmp_path / "sim.npy",
              "--save-observation", tmp_path / "obs.npy"))
    ok(invoke("restore", checkpoint, clean, "--simulate", "--seed", 3, "-o", tmp_path / "sim.png",
              "--save-observation", tmp_path / "obs.png"))
    mask = drawn_mask((40, 48), seed=3)
    assert 0.05 < mask.mean() < 0.2
    observation = np.load(tmp_path / "obs.npy")
    kept = mask.astype(bool)
    # on the kept pixels the observation is the clean image plus σ = 0.05 noise
    assert np.std(observation[kept] - load_array(clean)[kept]) == pytest.approx(0.05, rel=0.2)
    write_mask(tmp_path / "mask.png", mask)

    # the saved observation and its mask give back the simulated run's restoration
    ok(invoke("restore", checkpoint, tmp_path / "obs.npy", "--mask", tmp_path / "mask.png", "-o", tmp_path / "a.npy"))
    assert np.allclose(np.load(tmp_path / "a.npy"), np.load(tmp_path / "sim.npy"), rtol=0, atol=1e-5)
    ok(invoke("restore", checkpoint, tmp_path / "obs.png", "--mask", tmp_path / "mask.png", "-o", tmp_path / "b.png"))
    assert np.abs(load_array(tmp_path / "b.png") - load_array(tmp_path / "sim.png")).mean() < 0.01
    # --simulate with --mask degrades with the given mask (here the same one)
    ok(invoke("restore", checkpoint, clean, "--simulate", "--seed", 3, "--mask", tmp_path / "mask.png",
              "-o", tmp_path / "c.npy", "--save-observation", tmp_path / "obs_c.npy"))
    assert np.array_equal(np.load(tmp_path / "obs_c.npy"), observation)
    assert np.allclose(np.load(tmp_path / "c.npy"), np.load(tmp_path / "sim.npy"), rtol=0, atol=1e-6)
    # another mask gives another restoration
    write_mask(tmp_path / "other.png", drawn_mask((40, 48), seed=4))
    ok(invoke("restore", checkpoint, tmp_path / "obs.npy", "--mask", tmp_path / "other.png", "-o", tmp_path / "d.npy"))
    assert not np.allclose(np.load(tmp_path / "d.npy"), np.load(tmp_path / "a.npy"), atol=1e-3)


def test_mask_of_the_wrong_size_exits_2(operator_runs, image_folder, tmp_path):
    write_mask(tmp_path / "mask.png", np.ones((40, 40)))
    bad(invoke("restore", operator_runs["inpaint"], image_folder / "im0.png", "--mask", tmp_path / "mask.png",
               "-o", tmp_path / "o.png"), "--mask", "mask.png")
    assert not (tmp_path / "o.png").exists()


def test_mask_on_a_denoising_checkpoint_exits_2(trained_run, image_folder, tmp_path):
    write_mask(tmp_path / "mask.png", np.ones((40, 48)))
    bad(invoke("restore", trained_run / "theta.safetensors", image_folder / "im0.png", "--mask",
               tmp_path / "mask.png", "-o", tmp_path / "o.png"), "--mask", "denoise")


def test_deblurring_restore_with_a_kernel(operator_runs, image_folder, tmp_path):
    checkpoint, clean = operator_runs["deblur"], image_folder / "im1.png"
    np.save(tmp_path / "box.npy", np.full((5, 5), 1 / 25))
    ok(invoke("restore", checkpoint, clean, "--kernel", tmp_path / "box.npy", "-o", tmp_path / "a.npy"))
    assert np.load(tmp_path / "a.npy").shape == (40, 48, 3)
    # --simulate --kernel blurs with the given kernel: the observation is the 5×5 box blur plus σ = 0.05 noise
    ok(invoke("restore", checkpoint, clean, "--simulate", "--kernel", tmp_path / "box.npy", "-o", tmp_path / "b.npy",
              "--save-observation", tmp_path / "obs.npy"))
    image = read_image(clean).unsqueeze(0)
    physics = build_physics("deblur", sigma=[0.0], blur_width=5)
    box = physics.A(image, physics.operator_params(torch.full((5, 5), 1 / 25), image.shape))
    assert torch.equal(box, ChannelBlur([0.0], kernel=torch.full((5, 5), 1 / 25)).A(image))
    blurred = box[0].numpy().transpose(1, 2, 0)
    assert np.std(np.load(tmp_path / "obs.npy") - blurred) == pytest.approx(0.05, rel=0.2)
    ok(invoke("restore", checkpoint, clean, "--simulate", "-o", tmp_path / "c.npy",
              "--save-observation", tmp_path / "default.npy"))
    assert np.std(np.load(tmp_path / "default.npy") - blurred) > 0.06  # the checkpoint's own 25-wide blur


@pytest.mark.parametrize("content", ["text", "black png"])
def test_kernel_that_is_not_a_kernel_exits_2(operator_runs, image_folder, tmp_path, content):
    """Neither an .npy array nor an image, or a PSF image that is all black (a PSF image is read as a kernel)."""
    if content == "text":
        kernel = tmp_path / "k.txt"
        kernel.write_text("0.2 0.2 0.2 0.2 0.2\n")
    else:
        kernel = write_mask(tmp_path / "k.png", np.zeros((5, 5)))
    bad(invoke("restore", operator_runs["deblur"], image_folder / "im0.png", "--kernel", kernel,
               "-o", tmp_path / "o.png"), "--kernel", kernel.name)
    assert not (tmp_path / "o.png").exists()


def test_kernel_on_an_inpainting_checkpoint_exits_2(operator_runs, image_folder, tmp_path):
    np.save(tmp_path / "box.npy", np.full((5, 5), 1 / 25))
    bad(invoke("restore", operator_runs["inpaint"], image_folder / "im0.png", "--kernel", tmp_path / "box.npy"),
        "--kernel", "inpaint")


@pytest.mark.parametrize("case", ["kernel larger than the image", "image smaller than the checkpoint's blur",
                                  "crop smaller than blur_width"])
def test_blur_larger_than_the_image_exits_2(operator_runs, image_folder, tmp_path, case):
    checkpoint = operator_runs["deblur"]
    if case == "kernel larger than the image":
        np.save(tmp_path / "big.npy", np.full((64, 64), 1 / 64**2))
        args = ["restore", checkpoint, image_folder / "im0.png", "--kernel", tmp_path / "big.npy"]
    elif case == "image smaller than the checkpoint's blur":
        Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(tmp_path / "small.png")
        args = ["restore", checkpoint, tmp_path / "small.png"]
    else:
        args = ["train", "--preset", "deblur-wavelet", *TINY, "--crop", 16, "--data", image_folder]
    bad(invoke(*args, "-o" if args[0] == "restore" else "--out", tmp_path / "o.png"))


def test_eval_two_inpainting_checkpoints_share_the_observations(operator_runs, image_folder, tmp_path):
    first = operator_runs["inpaint"]
    loaded = ckpt.load(first)
    other = tmp_path / "other" / "theta.safetensors"
    ckpt.save(other, loaded.config, {k: v + 0.5 for k, v in loaded.parameters.items()}, loaded.step,
              loaded.train_psnr)
    same = tmp_path / "same" / "theta.safetensors"
    same.parent.mkdir()
    shutil.copy(first, same)

    def run(name, *checkpoints, seed=5):
        ok(invoke("eval", *checkpoints, "--data", image_folder, "--seed", seed, "--device", "cpu",
                  "--json", tmp_path / f"{name}.json"))
        return json.loads((tmp_path / f"{name}.json").read_text())

    a, b = run("a", first, other), run("b", first, other)
    assert a["checkpoints"] == ["inpaint", "other"]
    assert [r["psnr"]["observation"] for r in a["rows"]] == [r["psnr"]["observation"] for r in b["rows"]]
    assert a == b
    for row in a["rows"]:
        assert row["psnr"]["inpaint"] != row["psnr"]["other"]
        assert row["psnr"]["inpaint"] > row["psnr"]["observation"]
    # one mask per image for all checkpoints: the same θ under two names scores exactly the same
    twins = run("twins", first, same)
    for row, base in zip(twins["rows"], a["rows"]):
        assert row["psnr"]["inpaint"] == row["psnr"]["same"] == base["psnr"]["inpaint"]
        assert row["ssim"]["inpaint"] == row["ssim"]["same"]
        assert row["psnr"]["observation"] == base["psnr"]["observation"]
    other_seed = run("c", first, other, seed=6)
    assert [r["psnr"]["observation"] for r in other_seed["rows"]] != [r["psnr"]["observation"] for r in a["rows"]]
