"""Progress while restoring, evaluating and comparing gradients: callbacks, streamed eval rows, bars."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from retune_cli import checkpoint as ckpt
from retune_cli.cli import app
from retune_cli.commands import common
from retune_cli.config import resolve
from retune_cli.evaluate import evaluate
from retune_cli.gradients import compare_gradients
from retune_cli.models import build_scheme
from retune_cli.restore import load_model, restore_file, run

WIDE = {"COLUMNS": "200"}


def test_restore_reports_every_restart_against_its_budget(trained_run, image_folder):
    model = load_model(trained_run / "theta.safetensors")
    seen = []
    restore_file(model, next(image_folder.glob("*.png")), 0, T=4, on_restart=lambda t, most: seen.append((t, most)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    seen.clear()
    solution = run(model, torch.rand(1, 3, 32, 32), T=50, tol=1e-3, on_restart=lambda t, most: seen.append((t, most)))
    assert seen[-1] == (solution.restarts, 50) and len(seen) == solution.restarts


def test_eval_reports_each_restoration_and_streams_rows(trained_run, image_folder, tmp_path):
    other = tmp_path / "other" / "theta.safetensors"
    loaded = ckpt.load(trained_run / "theta.safetensors")
    ckpt.save(other, loaded.config, {k: v + 0.5 for k, v in loaded.parameters.items()}, 3, 0.0)
    done, rows = [], []
    result = evaluate([trained_run / "theta.safetensors", other], image_folder,
                      on_restore=lambda d, n, what: done.append((d, n)), on_row=rows.append)
    assert done[-1] == (6, 6) and all(n == 6 for _, n in done) and [d for d, _ in done] == sorted(d for d, _ in done)
    assert rows == result.rows
    args = ["eval", trained_run / "theta.safetensors", "--data", image_folder, "--device", "cpu"]
    out = CliRunner().invoke(app, list(map(str, args)), env=WIDE).output
    first = result.rows[0]
    streamed = f"{first['image']}  observation {first['psnr']['observation']:.2f}/{first['ssim']['observation']:.3f}"
    assert streamed in out and out.index(streamed) < out.index("PSNR (dB) / SSIM")


def test_compare_grads_progress_counts_the_rows():
    config = resolve("denoise-wavelet-b")
    seen = []
    result = compare_gradients(build_scheme(config), config, crop=16, Ks=[1, 2], Ts=[1, 2],
                               on_progress=lambda what, done, n: seen.append((what, done, n)))
    assert seen[0] == ("fixed point", 0, len(result.rows))
    assert seen[-1][1:] == (len(result.rows), len(result.rows)) and seen[-1][0] == "unrolled K=2 T=2"


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bar_only_on_a_terminal(monkeypatch, terminal):
    buffer = io.StringIO()
    monkeypatch.setattr(common, "console", Console(file=buffer, force_terminal=terminal, width=120))
    with common.progress_bar(transient=False) as progress:
        task = progress.add_task("restarts", total=4)
        progress.update(task, completed=4)
    assert ("4/4" in buffer.getvalue() and "ETA" in buffer.getvalue()) == terminal


def test_eval_of_many_checkpoints_lists_them_as_rows(trained_run, image_folder, tmp_path):
    loaded = ckpt.load(trained_run / "theta.safetensors")
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"a-rather-long-run-folder-name-{i}" / "theta.safetensors")
        ckpt.save(paths[-1], loaded.config, {k: v + 0.1 * i for k, v in loaded.parameters.items()}, 3, 0.0)
    args = ["eval", *paths, "--data", image_folder, "--device", "cpu", "--T", "1"]
    out = CliRunner().invoke(app, list(map(str, args)), env={"COLUMNS": "80"}).output
    table = out[out.index("mean over 3 images"):]
    assert all(f"a-rather-long-run-folder-name-{i}" in table for i in range(4))
    assert "im0.png" not in table and "PSNR (dB)" in table and "SSIM" in table
