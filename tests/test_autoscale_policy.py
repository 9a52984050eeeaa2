"""The pure autoscaling policy, in virtual time: tables per rule, a load-step story, properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxiway.autoscale.policy import Decision, History, Metric, PolicyConfig, Rule, Sample, decide
from taxiway.config import parse_config
from taxiway.errors import ConfigError


def cfg(**kw: object) -> PolicyConfig:
    base: dict[str, object] = dict(min=1, max=10, target=10.0, period_s=1.0, up_window_s=0.0,
                                   down_window_s=0.0, max_up=100, max_down=100, panic_threshold=100.0,
                                   panic_window_s=6.0, panic_hold_s=60.0)
    base.update(kw)
    return PolicyConfig(**base)  # type: ignore[arg-type]


def run(c: PolicyConfig, samples: list[tuple[float, int, int, float]], act: bool = True) -> Decision:
    """Feed (at, current, ready, value) samples, deciding after each; return the last decision."""
    h = History(c)
    d: Decision | None = None
    for at, current, ready, value in samples:
        h.process_sample(Sample(at, current, ready, value))
        d = decide(h, at)
        if act:
            h.process_decision(d)
    assert d is not None
    return d


# -- step 1: the recommendation and the tolerance band -----------------------------------------

@pytest.mark.parametrize(("current", "value", "desired", "rule"), [
    pytest.param(2, 20.0, 4, Rule.TRACKING, id="double-load-doubles"),
    pytest.param(2, 15.0, 3, Rule.TRACKING, id="ceil-1.5x"),
    pytest.param(4, 5.0, 2, Rule.TRACKING, id="half-load-halves"),
    pytest.param(3, 10.9, 3, Rule.TOLERANCE, id="within-+10%-keeps"),
    pytest.param(3, 9.1, 3, Rule.TOLERANCE, id="within--10%-keeps"),
    pytest.param(3, 11.5, 4, Rule.TRACKING, id="outside-band-moves"),
    pytest.param(3, 0.0, 1, Rule.MIN, id="idle-goes-to-min"),
    pytest.param(5, 100.0, 10, Rule.MAX, id="capped-at-max"),
])
def test_recommendation_and_band(current: int, value: float, desired: int, rule: Rule) -> None:
    d = run(cfg(), [(0.0, current, current, value)])
    assert (d.desired, d.rule) == (desired, rule)
    assert d.metric is Metric.INFLIGHT and d.current == current


def test_scale_from_zero_uses_the_pool_total() -> None:
    d = run(cfg(min=0), [(0.0, 0, 0, 25.0)])
    assert d.desired == 3
    d = run(cfg(min=0), [(0.0, 0, 0, 10.0)])   # tolerance band must not keep 0 servers
    assert d.desired == 1


def run_full(c: PolicyConfig, samples: list[Sample]) -> Decision:
    """Like `run`, with whole samples (requests waiting in the balancer, requests begun)."""
    h = History(c)
    d: Decision | None = None
    for sample in samples:
        h.process_sample(sample)
        d = decide(h, sample.at)
        h.process_decision(d)
    assert d is not None
    return d


@pytest.mark.parametrize(("samples", "desired", "rule"), [
    # (at, current, ready, value, queued, begun)
    pytest.param([(0.0, 0, 0, 0.0, 1, 0)], 1, Rule.FROM_ZERO, id="a-waiting-request-starts-one"),
    pytest.param([(0.0, 0, 0, 0.0, 0, 0)], 0, Rule.TRACKING, id="nothing-waiting-stays-at-zero"),
    pytest.param([(0.0, 0, 0, 0.0, 1, 0)], 1, Rule.FROM_ZERO, id="past-the-up-window-too"),
    pytest.param([(0.0, 1, 1, 2.0, 0, 5), (20.0, 1, 1, 0.0, 0, 0)], 1, Rule.ZERO_GRACE,
                 id="busy-20s-ago-keeps-the-last-server"),
    pytest.param([(0.0, 1, 1, 2.0, 0, 5), (31.0, 1, 1, 0.0, 0, 0)], 0, Rule.TRACKING,
                 id="idle-past-the-grace-goes-to-zero"),
    pytest.param([(0.0, 1, 1, 0.0, 0, 3), (29.0, 1, 1, 0.0, 0, 0)], 1, Rule.ZERO_GRACE,
                 id="requests-begun-count-as-busy-even-at-0-in-flight"),
    pytest.param([(0.0, 1, 1, 0.0, 0, 0), (5.0, 0, 0, 0.0, 2, 0)], 1, Rule.FROM_ZERO,
                 id="the-last-one-draining-and-a-request-waits"),
])
def test_scale_to_zero_and_back(samples: list[tuple[float, int, int, float, int, int]], desired: int,
                                rule: Rule) -> None:
    c = cfg(min=0, zero_after_s=30.0, up_window_s=10.0)
    d = run_full(c, [Sample(*s) for s in samples])
    assert (d.desired, d.rule) == (desired, rule), d.reason


def test_below_min_is_raised_to_min() -> None:
    d = run(cfg(min=3), [(0.0, 1, 1, 0.0)])
    assert (d.desired, d.rule) == (3, Rule.MIN)


def test_no_sample_keeps_min() -> None:
    d = decide(History(cfg(min=2)), 0.0)
    assert (d.desired, d.rule) == (2, Rule.NO_DATA)


# -- step 2: stabilization windows ---------------------------------------------------------------

def test_up_window_needs_the_load_to_last() -> None:
    c = cfg(up_window_s=3.0)
    # A one-sample spike after calm: the window minimum is the calm recommendation.
    d = run(c, [(0, 2, 2, 10.0), (1, 2, 2, 10.0), (2, 2, 2, 40.0)])
    assert (d.desired, d.rule) == (2, Rule.UP_WINDOW)
    # Load high across the whole window: scale up to the smallest recommendation in it.
    d = run(c, [(0, 2, 2, 10), (1, 2, 2, 30), (2, 2, 2, 40), (3, 2, 2, 40)])
    assert (d.desired, d.rule) == (6, Rule.UP_WINDOW)   # window (0, 3] holds t=1: recommends 6
    d = run(c, [(0, 2, 2, 30), (1, 2, 2, 40), (2, 2, 2, 40), (3, 2, 2, 40), (4, 2, 2, 40)])
    assert (d.desired, d.rule) == (8, Rule.TRACKING)


def test_down_window_takes_the_highest_recommendation() -> None:
    c = cfg(down_window_s=10.0)
    samples = [(0.0, 6, 6, 10.0)] + [(float(t), 6, 6, 1.0) for t in range(1, 10)]
    d = run(c, samples)
    assert (d.desired, d.rule) == (6, Rule.DOWN_WINDOW)
    # Once the busy sample leaves the window the pool shrinks.
    d = run(c, [*samples, (10.0, 6, 6, 1.0), (11.0, 6, 6, 1.0)])
    assert d.desired == 1


def test_down_window_steps_down_to_the_window_maximum() -> None:
    c = cfg(down_window_s=5.0)
    d = run(c, [(0, 8, 8, 10), (1, 8, 8, 5), (2, 8, 8, 2), (3, 8, 8, 2), (4, 8, 8, 2)], act=False)
    assert (d.desired, d.rule) == (8, Rule.DOWN_WINDOW)      # the t=0 sample recommends 8
    d = run(c, [(0, 8, 8, 10), (1, 8, 8, 5), (2, 8, 8, 2), (3, 8, 8, 2), (4, 8, 8, 2), (5, 8, 8, 2)],
            act=False)
    assert (d.desired, d.rule) == (4, Rule.DOWN_WINDOW)      # window now holds t=1 (recommends 4)


# -- step 3: rate limits --------------------------------------------------------------------------

def test_max_scale_up_per_period() -> None:
    c = cfg(max_up=2, period_s=10.0)
    h = History(c)
    h.process_sample(Sample(0.0, 1, 1, 80.0))
    d = decide(h, 0.0)
    assert (d.desired, d.rule) == (3, Rule.RATE_UP)
    h.process_decision(d)
    h.process_sample(Sample(5.0, 3, 3, 80 / 3))
    d = decide(h, 5.0)                                # period still used up
    assert (d.desired, d.rule) == (3, Rule.RATE_UP)
    h.process_decision(d)
    h.process_sample(Sample(10.5, 3, 3, 80 / 3))
    d = decide(h, 10.5)                               # a new period: two more
    assert (d.desired, d.rule) == (5, Rule.RATE_UP)


def test_max_scale_down_per_period() -> None:
    c = cfg(max_down=1, period_s=1.0)
    h = History(c)
    current = 8
    seen = []
    for t in range(8):
        h.process_sample(Sample(float(t), current, current, 0.0))
        d = decide(h, float(t))
        h.process_decision(d)
        seen.append(d.desired)
        current = d.desired
    assert seen == [7, 6, 5, 4, 3, 2, 1, 1]


# -- step 4: panic ------------------------------------------------------------------------------

def test_panic_scales_up_at_once_past_window_and_rate_limit() -> None:
    c = cfg(up_window_s=30.0, max_up=1, panic_threshold=2.0, panic_window_s=2.0)
    d = run(c, [(0, 2, 2, 10.0), (1, 2, 2, 10.0), (2, 2, 2, 50.0), (3, 2, 2, 50.0)])
    assert d.panicking and d.panic_condition
    assert (d.desired, d.rule) == (10, Rule.PANIC)     # ceil(2 x 50 / 10) = 10 at once


def test_below_threshold_is_no_panic() -> None:
    c = cfg(up_window_s=30.0, panic_threshold=2.0, panic_window_s=2.0)
    d = run(c, [(0, 2, 2, 10.0), (1, 2, 2, 15.0), (2, 2, 2, 15.0)])
    assert not d.panicking
    assert (d.desired, d.rule) == (2, Rule.UP_WINDOW)


def test_no_scale_down_while_panicking() -> None:
    c = cfg(panic_threshold=2.0, panic_window_s=1.0, panic_hold_s=10.0)
    h = History(c)
    h.process_sample(Sample(0.0, 2, 2, 50.0))
    d = decide(h, 0.0)
    h.process_decision(d)
    assert d.rule is Rule.PANIC and d.desired == 10
    for t in range(1, 10):                 # load vanishes, but the hold lasts 10 s
        h.process_sample(Sample(float(t), 10, 10, 0.0))
        d = decide(h, float(t))
        h.process_decision(d)
        assert (d.desired, d.rule, d.panicking) == (10, Rule.PANIC_HOLD, True)
    h.process_sample(Sample(10.5, 10, 10, 0.0))
    d = decide(h, 10.5)
    assert not d.panicking and d.desired == 1


# -- step 5: starting servers ---------------------------------------------------------------------

def test_no_scale_down_while_servers_start() -> None:
    d = run(cfg(), [(0.0, 4, 2, 0.0)])
    assert (d.desired, d.rule) == (4, Rule.STARTING)


def test_starting_servers_count_toward_current() -> None:
    # 2 ready carry 20 each -> 4 wanted; 4 already exist (2 starting): nothing more to start.
    d = run(cfg(), [(0.0, 4, 2, 20.0)])
    assert d.desired == 4


# -- decisions explain themselves -------------------------------------------------------------

def test_reason_names_metric_values_and_rule() -> None:
    d = run(cfg(max_up=1), [(0.0, 2, 2, 40.0)])
    assert d.rule is Rule.RATE_UP
    assert "inflight 40/server" in d.reason and "target 10" in d.reason
    assert "recommends 8" in d.reason and "desired 3" in d.reason and "max_scale_up" in d.reason
    assert d.as_dict()["rule"] == "max_scale_up"
    p = run(cfg(metric=Metric.P95, target=0.1), [(0.0, 2, 2, 0.3)])
    assert "p95 0.3s/server" in p.reason and p.desired == 6


# -- from the TOML schema ------------------------------------------------------------------------

def test_from_config() -> None:
    c = parse_config({"pool": {"command": "app --port {port}", "min": 2, "max": 6},
                      "autoscale": {"metric": "rps", "target": 50, "scale_down_window": "30s",
                                    "panic_window": "3s"}})
    assert c.pool is not None
    pc = PolicyConfig.from_config(c.pool, c.autoscale)
    assert (pc.min, pc.max, pc.metric, pc.target, pc.down_window_s) == (2, 6, Metric.RPS, 50.0, 30.0)
    assert pc.panic_hold_s == 30.0
    off = parse_config({"pool": {"command": "x {port}", "min": 2, "max": 6},
                        "autoscale": {"enabled": False}})
    assert off.pool is not None
    assert PolicyConfig.from_config(off.pool, off.autoscale).max == 2


@pytest.mark.parametrize("kw", [
    pytest.param({"min": 3, "max": 2}, id="min>max"),
    pytest.param({"target": 0.0}, id="target-0"),
    pytest.param({"max_up": 0}, id="max-up-0"),
    pytest.param({"panic_threshold": 1.0}, id="panic-threshold-1"),
])
def test_bad_policy_config(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        cfg(**kw)


# -- a load step in virtual time ------------------------------------------------------------------

def simulate(c: PolicyConfig, load: list[float], start_delay_s: float = 2.0) -> list[int]:
    """A closed loop in virtual time: `load[t]` total in-flight requests; servers ready after
    `start_delay_s`; scale-downs take effect at once. Returns the server count per second."""
    h = History(c)
    ready_at: list[float] = [-1.0] * c.min
    counts = []
    for t, total in enumerate(load):
        now = float(t)
        ready = sum(1 for r in ready_at if r <= now)
        h.process_sample(Sample(now, len(ready_at), ready, total / max(ready, 1)))
        d = decide(h, now)
        h.process_decision(d)
        if d.delta > 0:
            ready_at += [now + start_delay_s] * d.delta
        elif d.delta < 0:
            ready_at = sorted(ready_at)[: d.desired]
        counts.append(len(ready_at))
    return counts


def test_load_step_up_and_down() -> None:
    c = PolicyConfig(min=1, max=8, target=10, down_window_s=20, max_up=4, max_down=1)
    load = [5.0] * 10 + [60.0] * 30 + [5.0] * 60
    counts = simulate(c, load)
    assert counts[9] == 1
    assert max(counts[10:40]) == 6           # ceil(60 / 10)
    assert counts[39] == 6
    assert counts[45] == 6                   # down window (20 s) holds the pool
    assert counts[-1] == 1                   # and then it steps back to min
    assert all(1 <= n <= 8 for n in counts)


# -- properties ----------------------------------------------------------------------------------

policies = st.builds(
    PolicyConfig,
    min=st.integers(0, 3), max=st.integers(3, 12), target=st.floats(0.5, 50),
    tolerance=st.floats(0, 0.5), period_s=st.floats(0.5, 5), up_window_s=st.floats(0, 10),
    down_window_s=st.floats(0, 60), max_up=st.integers(1, 5), max_down=st.integers(1, 3),
    panic_window_s=st.floats(0.5, 10), panic_threshold=st.floats(1.1, 4), panic_hold_s=st.floats(0, 60),
)
loads = st.lists(st.tuples(st.floats(0, 500), st.integers(0, 3)), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(policies, loads)
def test_properties(c: PolicyConfig, steps: list[tuple[float, int]]) -> None:
    """Any load sequence: within [min, max]; growth only by max_up per period unless panicking;
    shrink only by max_down per period; never shrink while panicking or while servers start."""
    h = History(c)
    current = c.min
    now = 0.0
    log: list[Decision] = []
    for total, starting in steps:
        now += 0.5
        ready = max(current - starting, 0)
        h.process_sample(Sample(now, current, ready, total / max(ready, 1)))
        d = decide(h, now)
        again = decide(h, now)
        assert again == d                                     # pure: same input, same answer
        assert c.min <= d.desired <= c.max
        assert math.isfinite(d.value)
        if d.desired < current:
            assert not d.panicking and ready == current
            removed = -sum(x.delta for x in log if x.at > now - c.period_s and x.delta < 0)
            assert current - d.desired + removed <= c.max_down or d.rule is Rule.MAX
        if d.desired > current and not d.panic_condition and d.rule is not Rule.MIN:
            added = sum(x.delta for x in log if x.at > now - c.period_s and x.delta > 0)
            assert d.desired - current + added <= c.max_up
        h.process_decision(d)
        log.append(d)
        current = d.desired
