"""What a run measured: latency histograms, counts by outcome, a per-second timeline.

Rules of this file: no I/O, no clock. A `RunResult` is mergeable (several processes, one answer) and
round-trips through a plain dict (sent between processes, written by --json).

Two latency histograms, both HDR (microseconds, 3 significant digits, 1 us .. 1 h):
  `latency`  from the request's *intended* send time to the end of its response. In rate mode the
             intended time comes from the schedule, so a stall also counts for every request that
             was due during it (coordinated omission corrected, as wrk2 does). In closed-loop mode
             it is the time the user decided to send.
  `service`  from the moment the bytes were written. This is what a naive generator reports; the
             two differ exactly when the target (or the generator) fell behind the schedule.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)
ERROR_KINDS = ("connect", "timeout", "reset", "protocol")


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_batch(hist: HdrHistogram, values_us: list[int]) -> None:
    """Record many values at once. Counting duplicates first is ~10x faster than one call each."""
    for value, count in Counter(values_us).items():
        hist.record_value(min(max(value, LOWEST_US), HIGHEST_US), count)


@dataclass
class Second:
    """One second of the timeline."""

    t: int
    completed: int = 0
    errors: int = 0
    p99_ms: float = 0.0
    p50_ms: float = 0.0
    users: int = 0


@dataclass
class RunResult:
    latency: HdrHistogram = field(default_factory=new_histogram)
    service: HdrHistogram = field(default_factory=new_histogram)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    served_by: Counter[str] = field(default_factory=Counter)
    timeline: list[Second] = field(default_factory=list)
    elapsed_s: float = 0.0
    bytes_received: int = 0
    unsent: int = 0          # rate mode: due but never sent before the run ended (backlog)
    in_flight: int = 0       # sent but unanswered when the run ended
    interrupted: bool = False
    mode: str = "closed"
    target: str = ""

    # -- derived figures
    @property
    def completed(self) -> int:
        return sum(self.statuses.values())

    @property
    def error_count(self) -> int:
        return sum(self.errors.values()) + sum(n for code, n in self.statuses.items() if code >= 400)

    @property
    def attempts(self) -> int:
        return self.completed + sum(self.errors.values())

    def error_rate(self) -> float:
        return self.error_count / self.attempts if self.attempts else 0.0

    def rate(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, p: float, corrected: bool = True) -> float:
        hist = self.latency if corrected else self.service
        if hist.get_total_count() == 0:
            return 0.0
        return hist.get_value_at_percentile(p) / 1000.0

    def max_ms(self, corrected: bool = True) -> float:
        hist = self.latency if corrected else self.service
        return hist.get_max_value() / 1000.0 if hist.get_total_count() else 0.0

    def error_breakdown(self) -> dict[str, int]:
        """Transport errors by kind plus HTTP errors as `http_<code>`; zero kinds left out."""
        out = {k: n for k, n in self.errors.items() if n}
        for code, n in sorted(self.statuses.items()):
            if code >= 400 and n:
                out[f"http_{code}"] = n
        return out

    # -- merging and transport
    def merge(self, other: RunResult) -> None:
        """Add another process's result (same run, same wall-clock window) into this one."""
        self.latency.add(other.latency)
        self.service.add(other.service)
        self.statuses.update(other.statuses)
        self.errors.update(other.errors)
        self.served_by.update(other.served_by)
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)
        self.bytes_received += other.bytes_received
        self.unsent += other.unsent
        self.in_flight += other.in_flight
        self.interrupted = self.interrupted or other.interrupted
        self.timeline = merge_timelines(self.timeline, other.timeline)

    def to_wire(self) -> dict[str, object]:
        """Everything, histograms HDR-encoded: for sending between processes."""
        d = self._plain()
        d["latency_hdr"] = self.latency.encode().decode()
        d["service_hdr"] = self.service.encode().decode()
        return d

    @classmethod
    def from_wire(cls, d: dict[str, object]) -> RunResult:
        r = cls(
            latency=_decode(str(d["latency_hdr"])), service=_decode(str(d["service_hdr"])),
            statuses=Counter({int(k): int(v) for k, v in d["statuses"].items()}),  # type: ignore[attr-defined]
            errors=Counter(d["errors_by_kind"]),  # type: ignore[call-overload]
            served_by=Counter(d["served_by"]),  # type: ignore[call-overload]
            timeline=[Second(**s) for s in d["timeline"]],  # type: ignore[attr-defined]
            elapsed_s=float(d["elapsed_s"]),  # type: ignore[arg-type]
            bytes_received=int(d["bytes_received"]),  # type: ignore[call-overload]
            unsent=int(d["unsent"]), in_flight=int(d["in_flight"]),  # type: ignore[call-overload]
            interrupted=bool(d["interrupted"]), mode=str(d["mode"]), target=str(d["target"]),
        )
        return r

    def _plain(self) -> dict[str, object]:
        return {
            "target": self.target, "mode": self.mode, "elapsed_s": self.elapsed_s,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors_by_kind": dict(self.errors), "served_by": dict(self.served_by),
            "timeline": [s.__dict__.copy() for s in self.timeline],
            "bytes_received": self.bytes_received, "unsent": self.unsent, "in_flight": self.in_flight,
            "interrupted": self.interrupted,
        }

    def summary(self) -> dict[str, object]:
        """Every figure, for --json: plain numbers plus the encoded histograms for re-analysis."""
        d = self._plain()

        def pcts(corrected: bool) -> dict[str, float]:
            out = {f"p{p:g}": round(self.percentile_ms(p, corrected), 3) for p in PERCENTILES}
            out["max"] = round(self.max_ms(corrected), 3)
            out["mean"] = round(self._mean_ms(corrected), 3)
            return out

        d.update({
            "requests": self.completed, "attempts": self.attempts, "errors": self.error_count,
            "error_rate": self.error_rate(), "errors_breakdown": self.error_breakdown(),
            "requests_per_s": round(self.rate(), 2),
            "latency_ms": pcts(True), "service_time_ms": pcts(False),
            "latency_hdr": self.latency.encode().decode(), "service_hdr": self.service.encode().decode(),
        })
        return d

    def _mean_ms(self, corrected: bool) -> float:
        hist = self.latency if corrected else self.service
        return hist.get_mean_value() / 1000.0 if hist.get_total_count() else 0.0


def _decode(encoded: str) -> HdrHistogram:
    hist = new_histogram()
    if encoded:
        hist.add(HdrHistogram.decode(encoded.encode()))
    return hist


def merge_timelines(a: list[Second], b: list[Second]) -> list[Second]:
    """Sum counts per second; p99 of the merged second is approximated by the larger one."""
    by_t: dict[int, Second] = {s.t: Second(**s.__dict__) for s in a}
    for s in b:
        cur = by_t.get(s.t)
        if cur is None:
            by_t[s.t] = Second(**s.__dict__)
            continue
        cur.completed += s.completed
        cur.errors += s.errors
        cur.users += s.users
        cur.p99_ms = max(cur.p99_ms, s.p99_ms)
        cur.p50_ms = max(cur.p50_ms, s.p50_ms)
    return [by_t[t] for t in sorted(by_t)]
