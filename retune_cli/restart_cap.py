"""Training steps whose fixed point was not reached: jfb and deq restart ``Φ_K`` until the relative
residual is ≤ ``train.tol``, at most ``train.max_restarts`` times; a step that used them all with its
last residual still above the tolerance stopped at the cap: its gradient assumes a fixed point it did
not reach.

Counted from the training log's ``restarts`` and ``residual`` columns (log.csv, or the rows in memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import TrainConfig


def scientific(x: float) -> str:
    """``3e-3``, ``2.5e-4``: a residual or tolerance in two significant digits at most."""
    mantissa, exponent = f"{x:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


@dataclass(frozen=True)
class CappedSteps:
    """How many of ``steps`` logged steps stopped at ``cap`` restarts short of ``tol``, and the largest
    residual among them."""

    count: int
    steps: int
    cap: int
    tol: float
    worst: float

    def fact(self) -> str:
        """``retune show``'s line: the count, and the worst residual when there are any."""
        head = f"{self.count} of {self.steps} steps stopped at train.max_restarts = {self.cap}"
        return head + (f", residual up to {scientific(self.worst)} for tol {scientific(self.tol)}"
                       if self.count else "")

    def warning(self) -> str | None:
        """The end-of-run line with what to do, or None when no step stopped at the cap."""
        if not self.count:
            return None
        return f"{self.fact()}; raise train.max_restarts (--set train.max_restarts=…) or use --gradient retune"


def log_value(row: dict, key: str) -> float:
    """A log row's number (a float, or its text in log.csv); nan when empty or missing."""
    value = row.get(key)
    return float(value) if value not in (None, "") else math.nan


def capped_steps(train: TrainConfig, rows: list[dict], equilibrium: bool) -> CappedSteps | None:
    """The steps of ``rows`` (log rows: numbers or their text) that stopped at ``train.max_restarts``
    with a residual above ``train.tol``; None unless ``equilibrium`` (``train.gradient`` restarts to a
    fixed point: its ``GRADIENT_MODES`` entry says so)."""
    if not equilibrium:
        return None
    residuals = [log_value(r, "residual") for r in rows if log_value(r, "restarts") >= train.max_restarts]
    above = [r for r in residuals if r > train.tol]
    return CappedSteps(len(above), len(rows), train.max_restarts, train.tol, max(above, default=math.nan))
