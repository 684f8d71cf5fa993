"""``retune eval`` over checkpoints of different degradations: one table per degradation group, each on
its own observations; ``--json``/``--csv`` carry the group; one degradation's output is unchanged."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retune_cli import checkpoint as ckpt
from retune_cli.cli import app
from retune_cli.config import resolve
from retune_cli.degradations import degradations
from retune_cli.errors import InputError
from retune_cli.evaluate import evaluate, evaluate_groups
from retune_cli.models import build_scheme

WIDE = {"COLUMNS": "200"}
DENOISE = "denoise · σ = 0.1, 0.25, 0.5"
INPAINT = "inpaint · keep = 0.1 · σ = 0.05"


def write_run(root: Path, name: str, preset: str, **overrides) -> Path:
    """A run folder ``root/name`` holding the preset's initial θ as a checkpoint."""
    config = resolve(preset, overrides)
    path = root / name / "theta.safetensors"
    ckpt.save(path, config, ckpt.learned_parameters(build_scheme(config)), step=0, train_psnr=0.0)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "b": write_run(root, "b", "denoise-wavelet-b"),
        "inp": write_run(root, "inp", "inpaint-wavelet"),
        "bc": write_run(root, "bc", "denoise-wavelet-bc", **{"physics.keep": 0.5}),  # keep: not denoising's
    }


def invoke(*args):
    return CliRunner().invoke(app, ["eval", *map(str, args), "--T", "2", "--device", "cpu"], env=WIDE)


def test_two_presets_give_two_tables_and_grouped_json_and_csv(runs, image_folder, tmp_path):
    out = invoke(runs["b"], runs["inp"], runs["bc"], "--data", image_folder, "--json", tmp_path / "r.json",
                 "--csv", tmp_path / "r.csv")
    assert out.exit_code == 0, out.output
    tables = out.output[out.output.index("\n\n"):]  # after the streamed rows
    assert tables.count("PSNR (dB) / SSIM") == 2
    assert DENOISE in tables and INPAINT in tables and tables.index(DENOISE) < tables.index(INPAINT)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [(g["group"], g["checkpoints"]) for g in doc["groups"]] == [(DENOISE, ["b", "bc"]), (INPAINT, ["inp"])]
    assert all(len(g["rows"]) == 3 and set(g["mean"]["psnr"]) == {"observation", *g["checkpoints"]}
               for g in doc["groups"])
    rows = list(csv.reader((tmp_path / "r.csv").open()))
    assert rows[0][:3] == ["group", "image", "psnr:observation"] and "psnr:inp" in rows[0]
    assert [r[0] for r in rows[1:]] == [DENOISE] * 4 + [INPAINT] * 4
    inp = rows[0].index("psnr:inp")
    assert rows[1][inp] == "" and rows[-1][inp] == f"{doc['groups'][1]['mean']['psnr']['inp']:.4f}"


def test_each_group_equals_its_own_evaluation(runs, image_folder):
    both = evaluate_groups([runs["b"], runs["inp"], runs["bc"]], image_folder, T=2)
    alone = [evaluate([runs["b"], runs["bc"]], image_folder, T=2), evaluate([runs["inp"]], image_folder, T=2)]
    assert [r.rows for r in both] == [r.rows for r in alone]
    assert [r.group for r in both] == [DENOISE, INPAINT]


def test_one_degradation_output_is_unchanged(runs, image_folder, tmp_path):
    out = invoke(runs["b"], runs["bc"], "--data", image_folder, "--json", tmp_path / "r.json", "--csv",
                 tmp_path / "r.csv")
    assert out.exit_code == 0, out.output
    assert DENOISE not in out.output and out.output.count("PSNR (dB) / SSIM") == 1
    doc = json.loads((tmp_path / "r.json").read_text())
    assert set(doc) == {"checkpoints", "rows", "mean"} and doc["checkpoints"] == ["b", "bc"]
    header = next(csv.reader((tmp_path / "r.csv").open()))
    assert header == ["image"] + [f"{m}:{c}" for m in ("psnr", "ssim") for c in ("observation", "b", "bc")]


def test_groups_follow_the_observation_model_only(tmp_path):
    paths = [
        write_run(tmp_path, "one", "denoise-wavelet-b", **{"physics.sigma": [0.05]}),
        write_run(tmp_path, "three", "denoise-wavelet-bc", **{"physics.sigma": [0.05, 0.05, 0.05]}),
        write_run(tmp_path, "other", "denoise-wavelet-b", **{"physics.sigma": [0.1]}),
        write_run(tmp_path, "inp", "inpaint-wavelet", **{"physics.keep": 0.2}),
    ]
    groups = degradations(paths)
    assert [(g.name, g.slug, g.members) for g in groups] == [
        ("denoise · σ = 0.05", "denoise", (0, 1)),
        ("denoise · σ = 0.1", "denoise-2", (2,)),
        ("inpaint · keep = 0.2 · σ = 0.05", "inpaint", (3,)),
    ]


def test_progress_and_save_dir_over_groups(runs, image_folder, tmp_path):
    done, headings = [], []
    evaluate_groups([runs["b"], runs["inp"]], image_folder, T=2, on_restore=lambda d, n, what: done.append((d, n)),
                    on_group=headings.append)
    assert done[-1] == (6, 6) and [d for d, _ in done] == sorted(d for d, _ in done)
    assert headings == [DENOISE, INPAINT]
    out = invoke(runs["b"], runs["inp"], "--data", image_folder, "--save-dir", tmp_path / "s")
    assert out.exit_code == 0, out.output
    names = {p.name for p in (tmp_path / "s").iterdir() if p.name.startswith("im0.")}
    assert names == {"im0.b.png", "im0.inp.png", "im0.denoise.side-by-side.png", "im0.inpaint.side-by-side.png"}


def test_evaluate_of_one_table_still_refuses_several_degradations(runs, image_folder):
    with pytest.raises(InputError, match="degrades images differently"):
        evaluate([runs["b"], runs["inp"]], image_folder, T=2)
