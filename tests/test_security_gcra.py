"""GCRA maths (pure core): tables for the rules, Hypothesis for the burst bound."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxiway.security.ratelimit import Limit, ceil_seconds, check, check_all, gcra_check

T = 1000  # emission interval (units are abstract here)


@pytest.mark.parametrize(
    ("tat", "now", "tau", "expected"),
    [
        pytest.param(0, 5000, 0, (True, 6000, 0, 0), id="idle-client-no-burst"),
        pytest.param(0, 5000, 2 * T, (True, 6000, 0, 2), id="idle-client-burst-2"),
        pytest.param(6000, 5000, 0, (False, 6000, 1000, 0), id="too-soon-no-burst"),
        pytest.param(6000, 6000, 0, (True, 7000, 0, 0), id="exactly-on-schedule"),
        pytest.param(7000, 5000, 2 * T, (True, 8000, 0, 0), id="last-of-burst"),
        pytest.param(8000, 5000, 2 * T, (False, 8000, 1000, 0), id="burst-used-up"),
        pytest.param(8000, 5500, 2 * T, (False, 8000, 500, 0), id="retry-after-partial"),
        pytest.param(6500, 5000, 2 * T, (True, 7500, 0, 0), id="half-interval-debt"),
        pytest.param(6000, 5000, 2 * T, (True, 7000, 0, 1), id="one-left"),
    ],
)
def test_gcra_table(tat: int, now: int, tau: int, expected: tuple[bool, int, int, int]) -> None:
    assert gcra_check(tat, now, T, tau) == expected


def test_denial_does_not_add_debt() -> None:
    """A flood of refused requests must not push the client's next allowed time further out."""
    tat = 0
    now = 10_000
    allowed, tat, _, _ = gcra_check(tat, now, T, 0)
    assert allowed
    for _ in range(100):
        allowed, new_tat, retry, _ = gcra_check(tat, now, T, 0)
        assert not allowed and new_tat == tat and retry == T
    assert gcra_check(tat, now + T, T, 0)[0]


@pytest.mark.parametrize(
    ("count", "period_s", "burst", "interval", "tolerance"),
    [
        pytest.param(100, 60, 0, 600_000, 0, id="100/m"),
        pytest.param(10, 1, 5, 100_000, 500_000, id="10/s-burst-5"),
        pytest.param(3, 1, 0, 333_333, 0, id="3/s-rounds-down"),
    ],
)
def test_limit_from_rate(count: int, period_s: float, burst: int, interval: int, tolerance: int) -> None:
    lim = Limit.from_rate(count, period_s, burst)
    assert (lim.emission_interval, lim.burst_tolerance) == (interval, tolerance)


@pytest.mark.parametrize(("count", "period_s", "burst"), [(0, 1, 0), (1, 0, 0), (1, 1, -1)])
def test_limit_from_rate_refuses_nonsense(count: int, period_s: float, burst: int) -> None:
    with pytest.raises(ValueError):
        Limit.from_rate(count, period_s, burst)


def test_ceil_seconds() -> None:
    assert ceil_seconds(0) == 0
    assert ceil_seconds(-5) == 0
    assert ceil_seconds(1) == 1
    assert ceil_seconds(1_000_000) == 1
    assert ceil_seconds(1_000_001) == 2


def test_reset_after_is_time_to_full_burst() -> None:
    lim = Limit.from_rate(10, 1, 2)
    v = check(0, 1_000_000, lim)
    assert v.allowed and v.remaining == 2 and v.reset_after == 100_000


def test_check_all_commits_nothing_when_one_rule_denies() -> None:
    loose, strict = Limit.from_rate(100, 1, 10), Limit.from_rate(1, 1, 0)
    idx, verdicts = check_all([0, 2_000_000], 1_000_000, [loose, strict])
    assert idx == 1
    assert verdicts[0].allowed and not verdicts[1].allowed
    idx, _ = check_all([0, 0], 1_000_000, [loose, strict])
    assert idx == -1


@settings(max_examples=300, deadline=None)
@given(
    interval=st.integers(1, 10_000),
    burst=st.integers(0, 20),
    gaps=st.lists(st.integers(0, 5_000), min_size=1, max_size=300),
    start_tat=st.integers(0, 10_000),
)
def test_never_admits_more_than_the_burst(interval: int, burst: int, gaps: list[int], start_tat: int) -> None:
    """In every interval [t0, t1]: admitted <= 1 + burst + (t1 - t0) / T, whatever the arrival times."""
    tau = burst * interval
    tat, now = start_tat, 0
    admitted: list[int] = []
    for gap in gaps:
        now += gap
        allowed, new_tat, retry, remaining = gcra_check(tat, now, interval, tau)
        assert new_tat >= tat
        if allowed:
            admitted.append(now)
            assert retry == 0 and new_tat > now
            assert 0 <= remaining <= burst
        else:
            assert new_tat == tat and retry > 0 and remaining == 0
            # Waiting exactly retry_after makes the next request allowed.
            assert gcra_check(tat, now + retry, interval, tau)[0]
        tat = new_tat
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            span = admitted[j] - admitted[i]
            assert j - i + 1 <= 1 + burst + span // interval


@settings(max_examples=100, deadline=None)
@given(interval=st.integers(1, 1000), burst=st.integers(0, 50))
def test_a_burst_at_once_admits_exactly_one_plus_burst(interval: int, burst: int) -> None:
    tat, now, n = 0, 10**9, 0
    while True:
        allowed, tat2, _, remaining = gcra_check(tat, now, interval, burst * interval)
        if not allowed:
            break
        assert remaining == burst - n
        tat, n = tat2, n + 1
    assert n == 1 + burst
