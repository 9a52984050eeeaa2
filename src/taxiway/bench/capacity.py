"""`--find-capacity`: the largest load (users, or requests/s with -R) that still meets an SLO.

Rules of this file: pure. No clock, no sockets, no RNG. The driver runs one load step per
`next_level()` and feeds what it measured to `process_result()`; tests drive it with a synthetic
model instead of a server.

Theory of operation (exponential search, then bisection, like `git bisect` after a galloping
search): start at `start` and multiply by `growth` while the SLO holds (GROW). The first level that
fails brackets the answer between the last passing level `lo` and that failing level `hi`; bisect
until `hi - lo` is within `precision` of `lo` (BISECT). Measurements are noisy, so a level only
*passes* when `repeats` consecutive steps all meet the SLO (a single failure fails it at once):
noise can only make the answer smaller, never report a capacity the server did not show
repeatedly. If even `start` fails, the bracket is [0, start]; an answer of 0 means "not even one".
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field

from taxiway.errors import UsageError

_SLO = re.compile(r"^\s*p(\d+(?:\.\d+)?)\s*[=<]\s*(\d+(?:\.\d+)?)\s*(us|ms|s)?\s*$")
_SLO_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, None: 1.0}


@dataclass(frozen=True)
class Slo:
    """Latency at `percentile` must be <= `limit_ms` and the error rate <= `max_error_rate`."""

    percentile: float = 99.0
    limit_ms: float = 200.0
    max_error_rate: float = 0.001

    def describe(self) -> str:
        return f"p{self.percentile:g} <= {self.limit_ms:g} ms, errors <= {self.max_error_rate * 100:g}%"


def parse_slo(text: str, max_errors: str = "0.1%") -> Slo:
    """`"p99=200ms"` and `"0.1%"` -> Slo. Raises UsageError with one line on anything else."""
    m = _SLO.match(text)
    if not m:
        raise UsageError(f"--slo: expected pNN=DURATION like p99=200ms (got {text!r})")
    pct = float(m.group(1))
    if not 0 < pct < 100:
        raise UsageError(f"--slo: percentile must be between 0 and 100 (got p{m.group(1)})")
    return Slo(pct, float(m.group(2)) * _SLO_UNIT_MS[m.group(3)], parse_error_rate(max_errors))


def parse_error_rate(text: str) -> float:
    """`"0.1%"` -> 0.001; `"0.001"` -> 0.001."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UsageError(f"--max-errors: expected a percentage like 0.1% (got {text!r})") from None
    if not 0 <= value <= 1 or math.isnan(value):
        raise UsageError(f"--max-errors: must be between 0% and 100% (got {text!r})")
    return value


@dataclass(frozen=True)
class StepResult:
    """What one load step measured at the SLO's percentile."""

    level: int
    latency_ms: float
    error_rate: float

    def meets(self, slo: Slo) -> bool:
        return self.latency_ms <= slo.limit_ms and self.error_rate <= slo.max_error_rate


class Phase(enum.Enum):
    GROW = "grow"
    BISECT = "bisect"
    DONE = "done"


@dataclass
class CapacitySearch:
    """The search state machine. Loop: `level = next_level()`; run it; `process_result(...)`."""

    slo: Slo
    start: int = 10
    maximum: int = 100_000
    repeats: int = 2
    growth: float = 2.0
    precision: float = 0.05
    phase: Phase = Phase.GROW
    lo: int = 0                       # largest level that passed every repeat
    hi: int | None = None             # smallest level that failed
    level: int = 0
    passes_at_level: int = 0
    history: list[tuple[StepResult, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.start < 1 or self.maximum < self.start:
            raise UsageError(f"--find-capacity: need 1 <= start <= max (got {self.start}, {self.maximum})")
        if self.repeats < 1 or self.growth <= 1 or not 0 <= self.precision < 1:
            raise UsageError("--find-capacity: need --repeats >= 1 and 0 <= --precision < 1 "
                             f"(got {self.repeats}, {self.precision})")
        self.level = self.start

    @property
    def answer(self) -> int:
        """The largest level that met the SLO on every repeat (0: not even the smallest)."""
        return self.lo

    def is_capped(self) -> bool:
        """True when the answer is the configured maximum: the real capacity may be higher."""
        return self.phase is Phase.DONE and self.lo >= self.maximum

    def next_level(self) -> int | None:
        """The level to run next, or None when the search is over."""
        return None if self.phase is Phase.DONE else self.level

    def process_result(self, result: StepResult) -> None:
        """Feed one step's measurement for the level `next_level()` returned.

        Raises:
            ValueError: the search is over, or the result is for another level (a driver bug).
        """
        if self.phase is Phase.DONE:
            raise ValueError("the search is over")
        if result.level != self.level:
            raise ValueError(f"result for level {result.level}, expected {self.level}")
        ok = result.meets(self.slo)
        self.history.append((result, ok))
        if ok:
            self.passes_at_level += 1
            if self.passes_at_level < self.repeats:
                return  # run the same level again to be sure
            self.lo = self.level
        else:
            self.hi = self.level
        self.passes_at_level = 0
        self._advance()

    def _advance(self) -> None:
        if self.hi is None:
            if self.lo >= self.maximum:
                self.phase = Phase.DONE
                return
            self.level = min(self.maximum, max(self.lo + 1, int(self.lo * self.growth)))
            return
        self.phase = Phase.BISECT
        if self.hi - self.lo <= max(1, int(self.precision * self.lo)):
            self.phase = Phase.DONE
            return
        self.level = (self.lo + self.hi) // 2
