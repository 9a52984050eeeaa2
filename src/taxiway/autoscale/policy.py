"""Target-tracking autoscaling policy: `decide(history, now) -> Decision` (desired count + reason).

Rules of this module:
1. Pure: no clock, no I/O, no asyncio, no logging. Time enters as `now`; observations enter as
   `Sample`s appended to a `History` by the driver (`autoscale/supervisor.py`), and the driver
   reports what it did back with `History.process_decision`.
2. Every call returns a `Decision` that names the metric, its value, the current and desired
   counts and the `Rule` that fixed the result, so every step can be explained in /status and logs.

Theory of operation (Kubernetes HPA's algorithm plus Knative's panic mode):
1. Recommendation per sample: `raw = ceil(ready x value / target)` where `value` is the metric per
   ready server (average in-flight requests, requests/s, or p95 latency). With no ready server the
   value is the pool total and `ready` counts as 1. If `value / target` is within `tolerance` of 1
   (HPA's 10 % band) the recommendation is "keep `current`", so noise does not flap the pool.
2. Stabilization (HPA `behavior`): a scale-up takes the *minimum* recommendation over the up window
   (a spike must last the window; 0 s = react at once); a scale-down takes the *maximum*
   recommendation over the down window (the pool shrinks only after load stayed low that long).
3. Rate limits (HPA scaling policies): at most `max_up` servers added and `max_down` removed within
   any `period_s`, counting what earlier decisions already did.
4. Panic (Knative KPA): the pool total (value x ready) averaged over the short panic window,
   divided by the target; when that is >= `panic_threshold` x the ready servers, panic starts: scale up
   at once to it (no up window, no rate limit), and never scale down until `panic_hold_s` passed
   since the condition last held (Knative holds for its 60 s stable window = 10 x panic window).
5. While servers are still starting, the pool does not shrink (their capacity is not yet counted).
6. Scale to zero and back (Knative): with `min = 0` the last server goes only after the pool was
   idle (no request begun, none in flight, none waiting) for `zero_after_s`; a pool at zero with a
   request waiting in the balancer starts one at once, whatever the windows and rate limits say.
7. Finally the result is clamped to [min, max]; that clamp is reported as the rule when it bites.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

from taxiway.config import AutoscaleConfig, PoolConfig
from taxiway.errors import ConfigError


class Metric(enum.Enum):
    INFLIGHT = "inflight"   # average in-flight requests per ready server (Knative's concurrency)
    RPS = "rps"             # requests per second per ready server
    P95 = "p95"             # 95th percentile latency (seconds) over the last period


class Rule(enum.Enum):
    """What fixed the decision's result (the last rule in the pipeline that changed it)."""

    TRACKING = "tracking"           # desired follows the metric, nothing held it back
    TOLERANCE = "tolerance"         # metric within the tolerance band of the target: keep
    UP_WINDOW = "up_window"         # scale-up held to the lowest recommendation in the up window
    DOWN_WINDOW = "down_window"     # scale-down held to the highest recommendation in the down window
    RATE_UP = "max_scale_up"        # more servers wanted than may be added per period
    RATE_DOWN = "max_scale_down"    # fewer servers wanted than may be removed per period
    PANIC = "panic"                 # burst: scaled up at once
    PANIC_HOLD = "panic_hold"       # panicking: no scale-down
    STARTING = "starting"           # servers still starting: no scale-down
    FROM_ZERO = "from_zero"         # no server, a request waiting: start one now
    ZERO_GRACE = "zero_grace"       # min 0, but the pool was busy within scale_to_zero_after
    MIN = "min"
    MAX = "max"
    NO_DATA = "no_data"             # no sample yet: keep current (but within min/max)


