"""Reliability, tracebacks: a malformed file, an unwritable output, a bad number or an extreme checkpoint gives one
line naming the culprit and exit 2 — every reader and writer maps its failures where the file is read or written,
and outputs are checked before any computation."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import png
import pytest
import torch
from conftest import smooth_image
from PIL import Image
from reliability import (
    FAST,
    assert_survived,
    invoke,
    ok,
    one_line_error,
    refused_training,
    save_checkpoint,
    snapshot,
)
from safetensors.torch import save_file

from retune_cli import checkpoint as ckpt
from retune_cli import rundir

# --------------------------------------------------------------------------- malformed files


def _corrupt_16bit_png(path: Path) -> None:
    """A 16-bit PNG whose compressed pixels are garbage under a valid CRC: zlib fails, not the chunk reader."""
    rgb = smooth_image(np.random.default_rng(0), 12, 12)
    with open(path, "wb") as f:
        png.Writer(12, 12, greyscale=False, bitdepth=16).write(f, (rgb.astype(np.uint16) * 257).reshape(12, 36))
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    length = int.from_bytes(data[start - 8 : start - 4], "big")
    data[start + 2 : start + length] = bytes(length - 2)  # keep the zlib header, zero the deflate stream
    data[start + length : start + length + 4] = zlib.crc32(bytes(data[start - 4 : start + length])).to_bytes(4, "big")
    path.write_bytes(bytes(data))


def _huge_header_npy(path: Path) -> None:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (5, 5), " + " " * 20000 + "}\n"
    path.write_bytes(b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header.encode() + bytes(100))


def _promising_npy(path: Path) -> None:
    """A .npy header promising 10⁵×10⁵ floats over 100 bytes."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }"
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(100))


ARRAY_FILES = {
    "npz named .npy": lambda p: (np.savez(p.with_suffix(".npz"), a=np.ones((5, 5))), p.with_suffix(".npz").rename(p)),
    "structured dtype": lambda p: np.save(p, np.zeros((5, 5), dtype=[("a", "f4"), ("b", "i4")])),
    "complex dtype": lambda p: np.save(p, np.ones((5, 5), dtype=np.complex64)),
    "object dtype": lambda p: np.save(p, np.array([[1, "a"]], dtype=object), allow_pickle=True),
    "huge header": _huge_header_npy,
    "header promising more than the file": _promising_npy,
    "empty file": lambda p: p.write_bytes(b""),
}
IMAGE_FILES = {**ARRAY_FILES, "corrupt 16-bit PNG": _corrupt_16bit_png, "a folder": lambda p: p.mkdir()}
KERNEL_FILES = {
    **ARRAY_FILES,
    "4-D kernel of 2 images": lambda p: np.save(p, np.full((2, 3, 5, 5), 1 / 25)),
    "4-D kernel of 3×1 channels": lambda p: np.save(p, np.full((3, 1, 5, 5), 1 / 25)),
    "5-D kernel": lambda p: np.save(p, np.full((1, 1, 3, 5, 5), 1 / 25)),
    "4-D empty kernel": lambda p: np.save(p, np.zeros((1, 3, 0, 5))),
}


@pytest.fixture(scope="module")
def deblur_checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("deblur") / "theta.safetensors", "deblur-wavelet",
                           **{"physics.blur_width": 5})


@pytest.mark.parametrize("case", IMAGE_FILES)
def test_malformed_image_files(case, trained_run, tmp_path):
    image = tmp_path / ("image.png" if "PNG" in case else "image.npy")
    IMAGE_FILES[case](image)
    one_line_error(invoke("restore", trained_run / "theta.safetensors", image, "-o", tmp_path / "out.png"), str(image))
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("case", KERNEL_FILES)
def test_malformed_kernel_files(case, deblur_checkpoint, image_folder, tmp_path):
    kernel = tmp_path / "kernel.npy"
    KERNEL_FILES[case](kernel)
    args = ["restore", deblur_checkpoint, image_folder / "im0.png", "--kernel", kernel, "-o", tmp_path / "o.png"]
    result = invoke(*args)
    one_line_error(result, "--kernel", str(kernel))
    assert not (tmp_path / "o.png").exists()


# --------------------------------------------------------------------------- outputs, checked before computing

COMPARE = ["compare-grads", "--crop", 16, "--K", 1, "--T", 1, "--device", "cpu"]


def _read_only(path: Path) -> Path:
    path.write_text("kept")
    path.chmod(0o444)
    return path


