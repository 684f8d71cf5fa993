"""The hostile-input contract on the FAST subset of ``bench/hostile_inputs.py`` (the first case of each kind,
and every 20th): success with sane output, or exit 2 with one ``error:`` line; no file written outside the
outputs or through a link, no user's file changed. The full run (300+ cases) is the script."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from hostile_cases import CASES, FAST  # noqa: E402
from hostile_inputs import Case, World, counts, make_world, run_case  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("world"))


def test_the_driver_has_300_distinct_cases_in_every_class() -> None:
    assert len(CASES) >= 300 and len({(c.klass, c.name) for c in CASES}) == len(CASES)
    table = counts([{"class": c.klass, "passed": True} for c in CASES])
    assert set(table) == {"security/links", "data loss", "silent garbage", "memory", "user code", "messages",
                          "python api"}
    assert {c.kind for c in FAST} == {c.kind for c in CASES} and 30 <= len(FAST) <= 60


@pytest.mark.parametrize("case", FAST, ids=[f"{c.klass}: {c.name}" for c in FAST])
def test_hostile_input(case: Case, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a command writing into ./runs writes here
    row = run_case(case, world, tmp_path)
    assert row["passed"], (row["why"], row["command"], row["output"])
