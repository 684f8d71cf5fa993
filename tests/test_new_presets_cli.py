"""The presets of issue 11 through the CLI: train (1 step, tiny), restore --simulate, eval, compare-grads,
--grid over schemes, ``restore --scale`` for super-resolution, and the custom-physics example end to end
(``examples/demosaic-wavelet.yaml``, whose checkpoint runs user code: refused without ``--trust-code``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from PIL import Image
from reliability import invoke, ok, one_line_error

REPO = Path(__file__).resolve().parents[1]
TINY = ["--steps", "1", "--crop", "32", "--batch-size", "1", "--K", "1", "--T", "1", "--device", "cpu"]
NEW_PRESETS = ["sr2-wavelet", "sr4-wavelet", "sr4-pnp", "inpaint-wavelet-drs", "deblur-wavelet-drs",
               "inpaint-pnp-hqs", "deblur-pnp-hqs", "sr4-pnp-hqs"]
# compare-grads' finite differences cost 2·d fixed points to 1e-14 in float64: these keep d = 5 (θ_B on 2
# levels) and the fixed point quick to reach on a 16×16 crop, with groups left active (a λ so large that every
# detail group is zero gives a zero gradient and nothing to compare).
COMPARE = {
    "deblur-wavelet-drs": {"physics": {"blur_width": 3}, "model": {"init_lambda": 0.5}},
    "sr2-wavelet": {"model": {"init_lambda": 0.05}},
    "inpaint-wavelet-drs": {"physics": {"keep": 0.5}, "model": {"init_lambda": 0.1}},
    "sr4-wavelet": {"model": {"init_lambda": 0.05}},
}
SLOW_COMPARE = {"sr4-wavelet"}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """The commands set torch's threads to the cores available; on a shared machine one is much faster
    for these tiny tensors (as conftest's fixture does for in-process tests)."""
    monkeypatch.setenv("RETUNE_THREADS", "1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, image_folder):
    """``trained(preset)``: the folder of a 1-step run of ``preset`` on the tiny images (cached)."""
    root = tmp_path_factory.mktemp("new-presets")
    done: dict[str, Path] = {}

    def run(preset: str) -> Path:
        if preset not in done:
            out = root / preset
            ok(invoke("train", "--preset", preset, *TINY, "--data", image_folder, "--out", out))
            done[preset] = out
        return done[preset]

    return run


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size  # (W, H)


@pytest.mark.parametrize("preset", NEW_PRESETS)
def test_new_preset_trains_restores_and_evaluates(preset, trained, image_folder, tmp_path):
    run = trained(preset)
    checkpoint = run / "theta.safetensors"
    assert checkpoint.is_file() and (run / "log.csv").is_file()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["preset"] == preset
    assert config["train"]["steps"] == 1

    out = tmp_path / "out.png"
    result = ok(invoke("restore", checkpoint, image_folder / "im0.png", "--simulate", "-o", out,
                       "--save-observation", tmp_path / "obs.png", "--device", "cpu"))
    assert "PSNR" in result.output
    assert size_of(out) == (48, 40)  # the 48×40 clean image: its sides are multiples of 2 and 4
    factor = config["physics"]["factor"] if config["physics"]["name"] == "sr" else 1
    assert size_of(tmp_path / "obs.png") == (48 // factor, 40 // factor)

    ok(invoke("eval", checkpoint, "--data", image_folder, "--json", tmp_path / "eval.json", "--device", "cpu"))
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert [r["image"] for r in rows] == ["im0.png", "im1.png", "im2.png"]
    for r in rows:
        assert all(math.isfinite(v) for v in r["psnr"].values())
        if factor > 1:  # the baseline is bicubic upsampling of y (≈ 17–22 dB here), not the zero-filled Aᵀy
            assert r["psnr"]["observation"] > 12


def small_preset(preset: str, folder: Path) -> Path:
    """The built-in preset's YAML with :data:`COMPARE`'s changes (θ_B on 2 levels), as a file."""
    data = yaml.safe_load((REPO / "presets" / f"{preset}.yaml").read_text())
    data["model"].update(weights="bands", levels=2, init="paper")  # COMPARE's λ
    for section, values in COMPARE[preset].items():
        data[section].update(values)
    path = folder / f"{preset}-small.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_COMPARE else p
                                    for p in COMPARE])
def test_compare_grads_on_new_wavelet_presets(preset, tmp_path):
    """float64, 16×16 crop, K ∈ {1, 2}, T ∈ {1, 2}: every row is there, DEQ agrees with finite differences
    (sr4: at a 16×16 crop the details are in A's null space, x̂ does not depend on θ and the gradient is ~0:
    only the run is checked; its fixed point takes ~2000 restarts, hence slow)."""
    out = tmp_path / "grads.json"
    ok(invoke("compare-grads", "--preset", small_preset(preset, tmp_path), "--crop", "16", "--K", "1,2",
              "--T", "1,2", "--device", "cpu", "--json", out))
    data = json.loads(out.read_text())
    rows = {(r["method"], r["K"], r["T"]): r for r in data["rows"]}
    assert {("deq", 1, None), ("fd", None, None), ("jfb", 2, None), ("retune", 2, 2), ("unrolled", 1, 1)} <= set(rows)
    assert len(data["theta_names"]) == 5  # θ_B: 2 scales + 3 bands
    assert data["solver"]["fixed_point_residual"] <= 1e-14
    if preset != "sr4-wavelet":
        assert max(abs(v) for v in data["gradients"]["fd"]) > 1e-6  # a gradient worth comparing
        assert rows["deq", 1, None]["rel_err_fd"] <= 1e-5


@pytest.mark.parametrize(("preset", "grid", "names"), [
    ("inpaint-wavelet", "model.scheme=fb,drs", ("fb", "drs")),
    ("inpaint-pnp", "model.scheme=fb,hqs", ("fb", "hqs")),
])
def test_grid_over_schemes(preset, grid, names, image_folder, tmp_path):
    out = tmp_path / "grid"
    ok(invoke("train", "--preset", preset, "--grid", grid, *TINY, "--data", image_folder, "--out", out))
    for name in names:
        assert (out / name / "theta.safetensors").is_file(), sorted(p.name for p in out.iterdir())
        assert yaml.safe_load((out / name / "config.yaml").read_text())["model"]["scheme"] == name
    assert (out / "psnr.png").is_file()


def test_sr4_restore_scale_upsamples_a_real_low_resolution_image(trained, tmp_path):
    checkpoint = trained("sr4-wavelet") / "theta.safetensors"
    low = tmp_path / "low.png"
    Image.new("RGB", (12, 10), (90, 140, 200)).save(low)
    out = tmp_path / "high.png"
    ok(invoke("restore", checkpoint, low, "--scale", "4", "-o", out, "--device", "cpu"))
    assert size_of(out) == (48, 40)
    # the same without --scale (it only checks the factor)
    ok(invoke("restore", checkpoint, low, "-o", tmp_path / "plain.png", "--device", "cpu"))
    assert size_of(tmp_path / "plain.png") == (48, 40)
    one_line_error(invoke("restore", checkpoint, low, "--scale", "2", "-o", tmp_path / "x.png", "--device", "cpu"),
                   "--scale 2")
    assert not (tmp_path / "x.png").exists()


def test_sr4_restore_refuses_a_too_small_observation(trained, tmp_path):
    """A 3×3 observation stands for a 12×12 image, smaller than the 16×16 bicubic filter: refused by name."""
    low = tmp_path / "tiny.png"
    Image.new("RGB", (3, 3), (90, 140, 200)).save(low)
    one_line_error(invoke("restore", trained("sr4-wavelet") / "theta.safetensors", low, "--scale", "4", "-o",
                          tmp_path / "x.png", "--device", "cpu"), "tiny.png")


def test_sr4_pnp_restore_scale(trained, tmp_path):
    checkpoint = trained("sr4-pnp") / "theta.safetensors"
    low = tmp_path / "low.png"
    Image.new("RGB", (8, 8), (30, 60, 90)).save(low)
    out = tmp_path / "high.png"
    ok(invoke("restore", checkpoint, low, "--scale", "4", "-o", out, "--device", "cpu"))
    assert size_of(out) == (32, 32)


def test_scale_on_a_checkpoint_that_does_not_upsample_is_refused(trained, image_folder, tmp_path):
    checkpoint = trained("deblur-wavelet-drs") / "theta.safetensors"
    one_line_error(invoke("restore", checkpoint, image_folder / "im0.png", "--scale", "4", "-o", tmp_path / "x.png",
                          "--device", "cpu"), "--scale 4")


def test_custom_physics_example_trains_and_restores(monkeypatch, image_folder, tmp_path):
    """examples/demosaic-wavelet.yaml names examples/demosaic_physics.py:bayer relative to the working
    folder: run from the repository's root. Its checkpoint runs that code when loaded, so restore refuses
    it without --trust-code."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "demosaic"
    ok(invoke("train", "--preset", "examples/demosaic-wavelet.yaml", "--steps", "2", "--crop", "32", "--batch-size",
              "2", "--K", "2", "--T", "2", "--device", "cpu", "--data", image_folder, "--out", out))
    checkpoint = out / "theta.safetensors"
    assert checkpoint.is_file()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["physics"]["name"] == "python"
    assert config["physics"]["factory"] == "examples/demosaic_physics.py:bayer"

    restored = tmp_path / "out.png"
    one_line_error(invoke("restore", checkpoint, image_folder / "im0.png", "--simulate", "-o", restored,
                          "--device", "cpu"), "--trust-code")
    assert not restored.exists()
    result = ok(invoke("restore", checkpoint, image_folder / "im0.png", "--simulate", "--trust-code", "-o", restored,
                       "--device", "cpu"))
    assert "PSNR" in result.output
    assert size_of(restored) == (48, 40)


MARKED_FACTORY = """
from pathlib import Path

Path(__file__).with_name("imported.marker").write_text("ran")


def bayer(shape):
    from deepinv.physics import Demosaicing

    return Demosaicing(img_size=shape, pattern="bayer")
"""


def test_a_checkpoint_never_runs_user_code_without_trust_code(image_folder, tmp_path):
    """The user's module is imported when the user names it in a config (train), never when a checkpoint
    names it (restore, eval, compare-grads, train --resume) unless --trust-code is given: refused with one
    line, before the module runs."""
    factory = tmp_path / "marked_physics.py"
    factory.write_text(MARKED_FACTORY)
    marker = tmp_path / "imported.marker"
    data = yaml.safe_load((REPO / "examples" / "demosaic-wavelet.yaml").read_text())
    data["physics"]["factory"] = f"{factory}:bayer"
    preset = tmp_path / "marked.yaml"
    preset.write_text(yaml.safe_dump(data, allow_unicode=True))
    out = tmp_path / "run"
    ok(invoke("train", "--preset", preset, *TINY, "--data", image_folder, "--out", out))
    assert marker.is_file()  # the named config ran it
    marker.unlink()
    checkpoint = out / "theta.safetensors"
    image = image_folder / "im0.png"
    refused = [
        ("restore", checkpoint, image, "--simulate", "-o", tmp_path / "o.png", "--device", "cpu"),
        ("eval", checkpoint, "--data", image_folder, "--device", "cpu"),
        ("compare-grads", "--checkpoint", checkpoint, "--crop", "16", "--K", "1", "--T", "1", "--device", "cpu"),
        ("train", "--resume", checkpoint, "--steps", "2", "--device", "cpu"),
    ]
    for args in refused:
        one_line_error(invoke(*args), "--trust-code")
        assert not marker.exists(), args[0]
    ok(invoke("eval", checkpoint, "--data", image_folder, "--device", "cpu", "--trust-code"))
    assert marker.is_file()


def test_custom_physics_example_with_compare_grads(monkeypatch, tmp_path):
    """A config the user names may run its code: compare-grads --preset with the example (float64, 16×16,
    θ_B on 2 levels as above)."""
    monkeypatch.chdir(REPO)
    data = yaml.safe_load((REPO / "examples" / "demosaic-wavelet.yaml").read_text())
    data["model"].update(weights="bands", levels=2, init="paper", init_lambda=0.05)
    preset = tmp_path / "demosaic-small.yaml"
    preset.write_text(yaml.safe_dump(data, allow_unicode=True))
    out = tmp_path / "grads.json"
    ok(invoke("compare-grads", "--preset", preset, "--crop", "16", "--K", "1", "--T", "1", "--device", "cpu",
              "--json", out))
    data = json.loads(out.read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert max(abs(v) for v in data["gradients"]["fd"]) > 1e-6
    assert rows["deq"]["rel_err_fd"] <= 1e-5
