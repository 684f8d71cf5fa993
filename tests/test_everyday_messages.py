"""Everyday messages: presets and defaults in --help, SIGTERM named as such, n/a for an unknown δ."""

from __future__ import annotations

import io
import os
import signal
from types import SimpleNamespace

import pytest
from rich.console import Console
from typer.testing import CliRunner

from retune_cli.cli import app
from retune_cli.commands import common
from retune_cli.commands.gradients import _gradient_table
from retune_cli.yamlfiles import preset_names


@pytest.mark.parametrize("command", ["train", "compare-grads"])
def test_help_lists_every_preset(command):
    out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"}).output
    assert all(name in out for name in preset_names())


def test_train_help_shows_defaults_and_steps_as_a_total():
    out = " ".join(CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"}).output.split())
    assert "default: the preset's, e.g. 10" in out and "Adam steps in all, also when resuming" in out


def test_sigterm_is_not_called_ctrl_c(capsys):
    with common.graceful_stop() as should_stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert should_stop()
    err = capsys.readouterr().err
    assert "SIGTERM: stopping after this step" in err and not err.startswith("Ctrl-C")


def test_unknown_contraction_is_na_not_nan():
    result = SimpleNamespace(gradients={"deq": [1.0]}, rows=[], delta=[{"K": 1, "theory": float("nan"),
                                                                          "measured": 0.5}])
    buffer = io.StringIO()
    Console(file=buffer, width=200).print(_gradient_table(result))
    assert "K=1: n/a / 0.5" in buffer.getvalue() and "nan" not in buffer.getvalue()


def test_more_steps_continues_a_resumed_run(trained_run, image_folder, tmp_path):
    import shutil

    from retune_cli import checkpoint as ckpt

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    tiny = ["--device", "cpu"]
    result = CliRunner().invoke(app, list(map(str, ["train", "--resume", run / "theta.safetensors", "--more-steps", 2,
                                                    *tiny])), env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert ckpt.load(run / "theta.safetensors").step == 5  # 3 + 2
    for args in (["--more-steps", 2], ["--resume", run / "theta.safetensors", "--more-steps", 2, "--steps", 9]):
        bad = CliRunner().invoke(app, list(map(str, ["train", *args, *tiny, "--out", tmp_path / "x"])))
        assert bad.exit_code == 2 and "--more-steps N continues a --resume run" in bad.output
