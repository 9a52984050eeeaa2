"""LoadMeter: the live Server counters -> one policy Sample per period (pure, virtual time)."""

from __future__ import annotations

import pytest

from taxiway.autoscale.meter import LoadMeter, p95
from taxiway.autoscale.policy import Metric, Sample
from taxiway.balancing.model import Server


def servers(n: int, ready: int | None = None) -> list[Server]:
    out = [Server(f"s{i}", "127.0.0.1", 9000 + i, static=False) for i in range(n)]
    for s in out[ready if ready is not None else n:]:
        s.ready = False
    return out


def test_inflight_is_averaged_over_ticks_per_ready_server() -> None:
    m = LoadMeter(Metric.INFLIGHT)
    pool = servers(3, ready=2)
    for a, b in ((10, 0), (20, 10), (0, 0), (30, 10)):    # totals 10, 30, 0, 40 -> mean 20
        pool[0].inflight, pool[1].inflight = a, b
        m.process_tick(pool)
    pool[2].inflight = 99                                   # not ready: not counted
    assert m.sample(pool, current=3, now=1.0) == Sample(1.0, 3, 2, 10.0)
    # The next period starts from scratch.
    pool[0].inflight = pool[1].inflight = 1
    m.process_tick(pool)
    assert m.sample(pool, 3, 2.0).value == 1.0


def test_draining_servers_carry_no_capacity() -> None:
    m = LoadMeter(Metric.INFLIGHT)
    pool = servers(2)
    pool[1].draining = True
    pool[0].inflight, pool[1].inflight = 4, 50
    m.process_tick(pool)
    s = m.sample(pool, 1, 1.0)
    assert (s.ready, s.value) == (1, 4.0)


def test_no_ready_server_reports_the_total() -> None:
    m = LoadMeter(Metric.INFLIGHT)
    s = m.sample(servers(1, ready=0), 1, 1.0)
    assert (s.ready, s.value) == (0, 0.0)


def test_rps_from_counter_differences() -> None:
    m = LoadMeter(Metric.RPS)
    pool = servers(2)
    pool[0].requests, pool[1].requests = 100, 50
    assert m.sample(pool, 2, 10.0).value == 0.0            # first sample: no interval yet
    pool[0].requests, pool[1].requests = 300, 250          # +400 in 2 s on 2 servers
    assert m.sample(pool, 2, 12.0).value == pytest.approx(100.0)
    new = Server("s9", "127.0.0.1", 9009, static=False)
    new.requests = 40                                       # joined during the period: all count
    assert m.sample([*pool, new], 3, 13.0).value == pytest.approx(40 / 3)


def test_p95_over_the_last_period_only() -> None:
    m = LoadMeter(Metric.P95)
    pool = servers(2)
    m.sample(pool, 2, 10.0)
    for i in range(100):
        pool[i % 2].recent.append((9.5, 5.0))               # before the period: ignored
        pool[i % 2].recent.append((10.5, (i + 1) / 1000))    # 1..100 ms
    assert m.sample(pool, 2, 11.0).value == pytest.approx(0.095)
    assert m.sample(pool, 2, 12.0).value == 0.0              # nothing finished since


@pytest.mark.parametrize(("values", "expected"), [
    pytest.param([], 0.0, id="empty"),
    pytest.param([3.0], 3.0, id="one"),
    pytest.param([float(i) for i in range(1, 21)], 19.0, id="twenty"),
])
def test_p95_nearest_rank(values: list[float], expected: float) -> None:
    assert p95(values) == expected
