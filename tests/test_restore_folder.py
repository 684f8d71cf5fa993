"""retune restore CKPT DIR -o OUTDIR: every image of a folder, same results as one at a time."""

from __future__ import annotations

import shutil

from typer.testing import CliRunner

from retune_cli.cli import app
from retune_cli.images import read_image

WIDE = {"COLUMNS": "300"}


def invoke(*args):
    return CliRunner().invoke(app, ["restore", *map(str, args)], env=WIDE)


def test_folder_restore_equals_single_restores_and_skips_non_images(trained_run, image_folder, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(image_folder, folder)
    (folder / "notes.txt").write_text("not an image")
    ckpt = trained_run / "theta.safetensors"
    result = invoke(ckpt, folder, "-o", tmp_path / "out", "--T", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "skipped non-image files: notes.txt" in result.output and "3 images restored" in result.output
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["im0.restored.png", "im1.restored.png", "im2.restored.png"]
    single = invoke(ckpt, folder / "im1.png", "-o", tmp_path / "one.png", "--T", "2", "--device", "cpu")
    assert single.exit_code == 0, single.output
    assert (read_image(tmp_path / "one.png") == read_image(tmp_path / "out" / "im1.restored.png")).all()


def test_folder_restore_never_overwrites_without_force(trained_run, image_folder, tmp_path):
    ckpt = trained_run / "theta.safetensors"
    out = tmp_path / "out"
    assert invoke(ckpt, image_folder, "-o", out, "--T", "1", "--device", "cpu").exit_code == 0
    before = (out / "im0.restored.png").stat().st_mtime_ns
    again = invoke(ckpt, image_folder, "-o", out, "--T", "1", "--device", "cpu")
    assert again.exit_code == 2 and "--force" in again.output and len(again.output.strip().splitlines()) == 1
    assert (out / "im0.restored.png").stat().st_mtime_ns == before
    assert invoke(ckpt, image_folder, "-o", out, "--T", "1", "--device", "cpu", "--force").exit_code == 0


def test_folder_restore_refusals_are_one_line(trained_run, image_folder, tmp_path):
    ckpt = trained_run / "theta.safetensors"
    cases = [
        ((ckpt, image_folder), "give -o OUTDIR"),
        ((ckpt, image_folder, "-o", image_folder / "sub"), "inside the image folder"),
        ((ckpt, image_folder, "-o", tmp_path / "o", "--save-observation", tmp_path / "x.png"), "goes with one image"),
    ]
    twins = tmp_path / "twins"
    shutil.copytree(image_folder, twins)
    shutil.copy(twins / "im0.png", twins / "im0.tif")
    cases.append(((ckpt, twins, "-o", tmp_path / "t"), "several images are named im0"))
    for args, message in cases:
        result = invoke(*args, "--device", "cpu")
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() and not (tmp_path / "t").exists()


def test_eval_save_dir_writes_restored_images_and_side_by_side(trained_run, image_folder, tmp_path):
    ckpt = trained_run / "theta.safetensors"
    args = ["eval", ckpt, "--data", image_folder, "--device", "cpu", "--save-dir", tmp_path / "saved",
            "--json", tmp_path / "r.json"]
    result = CliRunner().invoke(app, list(map(str, args)), env=WIDE)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert names == sorted(f"im{i}.{kind}.png" for i in range(3) for kind in ("tiny", "side-by-side"))
    assert (tmp_path / "saved" / "im0.side-by-side.png").read_bytes()[:4] == b"\x89PNG"
    assert read_image(tmp_path / "saved" / "im0.tiny.png").shape == read_image(image_folder / "im0.png").shape
    inside = CliRunner().invoke(app, list(map(str, ["eval", ckpt, "--data", image_folder, "--device", "cpu",
                                                    "--save-dir", image_folder / "out"])), env=WIDE)
    assert inside.exit_code == 2 and "inside --data" in inside.output and not (image_folder / "out").exists()


def test_restore_reference_scores_a_real_pair(trained_run, image_folder, tmp_path):
    ckpt, clean = trained_run / "theta.safetensors", image_folder / "im0.png"
    simulated = invoke(ckpt, clean, "--simulate", "--save-observation", tmp_path / "obs.npy", "-o", tmp_path / "a.npy",
                       "--device", "cpu")
    assert simulated.exit_code == 0 and "SSIM" in simulated.output, simulated.output
    real = invoke(ckpt, tmp_path / "obs.npy", "--reference", clean, "-o", tmp_path / "b.npy", "--device", "cpu")
    assert real.exit_code == 0, real.output
    line = lambda out: next(x for x in out.splitlines() if x.startswith("PSNR"))  # noqa: E731
    assert line(real.output) == line(simulated.output)  # the same pair, unclipped (.npy): the same scores
    cases = [(("--reference", image_folder / "im1.png", "--simulate"), "give one of them")]
    from PIL import Image

    Image.open(clean).crop((0, 0, 40, 32)).save(tmp_path / "crop.png")
    cases.append((("--reference", tmp_path / "crop.png"), "is 40×32; the restored image is 48×40"))
    for args, message in cases:
        result = invoke(ckpt, clean, *args, "-o", tmp_path / "x.png", "--device", "cpu")
        assert result.exit_code == 2 and message in result.output, result.output


def test_restore_writes_jpeg_with_its_quality(trained_run, image_folder, tmp_path):
    from PIL import Image

    ckpt, image = trained_run / "theta.safetensors", image_folder / "im0.png"
    for quality in (20, 95):
        result = invoke(ckpt, image, "-o", tmp_path / f"q{quality}.jpg", "--quality", quality, "--device", "cpu")
        assert result.exit_code == 0, result.output
        assert Image.open(tmp_path / f"q{quality}.jpg").format == "JPEG"
    assert (tmp_path / "q20.jpg").stat().st_size < (tmp_path / "q95.jpg").stat().st_size
    deep = invoke(ckpt, image, "-o", tmp_path / "x.jpg", "--bits", "16", "--device", "cpu")
    assert deep.exit_code == 2 and "a JPEG holds 8 bits" in deep.output and not (tmp_path / "x.jpg").exists()


def test_many_skipped_files_are_one_short_line(trained_run, image_folder, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(image_folder, folder)
    for i in range(40):
        (folder / f"notes-with-a-long-name-{i:02d}.txt").write_text("not an image")
    result = invoke(trained_run / "theta.safetensors", folder, "-o", tmp_path / "out", "--T", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("skipped non-image files"))
    assert line.endswith("and 35 more") and len(line) < 200
