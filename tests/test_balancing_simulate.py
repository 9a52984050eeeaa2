"""The simulator: exact queueing on tiny cases, determinism, and the strategies' visible differences."""

from __future__ import annotations

import random

import pytest

from taxiway.balancing.model import Server
from taxiway.balancing.simulate import SimRequest, SimServer, make_requests, percentile, simulate
from taxiway.balancing.strategies import STRATEGIES, LeastConnections, RoundRobin


def sims(*speeds: float, workers: int = 1) -> list[SimServer]:
    return [SimServer(Server(f"s{i}", "sim", i), speed=sp, workers=workers) for i, sp in enumerate(speeds)]


def test_single_server_queues_fifo_exactly() -> None:
    """One worker, 1 unit/s: three 1-unit requests at t=0 finish at 1, 2, 3 s."""
    reqs = [SimRequest(0.0, 1.0), SimRequest(0.0, 1.0), SimRequest(0.0, 1.0)]
    r = simulate(RoundRobin(random.Random(0)), sims(1.0), reqs, random.Random(0), jitter=0)
    assert r.mean_s == pytest.approx(2.0)
    assert r.p99_s == pytest.approx(3.0)
    assert r.servers[0].max_inflight == 3
    assert r.servers[0].utilization == pytest.approx(1.0)


def test_workers_run_in_parallel() -> None:
    reqs = [SimRequest(0.0, 1.0)] * 4
    r = simulate(RoundRobin(random.Random(0)), sims(1.0, workers=2), reqs, random.Random(0), jitter=0)
    assert r.mean_s == pytest.approx(1.5)       # two finish at 1 s, two at 2 s
    assert r.duration_s == pytest.approx(2.0)


def test_counters_are_back_to_zero_and_every_request_is_served() -> None:
    servers = sims(100, 100, 50, workers=2)
    reqs = make_requests(3000, 150, random.Random(1))
    r = simulate(STRATEGIES["power-of-two"](random.Random(1)), servers, reqs, random.Random(2))
    assert sum(s.requests for s in r.servers) == 3000 and r.unserved == 0
    assert sum(s.share for s in r.servers) == pytest.approx(1.0)
    assert all(sim.server.inflight == 0 for sim in servers)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_same_seeds_same_result(name: str) -> None:
    def once():
        reqs = make_requests(1500, 120, random.Random(5))
        return simulate(STRATEGIES[name](random.Random(6)), sims(100, 100, 30, workers=2), reqs,
                        random.Random(7))

    assert once() == once()


def test_unavailable_servers_get_nothing_and_an_empty_pool_counts_unserved() -> None:
    servers = sims(100, 100)
    servers[1].server.ejected_until = 1e9
    reqs = make_requests(200, 50, random.Random(1))
    r = simulate(LeastConnections(random.Random(0)), servers, reqs, random.Random(0))
    assert r.servers[1].requests == 0 and r.servers[0].requests == 200
    servers[0].server.healthy = False
    r = simulate(LeastConnections(random.Random(0)), servers, reqs, random.Random(0))
    assert r.unserved == 200


def test_load_aware_strategies_steer_around_a_slow_server() -> None:
    """What the README table claims: blind strategies overload a slow server, load-aware ones do not."""
    def run(name: str):
        servers = sims(100, 100, 100, 100 / 3, workers=2)
        capacity = (3 * 200 + 200 / 3) / 2.9
        reqs = make_requests(8000, 0.7 * capacity, random.Random(3))
        return simulate(STRATEGIES[name](random.Random(4)), servers, reqs, random.Random(5))

    rr = run("round-robin")
    assert rr.servers[3].share == pytest.approx(0.25, abs=0.01)
    for name in ("least-connections", "power-of-two", "peak-ewma"):
        r = run(name)
        assert r.servers[3].share < 0.18, name
        assert r.mean_s < rr.mean_s / 5, name
        assert r.p99_s < rr.p99_s / 5, name


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 99) == 0.0
