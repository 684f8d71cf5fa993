"""Under torchrun an error prints once: rank 0 prints the one-line message, every rank exits 2. Ranks
are simulated by torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK); tests/test_distributed.py runs
torchrun itself."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from retune_cli.cli import app
from retune_cli.commands import common

ERRORS = {
    "usage": ["train", "--K", "nan"],
    "input": ["train", "--K", "0"],
    "missing file": ["restore", "missing.safetensors", "x.png"],
    "eval": ["eval", "missing.safetensors", "--T", "0"],
}


def rank_env(rank: int) -> dict[str, str]:
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}


@pytest.mark.parametrize("args", ERRORS.values(), ids=ERRORS.keys())
def test_rank_0_prints_one_line_and_rank_1_nothing(monkeypatch, args):
    monkeypatch.setattr(common, "SECONDARY_GRACE_S", 0.0)
    for rank, lines in ((0, 1), (1, 0)):
        result = CliRunner().invoke(app, args, env=rank_env(rank))
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == lines, (rank, result.output)
        assert result.output.startswith("error:") or rank


def test_a_single_process_prints_whatever_rank_says(monkeypatch):
    result = CliRunner().invoke(app, ERRORS["input"], env={"RANK": "1", "WORLD_SIZE": "1"})
    assert result.exit_code == 2 and result.output.startswith("error:")


def retune(rank: int, *args) -> subprocess.Popen:
    env = {**os.environ, **rank_env(rank), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "retune_cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_processes_of_two_ranks_exit_2_and_only_rank_0_prints():
    zero, one = retune(0, *ERRORS["usage"]), retune(1, *ERRORS["usage"])
    out0, err0 = zero.communicate(timeout=120)
    out1, err1 = one.communicate(timeout=120)
    assert zero.returncode == 2 and one.returncode == 2
    assert err0.count("error:") == 1 and "--K" in err0 and not out0
    assert not err1 and not out1


WAIT = """
import os, signal, threading, time
from retune_cli.commands import common
common.SECONDARY_GRACE_S = 30.0
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
start = time.monotonic()
common.print_error("a bad input")
print(f"{time.monotonic() - start:.2f}", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
"""


def test_rank_1_waits_until_torchrun_stops_it():
    """torchrun stops every rank (SIGTERM) once one exits: a rank > 0 waits for that, silently, so that
    rank 0 is not stopped before it has printed; the SIGTERM ends the wait, not the process."""
    env = {**os.environ, **rank_env(1)}
    result = subprocess.run([sys.executable, "-c", WAIT], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr, result.stderr
    waited, restored = result.stdout.split()
    assert 0.4 < float(waited) < 10 and restored == "True"
