"""Turn the balancer's live `Server` counters into one policy `Sample` per period.

Rules of this module:
1. Pure: reads `Server` objects handed in, takes `now`, keeps only numbers; no clock, no I/O.
2. In-flight is an instantaneous gauge, so it is read several times per period (`process_tick`)
   and averaged, like Knative averages concurrency over its window; one reading per period would
   be mostly noise at tens of requests per second.
3. Requests/s comes from the monotonically growing `Server.requests` counters (differences per
   server name), not from the bounded `recent` deque, which would undercount at high rates.
4. p95 is computed over the `recent` latency samples that finished in the last period.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from taxiway.autoscale.policy import Metric, Sample
from taxiway.balancing.model import Server


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile (0.0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def takes_traffic(server: Server) -> bool:
    """Counted as serving capacity: ready and not leaving (health flags are the proxy's concern)."""
    return server.ready and not server.draining


class LoadMeter:
    """Accumulates ticks between samples for one metric."""

    def __init__(self, metric: Metric) -> None:
        self.metric = metric
        self._inflight_sum = 0.0
        self._ticks = 0
        self._requests_seen: dict[str, int] = {}
        self._last_sample_at: float | None = None

    def process_tick(self, servers: Iterable[Server]) -> None:
        """Called by the driver several times per period with the pool's servers."""
        self._inflight_sum += sum(s.inflight for s in servers if takes_traffic(s))
        self._ticks += 1

    def sample(self, servers: Iterable[Server], current: int, now: float, queued: int = 0) -> Sample:
        """The period's observation. `current` = servers the supervisor intends to run; `queued`
        = requests waiting in the balancer for a server (demand no server has seen yet)."""
        servers = list(servers)
        ready = sum(1 for s in servers if takes_traffic(s))
        per = max(ready, 1)
        requests = {s.name: s.requests for s in servers}
        elapsed = None if self._last_sample_at is None else now - self._last_sample_at
        begun = sum(n - self._requests_seen.get(name, 0) for name, n in requests.items())
        if self.metric is Metric.INFLIGHT:
            total = self._inflight_sum / self._ticks if self._ticks else \
                float(sum(s.inflight for s in servers if takes_traffic(s)))
            # Waiting requests are concurrency too (Knative's activator reports what it holds).
            value = (total + queued) / per
        elif self.metric is Metric.RPS:
            value = begun / elapsed / per if elapsed and elapsed > 0 else 0.0
        else:
            since = self._last_sample_at if self._last_sample_at is not None else -math.inf
            value = p95([lat for s in servers for at, lat in s.recent if since < at <= now])
        self._inflight_sum, self._ticks = 0.0, 0
        self._requests_seen = requests
        self._last_sample_at = now
        return Sample(now, current, ready, value, queued, max(begun, 0))