@dataclass(frozen=True)
class PolicyConfig:
    """The policy's knobs, decoupled from the TOML schema so tests can build them directly."""

    min: int = 1
    max: int = 4
    metric: Metric = Metric.INFLIGHT
    target: float = 10.0
    tolerance: float = 0.1          # Kubernetes HPA default
    period_s: float = 1.0
    up_window_s: float = 0.0        # HPA default scale-up stabilization: 0 s
    down_window_s: float = 120.0    # HPA default is 300 s; 2 min suits process start times
    max_up: int = 4                 # HPA default policy: 4 pods / 15 s (we count per period)
    max_down: int = 1
    panic_window_s: float = 6.0     # Knative: 10 % of its 60 s stable window
    panic_threshold: float = 2.0    # Knative default panic threshold: 200 %
    panic_hold_s: float = 60.0      # Knative: panic ends after a stable window without the condition
    zero_after_s: float = 30.0      # Knative's scale-to-zero grace period (with min = 0 only)

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.max or self.max < 1:
            raise ConfigError("pool.min/max", "0 <= min <= max and max >= 1", (self.min, self.max))
        if self.target <= 0:
            raise ConfigError("autoscale.target", "a positive number", self.target)
        if self.max_up < 1 or self.max_down < 1:
            raise ConfigError("autoscale.max_scale_up/down", "numbers >= 1", (self.max_up, self.max_down))
        if self.period_s <= 0:
            raise ConfigError("autoscale.period", "a positive duration", self.period_s)
        if self.zero_after_s < 0:
            raise ConfigError("autoscale.scale_to_zero_after", "a duration >= 0", self.zero_after_s)
        if self.panic_threshold <= 1:
            raise ConfigError("autoscale.panic_threshold", "a factor > 1 (2.0 = 200 %)", self.panic_threshold)

    @classmethod
    def from_config(cls, pool: PoolConfig, auto: AutoscaleConfig) -> PolicyConfig:
        """Build from the TOML sections. With autoscale disabled the pool stays at `min`."""
        return cls(
            min=pool.min, max=pool.max if auto.enabled else pool.min, metric=Metric(auto.metric),
            target=float(auto.target), tolerance=auto.tolerance, period_s=float(auto.period),
            up_window_s=float(auto.scale_up_window), down_window_s=float(auto.scale_down_window),
            max_up=auto.max_scale_up, max_down=auto.max_scale_down,
            panic_window_s=float(auto.panic_window), panic_threshold=auto.panic_threshold,
            panic_hold_s=10 * float(auto.panic_window), zero_after_s=float(auto.scale_to_zero_after),
        )


@dataclass(frozen=True)
class Sample:
    """One observation by the driver.

    `current` counts servers that are starting or ready (not draining); `ready` those taking
    traffic; `value` is the metric per ready server (or the pool total when `ready` is 0);
    `queued` the requests waiting in the balancer for a server; `begun` the requests sent to a
    server since the last sample (with `queued` and `value`, what tells an idle pool).
    """

    at: float
    current: int
    ready: int
    value: float
    queued: int = 0
    begun: int = 0


@dataclass(frozen=True)
class Decision:
    at: float
    metric: Metric
    value: float
    target: float
    current: int
    recommended: int    # what the metric alone asks for (step 1)
    desired: int        # after windows, limits, panic and min/max
    rule: Rule
    panicking: bool             # in panic mode now (condition holds, or held within panic_hold_s)
    panic_condition: bool = False   # the panic condition itself held at this decision

    @property
    def delta(self) -> int:
        return self.desired - self.current

    @property
    def reason(self) -> str:
        unit = "s" if self.metric is Metric.P95 else ""
        head = (f"{self.metric.value} {self.value:.3g}{unit}/server vs target {self.target:g}{unit} "
                f"on {self.current} -> recommends {self.recommended}")
        if self.desired == self.recommended and self.rule in (Rule.TRACKING, Rule.PANIC):
            return f"{head}; desired {self.desired} ({self.rule.value})"
        return f"{head}; desired {self.desired} (held by {self.rule.value})"

    def as_dict(self) -> dict[str, object]:
        return {"at": self.at, "metric": self.metric.value, "value": round(self.value, 4),
                "target": self.target, "current": self.current, "recommended": self.recommended,
                "desired": self.desired, "rule": self.rule.value, "panicking": self.panicking,
                "panic_condition": self.panic_condition,
                "reason": self.reason}


class History:
    """Samples and the changes earlier decisions made, pruned to the longest window.

    Mutable but pure: the driver feeds it; `decide` only reads it.
    """

    def __init__(self, cfg: PolicyConfig) -> None:
        self.cfg = cfg
        self.samples: deque[Sample] = deque()
        self.changes: deque[tuple[float, int]] = deque()   # (at, delta) of acted-on decisions
        self.panic_until = -math.inf                       # panic holds until this time
        self.busy_at = -math.inf     # the last sample with a request begun, in flight or waiting
        self._keep_s = max(cfg.up_window_s, cfg.down_window_s, cfg.panic_window_s, cfg.period_s) + 1e-9

    def process_sample(self, sample: Sample) -> None:
        """Called by the driver once per period with the latest observation."""
        self.samples.append(sample)
        if sample.queued or sample.begun or sample.value > 0:
            self.busy_at = sample.at
        while self.samples and self.samples[0].at < sample.at - self._keep_s:
            self.samples.popleft()

    def process_decision(self, decision: Decision) -> None:
        """Called by the driver after acting on a decision (rate limits count these changes)."""
        if decision.delta:
            self.changes.append((decision.at, decision.delta))
        while self.changes and self.changes[0][0] <= decision.at - self.cfg.period_s:
            self.changes.popleft()
        if decision.panic_condition:
            self.panic_until = max(self.panic_until, decision.at + self.cfg.panic_hold_s)

    def within(self, window_s: float, now: float) -> list[Sample]:
        """Samples in (now - window_s, now]; the latest sample always counts (a 0 s window)."""
        if not self.samples:
            return []
        picked = [s for s in self.samples if now - window_s < s.at <= now]
        return picked or [self.samples[-1]]

    def changed_within_period(self, now: float) -> tuple[int, int]:
        """(servers added, servers removed) by decisions in (now - period, now]."""
        up = sum(d for at, d in self.changes if at > now - self.cfg.period_s and d > 0)
        down = -sum(d for at, d in self.changes if at > now - self.cfg.period_s and d < 0)
        return up, down