OUTPUTS = {
    "eval --json a folder": lambda t, d: (["eval", t, "--data", d, "--json", d.parent], "--json"),
    "eval --json read-only": lambda t, d: (["eval", t, "--data", d, "--json", _read_only(d.parent / "r.json")],
                                           "read-only"),
    "eval --csv under a file": lambda t, d: (["eval", t, "--data", d, "--csv", _read_only(d.parent / "f") / "r.csv"],
                                             "is a file"),
    "compare-grads --json a folder": lambda t, d: ([*COMPARE, "--json", d], "--json"),
    "compare-grads --plot read-only": lambda t, d: ([*COMPARE, "--plot", _read_only(d.parent / "p.png")],
                                                    "read-only"),
    "compare-grads --json a FIFO": lambda t, d: ([*COMPARE, "--json", _fifo(d.parent / "f.json")], "regular file"),
}


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("case", OUTPUTS)
def test_unwritable_outputs_are_refused_before_computing(case, trained_run, image_folder, tmp_path):
    data = Path(shutil.copytree(image_folder, tmp_path / "data"))
    args, fragment = OUTPUTS[case](trained_run / "theta.safetensors", data)
    before = snapshot(tmp_path)
    one_line_error(invoke(*args), fragment)
    assert_survived(before)


@pytest.mark.parametrize("command", ["eval", "compare-grads"])
def test_outputs_in_missing_folders_are_made(command, trained_run, image_folder, tmp_path):
    target = tmp_path / "new" / "deeper"
    if command == "eval":
        ok(invoke("eval", trained_run / "theta.safetensors", "--data", image_folder, "--json", target / "r.json",
                  "--csv", target / "r.csv", "--device", "cpu"))
        assert json.loads((target / "r.json").read_text())["checkpoints"] == ["tiny"]
    else:
        ok(invoke(*COMPARE, "--json", target / "r.json", "--plot", target / "r.png"))
        assert (target / "r.png").stat().st_size > 0 and "rows" in json.loads((target / "r.json").read_text())
    assert sorted(p.name for p in target.iterdir()) == sorted(["r.csv" if command == "eval" else "r.png", "r.json"])


# --------------------------------------------------------------------------- the run folder


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


LOGS = {
    "binary": b"\x00\x01\x02\xff\xfe" * 40,
    "NUL in a row": b"step,loss,psnr,tau,seconds\n1,0.1,\x00,0.1,0.2\n",
    "no step column": b"loss,psnr\n0.1,20\n",
    "non-numeric step": b"step,loss,psnr,tau,seconds\nthree,0.1,20,0.1,0.2\n",
    "short row": b"step,loss,psnr,tau,seconds\n1,0.1\n",
    "not UTF-8": "step,psnr,seconds\n1,2é,3\n".encode("latin-1"),
}


@pytest.mark.parametrize("case", LOGS)
def test_corrupt_log_on_resume(case, run_copy):
    (run_copy / "log.csv").write_bytes(LOGS[case])
    before = snapshot(run_copy)
    one_line_error(invoke("train", "--resume", run_copy / "theta.safetensors", "--steps", 5), "log.csv")
    assert_survived(before)


def test_read_only_run_folder(run_copy):
    run_copy.chmod(0o555)
    try:
        before = snapshot(run_copy)
        one_line_error(invoke("train", "--resume", run_copy / "theta.safetensors", "--steps", 5), "read-only",
                       str(run_copy))
        assert_survived(before)
    finally:
        run_copy.chmod(0o755)


def _full_disk():
    raise OSError(errno.ENOSPC, "No space left on device")


class _FullLog(io.StringIO):
    def flush(self):
        _full_disk()


def _fill_disk_at(when: str, monkeypatch) -> None:
    """Writing ``when`` fails as on a full disk: the config's and the checkpoint's temporary files, or the log's
    appended rows."""
    if when == "log.csv":
        monkeypatch.setattr(rundir, "open", lambda path, mode="r", *a, **k: _FullLog() if mode == "a" else
                            open(path, mode, *a, **k), raising=False)
        return
    method = "write_bytes" if when == "theta.safetensors" else "write_text"
    real = getattr(Path, method)
    monkeypatch.setattr(Path, method, lambda self, *a, **k: _full_disk() if self.name.startswith(f".{when}.") else
                        real(self, *a, **k))


@pytest.mark.parametrize("when", ["config.yaml", "log.csv", "theta.safetensors"])
def test_full_disk_during_training(when, image_folder, tmp_path, monkeypatch):
    """The disk fills when the config is written, a row is logged, or at the first checkpoint: one line naming the
    file; no checkpoint, lock or temporary file is left."""
    _fill_disk_at(when, monkeypatch)
    out = tmp_path / "run"
    result = invoke("train", "--steps", 3, *FAST, "--data", image_folder, "--out", out, "--set",
                    "train.checkpoint_every=1")
    one_line_error(result, str(out / when), "No space left")
    assert not (out / "theta.safetensors").exists() and not (out / ".retune.lock").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- numbers and sizes


