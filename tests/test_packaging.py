"""The built-in presets live in the repository's top-level ``presets/`` and ship as ``retune_cli/presets``."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPO_PRESETS = sorted(p.stem for p in (ROOT / "presets").glob("*.yaml"))
# What the wheel is built from; the rest (virtualenv, runs, caches, build outputs) stays behind.
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "runs", "shared"
)


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    """The file list of a wheel built from a copy of the repository (the build writes build/ beside pyproject.toml)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source, out = tmp / "source", tmp / "dist"
    shutil.copytree(ROOT, source, ignore=SKIP)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out)]
    proc = subprocess.run([*cmd, str(source)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("retune_cli-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def test_repo_has_presets():
    assert "denoise-wavelet-b" in REPO_PRESETS
    assert not (ROOT / "retune_cli" / "presets").exists(), "presets moved to the repository's presets/ folder"


def test_wheel_ships_every_preset(wheel_names):
    missing = [n for n in REPO_PRESETS if f"retune_cli/presets/{n}.yaml" not in wheel_names]
    assert not missing, f"presets missing from the wheel: {missing}"
    assert "retune_cli/presets/__init__.py" in wheel_names
    assert not any(n.startswith("presets/") for n in wheel_names), "presets/ must not install as a top-level folder"


def test_wheel_ships_every_module(wheel_names):
    """pyproject.toml lists the packages by hand: a new subpackage of retune_cli/ must be added there."""
    modules = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "retune_cli").rglob("*.py"))
    missing = [m for m in modules if m not in wheel_names]
    assert not missing, f"modules missing from the wheel (add their package to [tool.setuptools] packages): {missing}"


def test_installed_presets_match_repo():
    from retune_cli import config, yamlfiles

    assert yamlfiles.preset_names() == REPO_PRESETS
    for name in REPO_PRESETS:
        assert (yamlfiles.preset_dir() / f"{name}.yaml").is_file()
        assert config.resolve(name).preset == name
