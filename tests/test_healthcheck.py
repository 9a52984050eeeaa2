"""Active health checks against real `taxiway backend` processes and real sockets."""

from __future__ import annotations

import asyncio
import random
import socket
import time

import pytest

from taxiway.balancing.model import PoolEvent
from taxiway.config import parse_config
from taxiway.proxy.app import Balancer
from taxiway.proxy.healthcheck import HealthChecker, probe
from tests.conftest import Processes, free_port
from tests.test_admin_status import unstarted_balancer


def balancer_for(ports: dict[str, int], **health: object) -> tuple[Balancer, list[tuple[PoolEvent, str]]]:
    cfg = parse_config({"servers": [{"url": f"http://127.0.0.1:{p}", "name": n} for n, p in ports.items()],
                        "health": {"interval": "100ms", "timeout": "1s", "rise": 2, "fall": 3, **health}})
    b = unstarted_balancer(cfg)   # its pool holds the config's servers
    seen: list[tuple[PoolEvent, str]] = []
    b.pool.subscribe(lambda ev, s: seen.append((ev, s.name)))
    return b, seen


def test_probe_reports_status_refused_and_timeout(procs: Processes) -> None:
    good = procs.backend("good")
    bad = procs.backend("bad", None, "--fail-healthz")
    closed = free_port()
    with socket.socket() as silent:  # accepts (kernel backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)

        async def go() -> list[tuple[int | None, str]]:
            return [await probe("127.0.0.1", good, "/healthz", 5.0),
                    await probe("127.0.0.1", bad, "/healthz", 5.0),
                    await probe("127.0.0.1", closed, "/healthz", 5.0),
                    await probe("127.0.0.1", silent.getsockname()[1], "/healthz", 0.3)]
        results = asyncio.run(go())
    assert results[0] == (200, "status 200")
    assert results[1] == (503, "status 503")
    assert results[2][0] is None and "refused" in results[2][1].lower()
    assert results[3] == (None, "timeout after 0.3s")


def test_fall_checks_take_a_failing_server_down_and_rise_brings_it_back(procs: Processes) -> None:
    good = procs.backend("good")
    flaky_port = free_port()
    procs.backend("flaky", flaky_port, "--fail-healthz")
    b, seen = balancer_for({"good": good, "flaky": flaky_port})
    flaky = b.pool.get("flaky")
    assert flaky is not None

    async def scenario() -> None:
        checker = HealthChecker(b, random.Random(1))
        for _ in range(2):           # fall = 3: two failures are not enough
            await checker.check_all()
        assert flaky.healthy and seen == []
        await checker.check_all()    # third failure in a row: DOWN
        assert not flaky.healthy and b.pool.get("good").healthy  # type: ignore[union-attr]
        assert seen == [(PoolEvent.DOWN, "flaky")]
        # The cause, then the balancer's own record of the transition.
        cause, transition = b.events[-2], b.events[-1]
        assert cause["kind"] == "health" and cause["server"] == "flaky"
        assert cause["detail"].startswith("DOWN") and "status 503" in cause["detail"]
        assert transition["kind"] == "down" and transition["server"] == "flaky"

        # The server gets fixed: replace the process with a healthy one on the same port.
        for p in procs.procs[1:]:
            p.kill()
            p.wait(10)
        await asyncio.to_thread(procs.backend, "flaky", flaky_port)
        before = time.monotonic()
        await checker.check_all()    # rise = 2: one good check is not enough
        assert not flaky.healthy
        await checker.check_all()
        assert flaky.healthy and flaky.joined_at >= before  # slow start ramps from the recovery
        assert seen == [(PoolEvent.DOWN, "flaky"), (PoolEvent.READY, "flaky")]
        assert b.events[-2]["detail"].startswith("UP: GET /healthz: status 200")
        assert b.events[-1]["kind"] == "ready"

    asyncio.run(scenario())
    assert b.counters["health_checks"] == 10 and b.counters["health_checks_failed"] == 3


def test_expected_status_and_path_are_configurable(procs: Processes) -> None:
    port = procs.backend("b", None, "--fail-healthz")
    b, _ = balancer_for({"b": port}, expected_status=[503], fall=1)

    async def scenario() -> None:
        checker = HealthChecker(b)
        await checker.check_all()
        assert b.pool.get("b").healthy  # type: ignore[union-attr]
        b2, _ = balancer_for({"b": port}, path="/status/404", fall=1)
        await HealthChecker(b2).check_all()
        assert not b2.pool.get("b").healthy  # type: ignore[union-attr]
    asyncio.run(scenario())


def test_unreachable_server_goes_down_and_removed_servers_are_forgotten() -> None:
    b, seen = balancer_for({"gone": free_port()}, fall=1)

    async def scenario() -> None:
        checker = HealthChecker(b)
        await checker.check_all()
        assert seen == [(PoolEvent.DOWN, "gone")]
        b.pool.remove("gone")
        await checker.check_all()
        assert checker._state == {}
    asyncio.run(scenario())


def test_started_checker_runs_on_its_interval_and_stops(procs: Processes) -> None:
    port = procs.backend("b", None, "--fail-healthz")
    b, seen = balancer_for({"b": port}, interval="50ms", fall=2)

    async def scenario() -> int:
        checker = HealthChecker(b)
        checker.start()
        deadline = time.monotonic() + 30
        while b.pool.get("b").healthy and time.monotonic() < deadline:  # type: ignore[union-attr]
            await asyncio.sleep(0.02)
        await checker.stop()
        rounds = checker.rounds
        await asyncio.sleep(0.3)
        assert checker.rounds == rounds  # stopped means stopped
        return rounds
    assert asyncio.run(scenario()) >= 2
    assert seen == [(PoolEvent.DOWN, "b")]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_interval_is_jittered_within_ten_percent(seed: int) -> None:
    b, _ = balancer_for({"x": 1}, interval="2s")
    checker = HealthChecker(b, random.Random(seed))
    sleeps = [checker._sleep_s() for _ in range(200)]
    assert all(1.8 <= s <= 2.2 for s in sleeps) and len(set(sleeps)) > 100


def test_server_marked_down_elsewhere_needs_rise_good_checks(procs: Processes) -> None:
    """A server another component took down (e.g. the supervisor) is counted from DOWN, not UP."""
    port = procs.backend("b")
    b, seen = balancer_for({"b": port}, rise=3)
    server = b.pool.get("b")
    assert server is not None

    async def scenario() -> None:
        checker = HealthChecker(b)
        await checker.check_all()          # known UP
        server.healthy = False             # flipped by someone else
        await checker.check_all()
        await checker.check_all()
        assert not server.healthy and seen == []
        await checker.check_all()          # third good check in a row
        assert server.healthy and seen == [(PoolEvent.READY, "b")]
    asyncio.run(scenario())