def recommend(cfg: PolicyConfig, sample: Sample) -> int:
    """Step 1: the count the metric asks for (tolerance band -> keep `current`)."""
    if sample.ready > 0 and abs(sample.value / cfg.target - 1.0) <= cfg.tolerance:
        return sample.current
    return math.ceil(max(sample.ready, 1) * sample.value / cfg.target - 1e-9)


def decide(history: History, now: float) -> Decision:
    """The desired number of servers now, and the rule that fixed it.

    Returns a `Decision`; the caller starts or drains `decision.delta` servers and then calls
    `history.process_decision(decision)` so rate limits and panic see what was done.
    """
    cfg = history.cfg
    if not history.samples:
        return Decision(now, cfg.metric, 0.0, cfg.target, 0, cfg.min, cfg.min, Rule.NO_DATA, False)
    latest = history.samples[-1]
    current = latest.current
    rec = recommend(cfg, latest)
    in_band = latest.ready > 0 and abs(latest.value / cfg.target - 1.0) <= cfg.tolerance
    rule = Rule.TOLERANCE if in_band else Rule.TRACKING

    # 2. Stabilization windows (HPA): the up window's minimum, the down window's maximum.
    up_rec = min(recommend(cfg, s) for s in history.within(cfg.up_window_s, now))
    down_rec = max(recommend(cfg, s) for s in history.within(cfg.down_window_s, now))
    if rec > current:
        desired = max(current, up_rec)
        if desired < rec:
            rule = Rule.UP_WINDOW
    elif rec < current:
        desired = min(current, down_rec)
        if desired > rec:
            rule = Rule.DOWN_WINDOW
    else:
        desired = current

    # 3. Rate limits per period.
    added, removed = history.changed_within_period(now)
    if desired > current and desired - current > cfg.max_up - added:
        desired = current + max(0, cfg.max_up - added)
        rule = Rule.RATE_UP
    elif desired < current and current - desired > cfg.max_down - removed:
        desired = current - max(0, cfg.max_down - removed)
        rule = Rule.RATE_DOWN

    # 4. Panic (Knative): average over the short window vs the ready servers.
    # Averaged as pool totals (Knative averages total concurrency), so samples taken with
    # different ready counts stay comparable.
    recent = history.within(cfg.panic_window_s, now)
    panic_total = sum(max(s.ready, 1) * s.value for s in recent) / len(recent)
    panic_rec = math.ceil(panic_total / cfg.target - 1e-9)
    panic_now = latest.ready > 0 and panic_rec >= cfg.panic_threshold * latest.ready
    panicking = panic_now or now < history.panic_until
    if panic_now and max(panic_rec, rec, desired) > current:
        desired = max(panic_rec, rec, desired)
        rule = Rule.PANIC
    if panicking and desired < current:
        desired = current
        rule = Rule.PANIC_HOLD

    # 5. No scale-down while servers are starting.
    if desired < current and latest.ready < current:
        desired = current
        rule = Rule.STARTING

    # 6. Scale to zero only after an idle grace period; from zero at once when a request waits.
    if desired == 0 and current > 0 and now - history.busy_at < cfg.zero_after_s:
        desired, rule = 1, Rule.ZERO_GRACE
    if latest.ready == 0 and latest.queued > 0 and desired == 0:
        desired, rule = 1, Rule.FROM_ZERO

    # 7. Bounds.
    if desired > cfg.max:
        desired, rule = cfg.max, Rule.MAX
    elif desired < cfg.min:
        desired, rule = cfg.min, Rule.MIN
    return Decision(now, cfg.metric, latest.value, cfg.target, current, rec, desired, rule,
                    panicking, panic_now)
