"""Reliability, messages: every error — usage errors included — is one `error:` line on stderr with exit 2; no
newline, Rich markup or undecodable byte inside it breaks that, and library warnings do not reach the user."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from conftest import smooth_image
from reliability import WAIT, WIDE, invoke, ok, one_line_error

from retune_cli.commands.common import MAX_MESSAGE

USAGE = {
    "not an integer": (["train", "--K", "x"], "--K"),
    "not a number": (["train", "--lr", "fast"], "--lr"),
    "a float for an integer": (["compare-grads", "--crop", "1.5"], "--crop"),
    "missing argument": (["eval"], "checkpoints"),
    "missing second argument": (["restore", "theta.safetensors"], "image"),
    "unknown option": (["restore", "--nope"], "--nope"),
    "unknown command": (["retrain"], "retrain"),
    "option without its value": (["train", "--steps"], "--steps"),
    "seed beyond 2⁶³": (["restore", "c.safetensors", "i.png", "--seed", str(2**64)], "--seed"),
}


@pytest.mark.parametrize("case", USAGE)
def test_usage_errors_are_one_line(case):
    args, fragment = USAGE[case]
    result = invoke(*args)
    line = one_line_error(result, fragment)
    assert "--help" in line and "Usage" not in result.output and "╭" not in result.output


def test_a_usage_error_in_a_real_process_is_one_line():
    result = subprocess.run([sys.executable, "-m", "retune_cli", "train", "--K", "ten"], capture_output=True,
                            text=True, env=os.environ | WIDE, timeout=WAIT)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "--K" in result.stderr, result.stderr


def test_help_and_version_still_work():
    assert "Usage" in ok(invoke("train", "--help")).output
    assert "retune" in ok(invoke("--version")).output
    assert invoke().exit_code == 2  # no arguments: the help, as before


ODD_NAMES = {
    "a newline": "two\nlines.png",
    "Rich markup": "x[/]y[bold]z.png",
    "bytes that are not UTF-8": os.fsdecode(b"caf\xe9.png"),
    "a name too long for the file system": "n" * 300 + ".png",
}


@pytest.mark.parametrize("case", ODD_NAMES)
def test_odd_file_names_in_a_message(case, trained_run, tmp_path):
    image = tmp_path / ODD_NAMES[case]
    line = one_line_error(invoke("restore", trained_run / "theta.safetensors", image, "-o", tmp_path / "o.png"))
    if case == "Rich markup":
        assert "x[/]y[bold]z.png" in line
    if case == "bytes that are not UTF-8":
        assert "caf\ufffd.png" in line
    if case == "a newline":
        assert "two lines.png" in line


def test_a_long_value_is_shortened(image_folder, tmp_path):
    values = ",".join(str(i) for i in range(20_000))
    line = one_line_error(invoke("train", "--set", f"train.K=[{values}]", "--data", image_folder,
                                 "--out", tmp_path / "run"), "train.K")
    assert len(line) < 300


def test_a_message_longer_than_the_limit_is_cut(trained_run, tmp_path):
    deep = tmp_path.joinpath(*["d" * 200] * 8, "image.png")  # a path of 1600 characters, too long a message
    line = one_line_error(invoke("restore", trained_run / "theta.safetensors", deep, "-o", tmp_path / "o.png"))
    assert len(line) == len("error: ") + MAX_MESSAGE and line.endswith("…")


@pytest.mark.parametrize("bits", [8, 16])
def test_tifffile_warnings_do_not_reach_stderr(bits, trained_run, tmp_path):
    """A TIFF with a broken tag: tifffile logs about it. A 16-bit one still reads (stderr stays empty); an 8-bit one
    Pillow refuses (one line, nothing of tifffile's)."""
    tiff = tmp_path / "odd.tif"
    rgb = smooth_image(np.random.default_rng(1), 40, 48)
    tifffile.imwrite(tiff, rgb.astype(np.uint16) * 257 if bits == 16 else rgb, photometric="rgb")
    data = bytearray(tiff.read_bytes())
    data[174 if bits == 16 else 99] ^= 0xFF  # ResolutionUnit (16 bits), SamplesPerPixel's offset (8 bits)
    tiff.write_bytes(bytes(data))
    result = invoke("restore", trained_run / "theta.safetensors", tiff, "-o", tmp_path / "o.png")
    if bits == 16:
        assert ok(result).stderr == ""
    else:
        assert "TiffTag" not in one_line_error(result, str(tiff))
