"""Reliability, interruptions: Ctrl-C, SIGTERM and kill -9 keep a readable checkpoint; ``--resume`` is
exact; divergence stops with a message and keeps the last finite checkpoint."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from reliability import (
    EVERY_STEP,
    FAST,
    LEFTOVER,
    WAIT,
    WIDE,
    assert_readable_checkpoint,
    assert_same_log,
    assert_same_tensors,
    complete_rows,
    invoke,
    log_rows,
    ok,
    resume_in_process,
)
from safetensors.torch import load_file

from retune_cli import checkpoint as ckpt
from retune_cli.config import resolve
from retune_cli.models import build_scheme

# --------------------------------------------------------------------------- divergence

SAFE_STEP = ["--set", "model.step_rule=safe"]  # τ = 1.95/L stays defined however large θ gets


def test_divergence_stops_with_a_message_and_keeps_the_last_finite_checkpoint(image_folder, tmp_path):
    out = tmp_path / "run"
    result = invoke(
        "train", "--steps", 5, *FAST, *SAFE_STEP, *EVERY_STEP, "--lr", "1e5", "--data", image_folder, "--out", out
    )
    assert result.exit_code == 1, (result.output, repr(result.exception))
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "diverged" in lines[0], result.stderr
    assert "--lr" in lines[0]  # says what to do
    loaded = assert_readable_checkpoint(out)
    assert loaded is not None and 1 <= loaded.step < 5
    assert f"(step {loaded.step})" in lines[0] and str(out / "theta.safetensors") in lines[0]
    assert [int(r["step"]) for r in log_rows(out)] == list(range(1, loaded.step + 1))  # no row for the bad step


def test_divergence_before_the_first_checkpoint_says_so(image_folder, tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--steps", 5, *FAST, *SAFE_STEP, "--lr", "1e5", "--data", image_folder, "--out", out)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert "diverged" in result.stderr and "no checkpoint" in result.stderr
    assert not (out / "theta.safetensors").exists()


def test_divergence_with_the_optimal_step_rule_is_reported(image_folder, tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--steps", 5, *FAST, *EVERY_STEP, "--lr", "100", "--data", image_folder, "--out", out)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), repr(result.exception)
    assert "diverged" in result.stderr


def test_clip_grad_norm_bounds_what_adam_sees(image_folder, tmp_path):
    """After one step Adam's first moment is (1 − β₁)·g: with clipping, ‖g‖ ≤ the clip."""
    clip = 1e-6

    def first_moment_norm(out, *extra):
        ok(invoke("train", "--steps", 1, *FAST, "--data", image_folder, "--out", out, *extra))
        moments = [v for k, v in ckpt.load(out / "theta.safetensors").optimizer.items() if k.endswith(".exp_avg")]
        assert moments
        return float(torch.cat([m.flatten() for m in moments]).norm())

    assert first_moment_norm(tmp_path / "free") > 0.1 * clip * 10
    assert first_moment_norm(tmp_path / "clipped", "--clip-grad-norm", clip) <= 0.1 * clip * (1 + 1e-4)


# --------------------------------------------------------------------------- interruption in process


class _SecondStepInterrupted(torch.optim.Adam):
    """Adam whose second step is followed by a KeyboardInterrupt: a second Ctrl-C landing just after the update."""

    def step(self, closure=None):
        loss = super().step(closure)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return loss


