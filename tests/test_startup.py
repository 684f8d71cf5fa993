"""Start-up: the commands that only read a checkpoint or a config import neither deepinv nor matplotlib,
and an unknown preset is refused before torch is imported (what each command imports, not its timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from retune_cli import checkpoint as ckpt
from retune_cli.config import resolve
from retune_cli.models import build_scheme

HEAVY = ("torch", "deepinv", "matplotlib")

# Runs the CLI in a fresh interpreter and prints, as its last line, which of HEAVY it imported.
RUN = f"HEAVY = {HEAVY!r}\n" + """
import json, sys
from retune_cli.cli import app
code = 0
try:
    app(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "imported": [m for m in HEAVY if m in sys.modules]}))
"""


def run_cli(*args) -> tuple[int, set[str], str]:
    """``(exit code, heavy modules imported, stderr)`` of ``retune ARGS`` in a subprocess."""
    result = subprocess.run([sys.executable, "-c", RUN, *map(str, args)], capture_output=True, text=True,
                            env=os.environ | {"COLUMNS": "200"}, timeout=300)
    assert result.stdout.strip(), result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["code"], set(report["imported"]), result.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A denoise-wavelet-b checkpoint at its start (no training, no run folder)."""
    config = resolve("denoise-wavelet-b")
    path = tmp_path_factory.mktemp("startup") / "theta.safetensors"
    ckpt.save(path, config, ckpt.learned_parameters(build_scheme(config)), 0, 20.0)
    return path


def test_cli_module_imports_nothing_heavy():
    code = f"import json, sys, retune_cli.cli; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_show_reads_a_checkpoint_without_deepinv_or_matplotlib(checkpoint):
    code, imported, stderr = run_cli("show", checkpoint)
    assert code == 0, stderr
    assert imported == {"torch"}  # θ in natural units: the prior's own describe(), in torch


def test_unknown_preset_is_refused_before_torch():
    code, imported, stderr = run_cli("train", "--preset", "nope")
    assert code == 2 and "unknown preset 'nope'" in stderr
    assert imported == set()


def test_malformed_set_is_refused_before_torch():
    code, imported, stderr = run_cli("train", "--set", "bogus.x=1")
    assert code == 2 and "unknown section 'bogus'" in stderr
    assert imported == set()


def test_config_error_imports_neither_deepinv_nor_matplotlib():
    code, imported, stderr = run_cli("train", "--set", "model.bogus=1")
    assert code == 2 and "unknown key model.bogus" in stderr
    assert imported <= {"torch"}  # a prior's keys are its class's: the registry is the engine's
