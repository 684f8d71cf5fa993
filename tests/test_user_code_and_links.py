"""User code that breaks its contract, loops of links and ambiguous labels: one line, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from retune_cli.cli import app
from retune_cli.evaluate import checkpoint_labels
from tests.conftest import TINY_FLAGS

FACTORIES = '''
def none(shape):
    return None


def halves(shape):
    import deepinv as dinv
    return dinv.physics.Downsampling(img_size=tuple(shape), factor=2, filter=None, device="cpu")
'''


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


@pytest.mark.parametrize("function, says", [("none", "returned NoneType"), ("halves", "keep the image's shape")])
def test_a_factory_breaking_its_contract_is_one_line(function, says, image_folder, tmp_path):
    (tmp_path / "factories.py").write_text(FACTORIES)
    result = invoke("train", "--data", image_folder, "--out", tmp_path / "run", "--steps", 1, *TINY_FLAGS,
                    "--set", "physics.name=python", "--set", f"physics.factory={tmp_path / 'factories.py'}:{function}",
                    "--set", "model.step_rule=safe", "--trust-code")
    one_line_error(result, "in your code", function, says)


def test_a_loop_of_links_is_named(trained_run, image_folder, tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "c.png").symlink_to(tmp_path / "d.png")
    (tmp_path / "d.png").symlink_to(tmp_path / "c.png")
    checkpoint = trained_run / "theta.safetensors"
    one_line_error(invoke("restore", checkpoint, tmp_path / "a", "-o", tmp_path / "o.png"), "loop of symbolic links")
    one_line_error(invoke("restore", checkpoint, image_folder / "im0.png", "-o", tmp_path / "c.png"),
                   "loop of symbolic links")
    one_line_error(invoke("train", "--data", tmp_path / "a", "--out", tmp_path / "run", *TINY_FLAGS),
                   "loop of symbolic links")
    assert not (tmp_path / "run").exists()


def test_labels_of_one_runs_checkpoints_are_unique():
    run, other = Path("/runs/dn"), Path("/runs/dn2")
    assert checkpoint_labels([run / "theta.safetensors", other / "theta.safetensors"]) == ["dn", "dn2"]
    assert checkpoint_labels([run / "best.safetensors", run / "theta.safetensors"]) == ["dn/best", "dn/theta"]