def test_eval_handles_images_smaller_than_the_ssim_window(trained_run, tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    for side in (1, 3, 5):
        Image.fromarray(smooth_image(np.random.default_rng(side), side, side + 2)).save(folder / f"s{side}.png")
    ok(invoke("eval", trained_run / "theta.safetensors", "--data", folder, "--json", tmp_path / "r.json",
              "--device", "cpu"))
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert len(rows) == 3 and all(np.isfinite(r["ssim"]["tiny"]) for r in rows)


BAD_NUMBERS = {
    "compare-grads --crop 0": ([*COMPARE, "--crop", 0], "--crop"),
    "compare-grads --crop -3": ([*COMPARE, "--crop", -3], "--crop"),
    "compare-grads --crop beyond the image": ([*COMPARE, "--crop", 4096], "--crop"),
    "compare-grads --tol -1": ([*COMPARE, "--tol", -1], "--tol"),
    "compare-grads --seed 2**63": ([*COMPARE, "--seed", 2**63], "--seed"),
    "restore --simulate --seed 2**64": (["restore", "CKPT", "IMAGE", "--simulate", "--seed", 2**64], "--seed"),
    "restore --seed -1": (["restore", "CKPT", "IMAGE", "--simulate", "--seed", -1], "--seed"),
}


@pytest.mark.parametrize("case", BAD_NUMBERS)
def test_bad_numbers_on_the_command_line(case, trained_run, image_folder, tmp_path):
    args, fragment = BAD_NUMBERS[case]
    given = {"CKPT": trained_run / "theta.safetensors", "IMAGE": image_folder / "im0.png"}
    one_line_error(invoke(*[given.get(a, a) for a in args], "-o" if args[0] == "restore" else "--json",
                          tmp_path / ("o.png" if args[0] == "restore" else "g.json")), fragment)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- absurd checkpoints and weights


ARCHITECTURES = {
    "negative channels": {"nc": [-16, 32, 64, 128], "nb": 2},
    "huge channels": {"nc": [10**6, 10**6, 10**6, 10**6], "nb": 2},
    "10⁸ blocks": {"nc": [16, 32, 64, 128], "nb": 10**8},
    "three levels": {"nc": [16, 32, 64], "nb": 2},
    "text counts": {"nc": ["16", 32, 64, 128], "nb": 2},
    "not JSON": "{nc: [16",
}


@pytest.mark.parametrize("case", ARCHITECTURES)
def test_pnp_weights_with_absurd_architecture(case, image_folder, tmp_path):
    arch = ARCHITECTURES[case]
    weights = tmp_path / "w.safetensors"
    save_file({"m_head.weight": torch.zeros(16, 4, 3, 3)}, str(weights),
              metadata={"architecture": arch if isinstance(arch, str) else json.dumps(arch)})
    refused_training(image_folder, tmp_path / "run", "--preset", "inpaint-pnp", "--set", f"model.denoiser={weights}",
                     fragments=(str(weights),))


OPTIMIZER_STATES = {
    "float64 moments": lambda o, k: o | {f"{k}.exp_avg": o[f"{k}.exp_avg"].double()},
    "negative step": lambda o, k: o | {f"{k}.step": torch.tensor(-3.0)},
    "NaN step": lambda o, k: o | {f"{k}.step": torch.tensor(float("nan"))},
    "NaN moment": lambda o, k: o | {f"{k}.exp_avg": torch.full_like(o[f"{k}.exp_avg"], float("nan"))},
    "negative second moment": lambda o, k: o | {f"{k}.exp_avg_sq": -torch.ones_like(o[f"{k}.exp_avg_sq"])},
}


@pytest.mark.parametrize("case", OPTIMIZER_STATES)
def test_resume_refuses_a_malformed_optimizer_state(case, run_copy):
    path = run_copy / "theta.safetensors"
    loaded = ckpt.load(path)
    name = sorted(loaded.parameters)[0]
    optimizer = OPTIMIZER_STATES[case](dict(loaded.optimizer), name)
    ckpt.save(path, loaded.config, loaded.parameters, loaded.step, loaded.train_psnr, optimizer, loaded.data)
    before = snapshot(run_copy)
    one_line_error(invoke("train", "--resume", path, "--steps", 5), str(path), "optimizer state")
    assert_survived(before)


@pytest.mark.parametrize("command", ["restore", "eval", "compare-grads"])
def test_a_theta_so_extreme_that_no_step_exists(command, image_folder, tmp_path):
    path = save_checkpoint(tmp_path / "extreme" / "theta.safetensors", theta=1000.0)
    args = {
        "restore": ["restore", path, image_folder / "im0.png", "-o", tmp_path / "o.png"],
        "eval": ["eval", path, "--data", image_folder, "--json", tmp_path / "r.json"],
        "compare-grads": [*COMPARE, "--checkpoint", path, "--json", tmp_path / "g.json"],
    }[command]
    one_line_error(invoke(*args, "--device", "cpu"), str(path), "no valid step")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extreme"]



class _Pickled:
    """Not a tensor: torch's weights-only loader refuses to unpickle it."""


def test_denoiser_weights_pickling_python_objects_are_one_plain_line(image_folder, tmp_path):
    weights = tmp_path / "model.pth"
    torch.save({"net": _Pickled()}, weights)
    refused_training(image_folder, tmp_path / "run", "--preset", "inpaint-pnp", "--set", f"model.denoiser={weights}",
                     fragments=(str(weights), "state_dict"))
