"""Reliability, links and run folders: no output and no run file is ever written through a symbolic link (refused
with one line naming it, exit 2, the link's target untouched), a run never overwrites its own --init nor writes
into its --data or --val, and a user's files in a run folder (temporary-looking or not) survive a run."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from reliability import FAST, invoke, ok, one_line_error, snapshot

from retune_cli import files
from retune_cli.errors import InputError
from retune_cli.rundir import LOCK, RUN_FILES

TRAIN = ["train", "--steps", 1, *FAST]
PRECIOUS = b"precious, outside the run folder"


@pytest.fixture
def s(trained_run, image_folder, tmp_path) -> SimpleNamespace:
    """A copy of a finished run (its checkpoint labelled ``run``), an image, a data folder and a victim file."""
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    image = Path(shutil.copy(image_folder / "im0.png", tmp_path / "photo.png"))
    data = Path(shutil.copytree(image_folder, tmp_path / "data"))
    victim = tmp_path / "victim.png"
    victim.write_bytes(PRECIOUS)
    return SimpleNamespace(run=run, ckpt=run / "theta.safetensors", image=image, data=data, victim=victim,
                           tmp=tmp_path)


def _link(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    return link


def _refused_link(result, link: Path, target: Path, existed: bool = True) -> str:
    """One line naming the link, the link still a link, its target as it was (or still missing): the line."""
    line = one_line_error(result, str(link), "symbolic link")
    assert link.is_symlink()
    assert target.read_bytes() == PRECIOUS if existed else not target.exists()
    return line


@pytest.mark.parametrize("existed", [True, False], ids=["to a file", "dangling"])
def test_a_linked_lock_is_refused_and_its_target_untouched(s, existed):
    out, target = s.tmp / "new", s.victim if existed else s.tmp / "created.txt"
    link = _link(out / LOCK, target)
    _refused_link(invoke(*TRAIN, "--data", s.data, "--out", out), link, target, existed)
    assert [p.name for p in out.iterdir()] == [LOCK]


@pytest.mark.parametrize("name", RUN_FILES)
def test_a_linked_run_file_is_refused_even_with_force(s, name):
    (s.run / name).unlink(missing_ok=True)
    link = _link(s.run / name, s.victim)
    before = snapshot(s.run)
    _refused_link(invoke(*TRAIN, "--data", s.data, "--out", s.run, "--force"), link, s.victim)
    assert snapshot(s.run) == before


def test_a_dangling_run_file_link_creates_nothing(s):
    target = s.tmp / "created.yaml"
    link = _link(s.tmp / "new" / "config.yaml", target)
    _refused_link(invoke(*TRAIN, "--data", s.data, "--out", link.parent), link, target, existed=False)


def test_links_planted_after_the_checks_are_still_refused(s):
    """atomic_write and the log's append refuse a link at write time too (a run file linked mid-run)."""
    link = _link(s.tmp / "late.png", s.victim)
    with pytest.raises(InputError, match="symbolic link"):
        files.atomic_write(link, lambda tmp: Path(tmp).write_bytes(b"overwritten"))
    with pytest.raises(OSError) as opened:
        open(link, "a", opener=files.no_follow)
    assert opened.value.errno == errno.ELOOP and "symbolic link" in files.reason(opened.value)
    assert s.victim.read_bytes() == PRECIOUS and link.is_symlink()
    assert sorted(p.name for p in s.tmp.iterdir() if p.name.startswith(".")) == []  # no temporary file left


COMPARE = ["compare-grads", "--crop", 16, "--K", 1, "--T", 1, "--device", "cpu"]

