"""Health state machines step by step: rise/fall, ejection growth and cap, recovery, retry budget."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxiway.balancing.health import ActiveHealth, HealthState, OutlierDetector, RetryBudget
from taxiway.balancing.model import Server, ServerState
from taxiway.config import Duration, OutlierConfig

# ----------------------------------------------------------------------------------------------
# Active checks: HAProxy rise/fall


@pytest.mark.parametrize(("rise", "fall", "start", "checks", "returns", "final"), [
    pytest.param(2, 3, True, "FFF", [None, None, False], "DOWN", id="fall-consecutive-failures-go-down"),
    pytest.param(2, 3, True, "FSFSFSF", [None] * 7, "UP", id="a-success-puts-health-back"),
    pytest.param(2, 3, True, "FFSFF", [None, None, None, None, False], "DOWN",
                 id="more-failures-than-successes-drain-it"),
    pytest.param(2, 3, False, "SS", [None, True], "UP", id="rise-consecutive-successes-go-up"),
    pytest.param(2, 3, False, "SFS", [None, None, None], "DOWN", id="a-failure-restarts-rise"),
    pytest.param(1, 1, True, "FSF", [False, True, False], "DOWN", id="rise-fall-one-flaps-each-check"),
    pytest.param(3, 2, False, "SSSFF", [None, None, True, None, False], "DOWN", id="up-then-down"),
])
def test_active_health_steps(rise: int, fall: int, start: bool, checks: str, returns: list[bool | None],
                             final: str) -> None:
    h = ActiveHealth(rise, fall, healthy=start)
    assert [h.process_check(c == "S") for c in checks] == returns
    assert h.state is HealthState[final]
    assert h.healthy is (final == "UP")


def test_active_health_repr_shows_the_counter() -> None:
    h = ActiveHealth(2, 3)
    h.process_check(False)
    assert repr(h) == "<ActiveHealth UP health=3/4 rise=2 fall=3>"


@pytest.mark.parametrize(("rise", "fall"), [(0, 3), (2, 0), (-1, -1)])
def test_active_health_rejects_nonsense_counts(rise: int, fall: int) -> None:
    with pytest.raises(ValueError, match="rise and fall"):
        ActiveHealth(rise, fall)


@settings(max_examples=300, deadline=None)
@given(rise=st.integers(1, 5), fall=st.integers(1, 5), start=st.booleans(),
       checks=st.lists(st.booleans(), max_size=40))
def test_active_health_properties(rise: int, fall: int, start: bool, checks: list[bool]) -> None:
    h = ActiveHealth(rise, fall, healthy=start)
    run_ok = run_bad = 0
    for ok in checks:
        before = h.healthy
        changed = h.process_check(ok)
        # A value is returned exactly when the state flipped, and it is the new state.
        assert (changed is not None) == (h.healthy != before)
        if changed is not None:
            assert changed is h.healthy
        assert 0 <= h.health <= rise + fall - 1
        run_ok, run_bad = (run_ok + 1, 0) if ok else (0, run_bad + 1)
        if run_ok >= rise:
            assert h.healthy
        if run_bad >= fall:
            assert not h.healthy


# ----------------------------------------------------------------------------------------------
# Passive outlier detection


def outlier(**kw: object) -> OutlierDetector:
    defaults: dict[str, object] = {"consecutive_failures": 3, "base_ejection": Duration(10),
                                   "max_ejection": Duration(60), "max_ejected_percent": 50}
    defaults.update(kw)
    return OutlierDetector(OutlierConfig(**defaults))  # type: ignore[arg-type]


def pool(n: int) -> list[Server]:
    return [Server(f"s{i}", "127.0.0.1", 9000 + i) for i in range(n)]


def fail(det: OutlierDetector, s: Server, times: int, now: float, servers: list[Server]) -> list[bool]:
    return [det.process_outcome(s, False, now, servers) for _ in range(times)]


def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    det, servers = outlier(), pool(4)
    s = servers[0]
    assert fail(det, s, 2, 0.0, servers) == [False, False]
    assert det.process_outcome(s, True, 0.0, servers) is False
    assert s.consecutive_failures == 0
    assert fail(det, s, 3, 1.0, servers) == [False, False, True]
    assert s.state(1.0) is ServerState.EJECTED
    assert not s.is_available(5.0)
    assert s.is_available(11.0)          # back by itself after base_ejection


def test_slow_start_ramps_from_the_end_of_an_ejection() -> None:
    det, servers = outlier(), pool(4)
    s = servers[0]
    s.slow_start_s = 20.0
    fail(det, s, 3, 100.0, servers)             # out until 110
    assert s.slow_start_factor(110.0) == pytest.approx(0.1)
    assert s.slow_start_factor(120.0) == pytest.approx(0.5)
    assert s.slow_start_factor(130.0) == 1.0


def test_ejection_time_doubles_and_is_capped() -> None:
    det, servers = outlier(), pool(4)
    s = servers[0]
    now, lengths = 0.0, []
    for _ in range(5):
        assert fail(det, s, 3, now, servers)[-1] is True
        lengths.append(s.ejected_until - now)
        now = s.ejected_until          # fails again the moment it is back
    assert lengths == [10, 20, 40, 60, 60]
    assert s.ejections == 5


def test_outcomes_arriving_while_ejected_are_ignored() -> None:
    det, servers = outlier(), pool(4)
    s = servers[0]
    fail(det, s, 3, 0.0, servers)
    assert fail(det, s, 10, 1.0, servers) == [False] * 10
    assert s.ejected_until == 10.0 and s.ejections == 1


@pytest.mark.parametrize(("n", "percent", "ejectable"), [
    pytest.param(4, 50, 2, id="half-of-four"),
    pytest.param(10, 10, 1, id="envoy-10-percent"),
    pytest.param(3, 50, 1, id="rounds-down"),
    pytest.param(1, 50, 0, id="never-the-only-server"),
    pytest.param(4, 100, 4, id="all-allowed"),
    pytest.param(4, 0, 0, id="ejection-off"),
])
def test_never_more_than_max_ejected_percent(n: int, percent: int, ejectable: int) -> None:
    det, servers = outlier(max_ejected_percent=percent), pool(n)
    ejected = [fail(det, s, 3, 0.0, servers)[-1] for s in servers]
    assert sum(ejected) == ejectable
    assert sum(s.is_ejected(0.0) for s in servers) == ejectable


def test_cap_frees_up_when_an_ejection_ends() -> None:
    det, servers = outlier(), pool(2)
    a, b = servers
    assert fail(det, a, 3, 0.0, servers)[-1] is True
    assert fail(det, b, 3, 1.0, servers)[-1] is False   # would be 2 of 2
    # a is back at 10.0; b is still failing, so its next failure ejects it at once.
    assert fail(det, b, 1, 10.5, servers) == [True]


def test_recovery_forgets_ejections_after_staying_in() -> None:
    det, servers = outlier(), pool(4)
    s = servers[0]
    fail(det, s, 3, 0.0, servers)          # out 0..10
    fail(det, s, 3, 10.0, servers)         # out 10..30, ejections = 2
    assert s.ejections == 2
    det.process_outcome(s, True, 35.0, servers)    # 5 s in: nothing forgotten yet
    assert s.ejections == 2
    det.process_outcome(s, True, 41.0, servers)    # one base period clean: 2 -> 1
    assert s.ejections == 1
    det.process_outcome(s, True, 51.0, servers)    # another: 1 -> 0
    assert s.ejections == 0
    assert fail(det, s, 3, 60.0, servers)[-1] is True
    assert s.ejected_until - 60.0 == 10.0          # back to the base ejection time


def test_disabled_detector_counts_but_never_ejects() -> None:
    det, servers = outlier(enabled=False), pool(4)
    assert fail(det, servers[0], 20, 0.0, servers) == [False] * 20
    assert servers[0].consecutive_failures == 20


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 8), percent=st.integers(0, 100),
       events=st.lists(st.tuples(st.integers(0, 7), st.booleans(), st.floats(0, 5)), max_size=120))
def test_ejected_share_never_exceeds_the_cap(n: int, percent: int, events) -> None:
    det, servers = outlier(max_ejected_percent=percent, consecutive_failures=2), pool(n)
    now = 0.0
    for idx, ok, dt in events:
        now += dt
        det.process_outcome(servers[idx % n], ok, now, servers)
        assert sum(s.is_ejected(now) for s in servers) * 100 <= percent * n
        assert all(s.ejected_until - now <= 60.0 for s in servers)


# ----------------------------------------------------------------------------------------------
# Retry budget


def test_retry_budget_allows_its_ratio_under_steady_traffic() -> None:
    budget = RetryBudget(0.2, min_per_s=0.0)
    allowed = 0
    for i in range(10_000):          # 1000 requests/s, every one wants a retry
        now = i / 1000
        budget.process_request(now)
        allowed += budget.allow_retry(now)
    assert 0.19 * 10_000 <= allowed <= 0.2 * 10_000


def test_retry_budget_reserve_lets_a_quiet_service_retry() -> None:
    budget = RetryBudget(0.2, min_per_s=1.0, window_s=10.0)
    assert sum(budget.allow_retry(0.0) for _ in range(50)) == 10     # reserve = 1/s x 10 s
    assert budget.allow_retry(0.0) is False
    assert budget.allow_retry(2.0) is True                           # the reserve refills


def test_retry_budget_zero_allows_nothing_without_reserve() -> None:
    budget = RetryBudget(0.0, min_per_s=0.0)
    budget.process_request(0.0)
    assert budget.allow_retry(0.0) is False


@settings(max_examples=200, deadline=None)
@given(ratio=st.floats(0, 1), min_per_s=st.floats(0, 20),
       events=st.lists(st.tuples(st.booleans(), st.floats(0, 3)), max_size=300))
def test_retries_never_exceed_ratio_plus_reserve(ratio: float, min_per_s: float, events) -> None:
    """Hard bound over any run: retries <= ratio x requests + min_per_s x (window + elapsed)."""
    budget = RetryBudget(ratio, min_per_s=min_per_s, window_s=10.0)
    now = requests = retries = 0
    for is_request, dt in events:
        now += dt
        if is_request:
            budget.process_request(now)
            requests += 1
        else:
            retries += budget.allow_retry(now)
        assert retries <= ratio * requests + min_per_s * (10.0 + now) + 1e-6


@pytest.mark.parametrize(("ratio", "min_per_s", "window_s"), [(-0.1, 10, 10), (0.2, -1, 10), (0.2, 10, 0)])
def test_retry_budget_rejects_nonsense(ratio: float, min_per_s: float, window_s: float) -> None:
    with pytest.raises(ValueError, match="ratio"):
        RetryBudget(ratio, min_per_s, window_s)


def test_zero_base_ejection_forgets_at_once_and_forget_drops_state() -> None:
    det, servers = outlier(base_ejection=Duration(0)), pool(4)
    s = servers[0]
    assert fail(det, s, 3, 0.0, servers)[-1] is True     # ejected for 0 s: back immediately
    assert s.ejections == 1
    det.process_outcome(s, True, 0.0, servers)
    assert s.ejections == 0
    det.forget(s)
    assert repr(RetryBudget(0.2)).startswith("<RetryBudget ratio=0.2")