def test_interrupt_just_after_the_update_saves_the_completed_step(image_folder, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(torch.optim, "Adam", _SecondStepInterrupted)
        result = invoke("train", "--steps", 3, *FAST, "--data", image_folder, "--out", out)
    assert result.exit_code == 130, (result.output, repr(result.exception))
    assert ckpt.load(out / "theta.safetensors").step == 2  # the update was applied: its θ is labelled step 2
    resume_in_process(out, 3)
    assert_same_tensors(out / "theta.safetensors", reference(3) / "theta.safetensors")


# --------------------------------------------------------------------------- signals, in real processes


def _start(out: Path, data: Path, *extra: str, steps: int = 400, resume: bool = False) -> subprocess.Popen:
    """``retune train`` in a child process (``resume``: of ``out``'s checkpoint); stdout/stderr go to files."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if resume:
        argv = ["--resume", str(out / "theta.safetensors"), "--device", "cpu", "--steps", str(steps), *extra]
    else:
        argv = [*FAST, "--data", str(data), "--out", str(out), "--steps", str(steps), *extra]
    with open(f"{out}.stdout", "w") as stdout, open(f"{out}.stderr", "w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "retune_cli", "train", *argv], stdout=stdout, stderr=stderr, env=os.environ | WIDE
        )


def _stderr(out: Path) -> str:
    return Path(f"{out}.stderr").read_text()


def _wait(condition, process: subprocess.Popen, out: Path, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert process.poll() is None, f"the run ended (rc {process.returncode}) before {what}: {_stderr(out)[-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _finish(process: subprocess.Popen) -> int:
    try:
        return process.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


@pytest.fixture(scope="module")
def signalled_runs(tmp_path_factory, image_folder):
    """Three runs started together; once each has logged 3 steps: SIGTERM, SIGINT, and SIGKILL (a little later,
    checkpointing every step). Yields name → (folder, return code)."""
    root = tmp_path_factory.mktemp("signalled")
    plan = {"term": (signal.SIGTERM, []), "int": (signal.SIGINT, []), "kill": (signal.SIGKILL, EVERY_STEP)}
    processes = {name: _start(root / name, image_folder, *extra) for name, (_, extra) in plan.items()}
    try:
        pending = dict(processes)
        deadline = time.monotonic() + WAIT
        while pending:
            for name, process in list(pending.items()):
                assert process.poll() is None, f"{name} ended early: {_stderr(root / name)[-2000:]}"
                if complete_rows(root / name) >= 3:
                    if name == "kill":
                        time.sleep(random.uniform(0, 0.3))
                    process.send_signal(plan[name][0])
                    del pending[name]
            assert time.monotonic() < deadline, "timed out waiting for the runs to log 3 steps"
            time.sleep(0.01)
        yield {name: (root / name, _finish(process)) for name, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def _assert_stopped_cleanly(out: Path, code: int) -> ckpt.Checkpoint:
    stderr = _stderr(out)
    assert code == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "interrupted" in stderr
    loaded = assert_readable_checkpoint(out)
    assert loaded is not None
    assert loaded.step == complete_rows(out) >= 3  # saved at the step it stopped after
    assert [int(r["step"]) for r in log_rows(out)] == list(range(1, loaded.step + 1))
    return loaded


def test_sigterm_saves_a_checkpoint_and_exits_130(signalled_runs):
    out, code = signalled_runs["term"]
    loaded = _assert_stopped_cleanly(out, code)
    resume_in_process(out, loaded.step + 2)
    assert ckpt.load(out / "theta.safetensors").step == loaded.step + 2
    assert [int(r["step"]) for r in log_rows(out)] == list(range(1, loaded.step + 3))


def test_sigint_then_resume_equals_an_uninterrupted_run(signalled_runs, reference):
    out, code = signalled_runs["int"]
    loaded = _assert_stopped_cleanly(out, code)
    n = loaded.step + 2
    resume_in_process(out, n)
    assert_same_tensors(out / "theta.safetensors", reference(n) / "theta.safetensors")
    assert_same_log(out, reference(n))


def test_kill_9_mid_training_keeps_a_readable_checkpoint_and_resume_is_exact(signalled_runs, reference):
    out, code = signalled_runs["kill"]
    assert code == -signal.SIGKILL
    loaded = assert_readable_checkpoint(out)
    assert loaded is not None and 1 <= loaded.step <= complete_rows(out)
    n = loaded.step + 2
    resume_in_process(out, n)
    assert_same_tensors(out / "theta.safetensors", reference(n) / "theta.safetensors")
    assert_same_log(out, reference(n))  # rows logged after the checkpoint were dropped and redone


def test_kill_9_during_checkpoint_writes_never_leaves_a_torn_file(tmp_path):
    """Children save checkpoints in a loop and are killed at random moments: the file under the checkpoint's name
    is always one complete checkpoint (its tensors all carry the value of its step), never a mix or a torn file."""
    config = resolve("denoise-wavelet-b", {"train.crop": 32})
    shapes = {k: v.shape for k, v in ckpt.learned_parameters(build_scheme(config)).items()}
    path = tmp_path / "theta.safetensors"

    first = next(iter(shapes))

    def save(i: int) -> None:
        params = {k: torch.full(s, float(i)) for k, s in shapes.items()}
        optimizer = {f"{first}.exp_avg": torch.full(shapes[first], float(i)), f"{first}.step": torch.tensor(float(i))}
        ckpt.save(path, config, params, i, float(i), optimizer)

    save(0)
    rng = random.Random(0)
    leftovers, steps = 0, set()
    for round_ in range(30):
        pid = os.fork()
        if pid == 0:  # the child: save until killed
            try:
                i = (round_ + 1) * 100_000
                while True:
                    save(i)
                    i += 1
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.002, 0.05))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        loaded = ckpt.load(path)
        values = {float(x) for v in load_file(str(path)).values() for x in (v.min(), v.max())}
        assert values == {float(loaded.step)}, (loaded.step, values)
        steps.add(loaded.step)
        names = [p.name for p in tmp_path.iterdir() if p.name != "theta.safetensors"]
        assert all(LEFTOVER.match(n) for n in names), names
        leftovers += len(names)
        for name in names:
            (tmp_path / name).unlink()
    assert len(steps) > 10  # the children did write
    assert leftovers > 0  # and some were killed in the middle of a write


def test_kill_9_in_the_first_step_after_resume_keeps_the_log(image_folder, tmp_path):
    out = tmp_path / "run"
    ok(invoke("train", "--steps", 2, *FAST, "--data", image_folder, "--out", out))
    loaded = ckpt.load(out / "theta.safetensors")
    slow = dataclasses.replace(loaded.config, train=dataclasses.replace(loaded.config.train, K=200))  # a long step
    ckpt.save(
        out / "theta.safetensors",
        slow,
        loaded.parameters,
        loaded.step,
        loaded.train_psnr,
        loaded.optimizer,
        loaded.data,
    )
    before = os.stat(out / "log.csv")
    process = _start(out, image_folder, steps=3, resume=True)
    try:

        def touched():
            now = os.stat(out / "log.csv")
            return (now.st_ino, now.st_mtime_ns, now.st_size) != (before.st_ino, before.st_mtime_ns, before.st_size)

        _wait(touched, process, out, "the resumed run to rewrite log.csv")
        process.send_signal(signal.SIGKILL)
        _finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert [r["step"] for r in log_rows(out)] == ["1", "2"]


@pytest.mark.slow
def test_kill_9_at_several_moments_then_resume(image_folder, tmp_path):
    """kill -9 during start-up, as training starts, and later into it; each time the checkpoint (if any) is
    readable and the next run resumes from it; the last one finishes."""
    out = tmp_path / "run"
    moments = [
        ("start-up", 0.5, False),
        ("first step", 0.0, True),
        ("1 s in", 1.0, True),
        ("2 s in", 2.0, True),
        ("3 s in", 3.0, True),
    ]
    for what, delay, after_training_starts in moments:
        resuming = (out / "theta.safetensors").exists()
        log = out / "log.csv"
        before = os.stat(log) if log.exists() else None
        fresh = [*EVERY_STEP, "--force"]  # a killed run's log without a checkpoint is a run: --force to restart
        process = _start(out, image_folder, *([] if resuming else fresh), resume=resuming)
        try:
            if after_training_starts:

                def started(before=before, log=log):
                    if not log.exists():
                        return False
                    now = os.stat(log)
                    return before is None or (now.st_ino, now.st_mtime_ns) != (before.st_ino, before.st_mtime_ns)

                _wait(started, process, out, f"training to start ({what})")
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            assert _finish(process) == -signal.SIGKILL, what
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert_readable_checkpoint(out)
    loaded = assert_readable_checkpoint(out)
    assert loaded is not None
    resume_in_process(out, loaded.step + 1)
    assert ckpt.load(out / "theta.safetensors").step == loaded.step + 1