# case → (arguments given the link, the link's path under tmp, the flag named)
OUTPUTS = {
    "restore -o": lambda s, link: (["restore", s.ckpt, s.image, "-o", link], "out.png", "--output"),
    "restore --save-observation": lambda s, link: (
        ["restore", s.ckpt, s.image, "--simulate", "-o", s.tmp / "r.png", "--save-observation", link], "obs.png",
        "--save-observation"),
    "restore folder -o DIR": lambda s, link: (
        ["restore", s.ckpt, s.data, "-o", link.parent, "--force"], "restored/im1.restored.png", "-o"),
    "eval --save-dir": lambda s, link: (
        ["eval", s.ckpt, "--data", s.data, "--save-dir", link.parent], "saved/im0.side-by-side.png", "--save-dir"),
    "eval --csv": lambda s, link: (["eval", s.ckpt, "--data", s.data, "--csv", link], "r.csv", "--csv"),
    "eval --json": lambda s, link: (["eval", s.ckpt, "--data", s.data, "--json", link], "r.json", "--json"),
    "show --plot": lambda s, link: (["show", s.ckpt, "--plot", link], "theta.png", "--plot"),
    "compare-grads --json": lambda s, link: ([*COMPARE, "--json", link], "g.json", "--json"),
    "compare-grads --plot": lambda s, link: ([*COMPARE, "--plot", link], "g.png", "--plot"),
}


@pytest.mark.parametrize("case", OUTPUTS)
@pytest.mark.parametrize("existed", [True, False], ids=["to a file", "dangling"])
def test_a_linked_output_is_refused_before_any_work(s, case, existed):
    _, where, flag = OUTPUTS[case](s, s.tmp / "x")
    target = s.victim if existed else s.tmp / "created.png"
    link = _link(s.tmp / where, target)
    args, _, _ = OUTPUTS[case](s, link)
    assert flag in _refused_link(invoke(*args), link, target, existed)


def test_init_inside_the_run_it_would_overwrite_is_refused(s):
    """--init run/theta.safetensors with --out run --force: refused (not copied: config.yaml would then name a
    file the run has replaced); the run folder, the init included, is untouched."""
    before = snapshot(s.run)
    one_line_error(invoke(*TRAIN, "--data", s.data, "--out", s.run, "--force", "--init", s.ckpt),
                   "--init", "theta.safetensors", "--resume")
    assert snapshot(s.run) == before


def _copy(s, where: str) -> Path:
    return Path(shutil.copytree(s.data, s.tmp / where))


# case → (arguments, the folder that must stay as it is, fragments of the message)
OVERLAPS = {
    "--val = --out": lambda s, val: (["--data", s.data, "--val", val, "--out", val], val, ["--out", "--val"]),
    "--val inside --out": lambda s, val: (
        ["--data", s.data, "--val", val, "--out", val.parent], val.parent, ["--val", "inside --out"]),
    "--out inside --val": lambda s, val: (
        ["--data", s.data, "--val", val, "--out", val / "run"], val, ["--out", "inside --val"]),
    "--data inside --out": lambda s, data: (["--data", data, "--out", data.parent], data.parent,
                                            ["--data", "inside --out"]),
}


@pytest.mark.parametrize("case", OVERLAPS)
def test_val_or_data_overlapping_the_run_folder_is_refused(s, case):
    args, kept, fragments = OVERLAPS[case](s, _copy(s, "new/images" if "inside --out" in case else "val"))
    before, names = snapshot(kept), sorted(kept.rglob("*"))
    line = one_line_error(invoke(*TRAIN, *args), *fragments)
    assert str(kept) in line
    assert snapshot(kept) == before and sorted(kept.rglob("*")) == names


def test_a_users_files_in_the_run_folder_survive_a_forced_run(s):
    """Only retune's own temporary files are removed: a user's notes, their own .tmp files (even named like an old
    retune's) and a link named like retune's temporary file are left as they are."""
    mine = {".notes.tmp": b"notes", "notes.txt": b"more notes", ".log.csv.mine.tmp": b"backup",
            ".theta.safetensors.abc123.tmp": b"a user's copy"}
    for name, content in mine.items():
        (s.run / name).write_bytes(content)
    link = _link(files.temp_name(s.run / "log.csv"), s.victim)
    stale = files.temp_name(s.run / "theta.safetensors")
    stale.write_bytes(b"torn, by a killed run")
    ok(invoke(*TRAIN, "--data", s.data, "--out", s.run, "--force"))
    assert {name: (s.run / name).read_bytes() for name in mine} == mine
    assert link.is_symlink() and s.victim.read_bytes() == PRECIOUS
    assert not stale.exists() and not (s.run / LOCK).exists()
