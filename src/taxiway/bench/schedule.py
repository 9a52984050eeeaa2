"""When load is applied: durations, ramp stages, and the intended send time of every request.

Rules of this file: pure. No clock, no sockets, no asyncio, no RNG. Time is seconds *relative to the
start of the run*, passed in by the driver.

Theory of operation. A run is either *closed loop* (N virtual users, each waits for its answer before
sending again, like wrk and Locust) or *open loop* (requests arrive at a rate, like wrk2 and k6's
constant-arrival-rate, whether or not earlier ones were answered). Both can follow ramp *stages*
(k6 syntax `10s:50,30s:200,10s:0`: over each stage the target moves linearly from the previous
stage's target, starting at 0, to this stage's target).

In open-loop mode every request has an *intended send time* fixed by the schedule before the run
starts. Latency is measured from that time, not from the moment a busy connection got round to
sending it: that is the coordinated-omission correction (Gil Tene; wrk2). `ArrivalSchedule` yields
those times: for a rate r(t) that is piecewise linear, request i is due at N^-1(i), where N(t) is the
integral of r; within one stage N is quadratic, so the inverse is closed-form.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from taxiway.config import parse_duration as config_parse_duration
from taxiway.errors import UsageError

_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")


def parse_duration(text: str, what: str = "duration") -> float:
    """`"30s"`, `"500ms"`, `"2m"`, `"1m30s"` or a bare number of seconds -> seconds.

    The grammar is the config file's (`taxiway.config.parse_duration`); the command line also
    takes a bare number ("30") and a space before the unit ("30 s").

    Raises:
        UsageError: the text is not a duration; the caller should show it and stop.
    """
    compact = str(text).replace(" ", "")
    try:
        return float(compact) if _NUMBER.match(compact) else config_parse_duration(compact)
    except ValueError:
        raise UsageError(f"{what}: expected a duration like 30s, 500ms or 2m (got {text!r})") from None


@dataclass(frozen=True)
class Stage:
    """Over `duration_s`, move the target (users or requests/s) linearly to `target`."""

    duration_s: float
    target: float


def parse_stages(text: str) -> tuple[Stage, ...]:
    """`"10s:50,30s:200,10s:0"` -> stages. Raises UsageError on anything else."""
    stages: list[Stage] = []
    for part in text.split(","):
        if not part.strip():
            continue
        dur, sep, target = part.partition(":")
        if not sep:
            raise UsageError(f"--stages: expected DURATION:TARGET items like 10s:50 (got {part.strip()!r})")
        try:
            value = float(target)
        except ValueError:
            raise UsageError(f"--stages: target must be a number (got {target.strip()!r})") from None
        if value < 0 or not math.isfinite(value):
            raise UsageError(f"--stages: target must be >= 0 (got {target.strip()!r})")
        seconds = parse_duration(dur, "--stages")
        if seconds <= 0:
            raise UsageError(f"--stages: stage duration must be > 0 (got {dur.strip()!r})")
        stages.append(Stage(seconds, value))
    if not stages:
        raise UsageError("--stages: give at least one DURATION:TARGET item")
    return tuple(stages)


def total_duration(stages: tuple[Stage, ...]) -> float:
    return sum(s.duration_s for s in stages)


def target_at(stages: tuple[Stage, ...], t: float) -> float:
    """The ramp's target at `t` seconds into the run (0 before, the last target after)."""
    if t <= 0:
        return 0.0
    start_value = 0.0
    elapsed = 0.0
    for s in stages:
        if t < elapsed + s.duration_s:
            frac = (t - elapsed) / s.duration_s
            return start_value + (s.target - start_value) * frac
        elapsed += s.duration_s
        start_value = s.target
    return start_value


class ArrivalSchedule:
    """Intended send times for an open-loop run: constant `rate` or piecewise-linear `stages`.

    Call `take_due(now)` with the relative time; it returns every intended time <= now not yet
    returned, in order. `limit` caps the number of arrivals (`-n`); `duration_s` ends a constant-rate
    schedule (None = unbounded, the driver stops it).
    """

    def __init__(self, rate: float | None = None, stages: tuple[Stage, ...] | None = None,
                 duration_s: float | None = None, limit: int | None = None) -> None:
        if (rate is None) == (stages is None):
            raise ValueError("give exactly one of rate or stages")
        if rate is not None and rate <= 0:
            raise UsageError(f"--rate must be > 0 (got {rate})")
        self.rate = rate
        self.stages = stages
        self.duration_s = total_duration(stages) if stages is not None else duration_s
        self.limit = limit
        self.issued = 0
        # Per stage: (start time, duration, rate at start, rate at end, arrivals before this stage).
        self._segments: list[tuple[float, float, float, float, float]] = []
        if stages is not None:
            t0, r0, count = 0.0, 0.0, 0.0
            for s in stages:
                self._segments.append((t0, s.duration_s, r0, s.target, count))
                count += (r0 + s.target) / 2 * s.duration_s
                t0 += s.duration_s
                r0 = s.target

    def time_of(self, i: int) -> float | None:
        """Intended time of arrival number `i` (0-based); None if the schedule ends before it."""
        if self.limit is not None and i >= self.limit:
            return None
        t: float | None
        if self.rate is not None:
            t = i / self.rate
        else:
            t = self._stage_time_of(i)
            if t is None:
                return None
        if self.duration_s is not None and t >= self.duration_s:
            return None
        return t

    def _stage_time_of(self, i: int) -> float | None:
        # Arrival i happens when the cumulative count N(t) reaches i + 1 (the first at N = 1 would
        # leave a ramp from 0 silent for a while; i + 0.5 centres arrivals in their interval).
        m = i + 0.5
        for t0, d, r0, r1, before in self._segments:
            in_stage = (r0 + r1) / 2 * d
            if m > before + in_stage:
                continue
            need = m - before
            a = (r1 - r0) / d
            if abs(a) < 1e-12:
                tau = need / r0 if r0 > 0 else d
            else:
                disc = r0 * r0 + 2 * a * need
                tau = (-r0 + math.sqrt(max(disc, 0.0))) / a
            return t0 + min(max(tau, 0.0), d)
        return None

    def peek(self) -> float | None:
        """The next intended time, or None when the schedule is exhausted."""
        return self.time_of(self.issued)

    def take_due(self, now: float) -> list[float]:
        due: list[float] = []
        while True:
            t = self.time_of(self.issued)
            if t is None or t > now:
                return due
            due.append(t)
            self.issued += 1
