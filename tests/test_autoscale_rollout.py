"""The rolling deploy's arithmetic, step by step in virtual time (no processes): what starts,
what is retired, and that the bounds a user set hold at every step."""

from __future__ import annotations

import pytest

from taxiway.autoscale.rollout import Rollout, step, version_of


def play(desired: int, surge: int, unavailable: int, ready_after: int = 1) -> list[tuple[int, int]]:
    """Run a rollout of `desired` old servers to the new version; a new server is ready
    `ready_after` steps after it starts. Returns (old, new) live after every step, and checks
    the bounds each time."""
    old_live = old_ready = desired
    starting: list[int] = []   # steps left until each starting new server is ready
    new_ready = 0
    seen = []
    for _ in range(50):
        start, retire = step(desired, old_live, len(starting) + new_ready, old_ready, new_ready,
                             surge, unavailable)
        old_live -= retire
        old_ready = min(old_ready, old_live)
        starting += [ready_after] * start
        assert old_live + len(starting) + new_ready <= desired + surge
        assert old_ready + new_ready >= desired - unavailable
        starting = [n - 1 for n in starting]
        new_ready += sum(1 for n in starting if n <= 0)
        starting = [n for n in starting if n > 0]
        seen.append((old_live, len(starting) + new_ready))
        if old_live == 0 and new_ready == desired:
            return seen
    raise AssertionError(f"no progress: {seen}")


@pytest.mark.parametrize(("desired", "surge", "unavailable", "steps"), [
    # (old, new) live after each step: start one, it gets ready, retire one old, start the next
    pytest.param(2, 1, 0, [(2, 1), (1, 1), (1, 2), (0, 2)], id="surge-1-one-at-a-time"),
    pytest.param(2, 0, 1, [(1, 0), (1, 1), (0, 1), (0, 2)], id="unavailable-1-retires-first"),
    pytest.param(3, 3, 0, [(3, 3), (0, 3)], id="surge-everything-at-once"),
    pytest.param(1, 1, 0, [(1, 1), (0, 1)], id="a-pool-of-one"),
])
def test_a_rollout_replaces_every_old_server_within_its_bounds(desired: int, surge: int, unavailable: int,
                                                               steps: list[tuple[int, int]]) -> None:
    assert play(desired, surge, unavailable) == steps


def test_a_slow_new_version_holds_the_old_servers() -> None:
    seen = play(2, 1, 0, ready_after=3)
    # Nothing is retired until the new server is ready (three steps), and only then the next starts.
    assert seen == [(2, 1), (2, 1), (2, 1), (1, 1), (1, 2), (1, 2), (1, 2), (0, 2)]


def test_nothing_moves_while_nothing_is_ready() -> None:
    assert step(2, 2, 1, 2, 0, 1, 0) == (0, 0)


def test_a_failed_rollout_is_no_longer_active() -> None:
    r = Rollout("aaaa", "bbbb", 0.0)
    assert r.active
    r.fail("not ready after 30s")
    r.fail("later reason")
    assert not r.active and r.failed == "not ready after 30s"


def test_versions_differ_by_command_env_or_cwd_and_are_stable() -> None:
    base = version_of("app --port {port}", {"A": "1"}, "/srv")
    assert base == version_of("app --port {port}", {"A": "1"}, "/srv") and len(base) == 8
    assert len({base, version_of("app2 --port {port}", {"A": "1"}, "/srv"),
                version_of("app --port {port}", {"A": "2"}, "/srv"),
                version_of("app --port {port}", {"A": "1"}, "/opt")}) == 4
