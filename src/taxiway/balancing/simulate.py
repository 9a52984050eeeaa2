"""A virtual-time simulator that runs the real strategy classes against modelled servers.

Rules of this module:
1. Pure: no I/O, no clock (time is virtual), no RNG creation (the caller passes one), no asyncio.
   The same `Strategy` objects the proxy uses make every decision, through the same `Server`
   counters (`inflight`, `process_latency`), so what the simulator shows is what the proxy does.
2. Deterministic: the same requests, servers, strategy seed and `rng` give the same result.

Theory of operation. A discrete-event simulation of an open system. Requests arrive at given
times with a cost in work units; the strategy picks a server among the available ones; a server
runs up to `workers` requests at once, each for `cost / speed` seconds (times a log-normal jitter
from `rng`), and queues the rest FIFO, like a pre-fork app server (gunicorn with N workers).
Latency is queueing plus service time. Completions are processed in time order before each
arrival, so in-flight counts and latency estimates are exactly as current as in a real proxy.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from taxiway.balancing.model import Server
from taxiway.balancing.strategies import Strategy


@dataclass
class SimServer:
    """A modelled backend: `speed` work units per second per worker, `workers` at once."""

    server: Server
    speed: float = 100.0
    workers: int = 1
    # Simulation state.
    running: int = 0
    queue: deque[tuple[float, float]] = field(default_factory=deque)   # (arrived_at, service_s)
    latencies: list[float] = field(default_factory=list)
    busy_s: float = 0.0
    max_inflight: int = 0


@dataclass(frozen=True)
class SimRequest:
    at: float             # arrival time, seconds
    cost: float           # work units (seconds at speed 1)
    key: str | None = None


@dataclass(frozen=True)
class ServerStats:
    name: str
    requests: int
    share: float
    mean_s: float
    p99_s: float
    max_inflight: int
    utilization: float


@dataclass(frozen=True)
class SimResult:
    strategy: str
    servers: list[ServerStats]
    requests: int
    unserved: int          # arrived while no server was available
    mean_s: float
    p50_s: float
    p99_s: float
    duration_s: float

    @property
    def max_share(self) -> float:
        return max(s.share for s in self.servers)

    @property
    def min_share(self) -> float:
        return min(s.share for s in self.servers)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values; 0 for none."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def simulate(strategy: Strategy, servers: Sequence[SimServer], requests: Sequence[SimRequest],
             rng: random.Random, jitter: float = 0.2) -> SimResult:
    """Run `requests` through `strategy` over `servers` in virtual time.

    Args:
        strategy: any strategy from `STRATEGIES` (it keeps its own RNG).
        servers: the modelled backends; their `Server` counters are reset and then updated live.
        requests: sorted by arrival time.
        rng: service-time jitter (log-normal with sigma `jitter`; 0 = exact costs).
    Returns:
        per-server shares, latencies and utilization, and overall mean/p50/p99 latency.
    """
    for sim in servers:
        s = sim.server
        s.inflight = s.requests = 0
        s.ewma_s = s.ewma_at = 0.0
        sim.running, sim.busy_s, sim.max_inflight = 0, 0.0, 0
        sim.queue.clear()
        sim.latencies.clear()
    by_server = {id(sim.server): sim for sim in servers}
    done: list[tuple[float, int, int, float]] = []   # (finish_at, seq, server index, arrived_at)
    index = {id(sim.server): i for i, sim in enumerate(servers)}
    seq = 0
    unserved = 0
    now = last_finish = 0.0

    def start(i: int, arrived: float, service: float, at: float) -> None:
        nonlocal seq
        seq += 1
        servers[i].running += 1
        servers[i].busy_s += service
        heapq.heappush(done, (at + service, seq, i, arrived))

    def finish_until(t: float) -> None:
        nonlocal last_finish
        while done and done[0][0] <= t:
            at, _, i, arrived = heapq.heappop(done)
            last_finish = at
            sim = servers[i]
            sim.running -= 1
            sim.server.inflight -= 1
            latency = at - arrived
            sim.latencies.append(latency)
            sim.server.process_latency(latency, at)
            if sim.queue:
                q_arrived, q_service = sim.queue.popleft()
                start(i, q_arrived, q_service, at)

    for req in requests:
        now = req.at
        finish_until(now)
        candidates = [sim.server for sim in servers if sim.server.is_available(now)]
        chosen = strategy.pick(candidates, req.key, now)
        if chosen is None:
            unserved += 1
            continue
        sim = by_server[id(chosen)]
        chosen.inflight += 1
        chosen.requests += 1
        sim.max_inflight = max(sim.max_inflight, chosen.inflight)
        service = req.cost / sim.speed
        if jitter > 0:
            service *= rng.lognormvariate(0.0, jitter)
        if sim.running < sim.workers:
            start(index[id(chosen)], now, service, now)
        else:
            sim.queue.append((now, service))
    arrivals_end = now
    finish_until(math.inf)

    served = sum(len(sim.latencies) for sim in servers)
    stats = []
    for sim in servers:
        lat = sorted(sim.latencies)
        stats.append(ServerStats(
            name=sim.server.name, requests=len(lat), share=len(lat) / served if served else 0.0,
            mean_s=sum(lat) / len(lat) if lat else 0.0, p99_s=percentile(lat, 99),
            max_inflight=sim.max_inflight,
            utilization=sim.busy_s / (sim.workers * last_finish) if last_finish > 0 else 0.0,
        ))
    every = sorted(x for sim in servers for x in sim.latencies)
    return SimResult(
        strategy=strategy.name, servers=stats, requests=len(requests), unserved=unserved,
        mean_s=sum(every) / len(every) if every else 0.0, p50_s=percentile(every, 50),
        p99_s=percentile(every, 99), duration_s=max(arrivals_end, last_finish),
    )


def make_requests(n: int, rate_per_s: float, rng: random.Random,
                  costs: Sequence[tuple[float, float]] = ((0.9, 1.0), (0.1, 20.0)),
                  clients: int = 1000) -> list[SimRequest]:
    """A Poisson arrival stream with a cost mix and Zipf-ish client keys.

    Args:
        n: number of requests.
        rate_per_s: mean arrival rate.
        costs: (probability, work units) pairs; the default is 90 % cheap pages and 10 % requests
            20x as expensive (a search, a report), the case where request-count balance fails.
        clients: distinct keys (consistent-hash); popularity ~ 1/rank, like real client mixes.
    """
    total_p = sum(p for p, _ in costs)
    weights = [1.0 / (r + 1) for r in range(clients)]
    keys = rng.choices(range(clients), weights=weights, k=n)
    t = 0.0
    out = []
    for i in range(n):
        t += rng.expovariate(rate_per_s)
        x = rng.random() * total_p
        cost = costs[-1][1]
        for p, c in costs:
            if x < p:
                cost = c
                break
            x -= p
        out.append(SimRequest(at=t, cost=cost, key=f"client-{keys[i]}"))
    return out
