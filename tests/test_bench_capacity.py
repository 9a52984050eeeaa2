"""The --find-capacity search, driven exhaustively by synthetic servers instead of real ones."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taxiway.bench.capacity import CapacitySearch, Phase, Slo, StepResult, parse_error_rate, parse_slo
from taxiway.errors import UsageError

SLO = Slo(percentile=99, limit_ms=200, max_error_rate=0.001)


def drive(search: CapacitySearch, model: Callable[[int], StepResult], max_steps: int = 500) -> int:
    steps = 0
    while (level := search.next_level()) is not None:
        search.process_result(model(level))
        steps += 1
        assert steps < max_steps, "search does not terminate"
    return steps


def knee(capacity: int) -> Callable[[int], StepResult]:
    """A server whose p99 is fine up to `capacity` users and far over the SLO beyond."""
    return lambda level: StepResult(level, 50.0 if level <= capacity else 900.0, 0.0)


@pytest.mark.parametrize("start", [1, 7, 10, 64])
def test_every_true_capacity_is_found_within_precision(start: int) -> None:
    for capacity in range(0, 700):
        search = CapacitySearch(SLO, start=start, maximum=10_000, repeats=1, precision=0.05)
        drive(search, knee(capacity))
        answer = search.answer
        assert answer <= capacity, (capacity, answer)                       # never overstates
        assert capacity - answer <= max(1, int(0.05 * answer)), (capacity, answer)
        assert search.phase is Phase.DONE and not search.is_capped()


def test_exact_answer_with_zero_precision() -> None:
    for capacity in range(0, 300):
        search = CapacitySearch(SLO, start=10, maximum=1000, repeats=1, precision=0.0)
        drive(search, knee(capacity))
        assert search.answer == capacity


def test_steps_are_logarithmic() -> None:
    for capacity in (5, 50, 500, 5000, 50_000):
        search = CapacitySearch(SLO, start=10, maximum=1_000_000, repeats=1, precision=0.0)
        steps = drive(search, knee(capacity))
        assert steps <= 2 * math.log2(capacity + 10) + 4


def test_each_passing_level_is_repeated_and_one_failure_is_enough() -> None:
    search = CapacitySearch(SLO, start=10, maximum=1000, repeats=3, precision=0.0)
    drive(search, knee(25))
    levels = [r.level for r, _ in search.history]
    assert levels[:3] == [10, 10, 10]                    # confirmed three times before growing
    assert levels[3:6] == [20, 20, 20]
    assert levels[6] == 40 and levels[7] != 40           # a failing level is not repeated
    assert search.answer == 25


def test_errors_count_against_the_slo() -> None:
    def model(level: int) -> StepResult:
        return StepResult(level, 10.0, 0.0 if level <= 33 else 0.01)
    search = CapacitySearch(SLO, start=10, maximum=1000, repeats=1, precision=0.0)
    drive(search, model)
    assert search.answer == 33


def test_capped_at_maximum() -> None:
    search = CapacitySearch(SLO, start=10, maximum=100, repeats=2)
    drive(search, knee(10**9))
    assert search.answer == 100 and search.is_capped()


def test_nothing_meets_the_slo() -> None:
    search = CapacitySearch(SLO, start=10, maximum=100, repeats=2)
    drive(search, knee(0))
    assert search.answer == 0 and not search.is_capped()
    assert [r.level for r, _ in search.history] == [10, 5, 2, 1]


@given(st.integers(0, 5000), st.integers(1, 200), st.integers(1, 3), st.floats(0.0, 0.3),
       st.integers(0, 2**32))
def test_noise_that_fails_good_levels_never_overstates(capacity: int, start: int, repeats: int,
                                                       flake: float, seed: int) -> None:
    rng = random.Random(seed)

    def model(level: int) -> StepResult:
        bad = level > capacity or rng.random() < flake
        return StepResult(level, 900.0 if bad else 50.0, 0.0)

    search = CapacitySearch(SLO, start=start, maximum=10_000, repeats=repeats)
    drive(search, model)
    assert search.answer <= capacity


def test_repeats_reduce_overstating_under_false_passes() -> None:
    """A level above capacity that passes by luck 30% of the time: confirmation steps catch it."""
    def overstated(repeats: int) -> int:
        count = 0
        for seed in range(400):
            rng = random.Random(seed)

            def model(level: int, rng: random.Random = rng) -> StepResult:
                ok = level <= 100 or rng.random() < 0.3
                return StepResult(level, 50.0 if ok else 900.0, 0.0)
            search = CapacitySearch(SLO, start=10, maximum=10_000, repeats=repeats)
            drive(search, model)
            count += search.answer > 105
        return count
    once, thrice = overstated(1), overstated(3)
    assert thrice < once / 5


def test_result_for_the_wrong_level_or_after_done_is_refused() -> None:
    search = CapacitySearch(SLO, start=10, maximum=10, repeats=1)
    with pytest.raises(ValueError, match="expected 10"):
        search.process_result(StepResult(11, 1.0, 0.0))
    search.process_result(StepResult(10, 1.0, 0.0))
    assert search.next_level() is None
    with pytest.raises(ValueError, match="over"):
        search.process_result(StepResult(10, 1.0, 0.0))


@pytest.mark.parametrize(("text", "errors", "slo"), [
    ("p99=200ms", "0.1%", Slo(99, 200, 0.001)),
    ("p99.9=1s", "1%", Slo(99.9, 1000, 0.01)),
    ("p50<500us", "0", Slo(50, 0.5, 0.0)),
    ("p95=150", "0.05", Slo(95, 150, 0.05)),
])
def test_parse_slo(text: str, errors: str, slo: Slo) -> None:
    assert parse_slo(text, errors) == slo


@pytest.mark.parametrize(("text", "errors"), [
    ("99=200ms", "0.1%"), ("p100=1s", "0.1%"), ("p99=fast", "0.1%"), ("p99=1s", "lots"), ("p99=1s", "150%"),
])
def test_parse_slo_rejects(text: str, errors: str) -> None:
    with pytest.raises(UsageError):
        parse_slo(text, errors)


def test_parse_error_rate() -> None:
    assert parse_error_rate("0.1%") == pytest.approx(0.001)


def test_bad_bounds() -> None:
    with pytest.raises(UsageError):
        CapacitySearch(SLO, start=0)
    with pytest.raises(UsageError):
        CapacitySearch(SLO, start=100, maximum=10)
