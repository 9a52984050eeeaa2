"""The balancer's state as one JSON-ready dict: what `GET /status`, `taxiway status` and the live view
of `taxiway up` show.

Rules of this module:
1. Pure: no I/O, no clock. Time enters as `now_monotonic` (the clock the `Server` flags use:
   `ejected_until`, `joined_at`, latency sample times) and, for the uptime, `now_wall` (the clock of
   `balancer.started_at` and of the events, which are passed through as they are).
2. It only reads: the balancer's counters and `Server` objects are never modified, so a slow admin
   client cannot disturb the proxy.
3. It reads a `BalancerView`: the part of the balancer the admin API may see (the proxy's
   `Balancer` is one; tests use a real, unstarted one). `autoscale_status` is set by `taxiway up`.

Percentiles come from `Server.recent`, the last `RECENT_SAMPLES` (finished_at, latency_s) samples,
restricted to the last `RECENT_WINDOW_S` seconds so an idle server does not show stale latencies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from taxiway import BUILD, __version__
from taxiway.balancing.model import Server, ServerState
from taxiway.config import Config


class WaitingView(Protocol):
    def live(self) -> int:
        """Requests waiting now for a server slot."""
        ...


class BalancerView(Protocol):
    """What `/status` and `/metrics` read of a balancer; nothing here is written."""

    @property
    def cfg(self) -> Config: ...
    @property
    def pool(self) -> Iterable[Server]: ...
    @property
    def events(self) -> Iterable[dict[str, Any]]: ...
    @property
    def connections(self) -> int: ...
    @property
    def started_at(self) -> float: ...
    @property
    def waiting(self) -> WaitingView: ...
    @property
    def cold_start(self) -> Mapping[str, float | int | None]: ...
    @property
    def autoscale_status(self) -> Callable[[], dict[str, Any]] | None: ...
    @property
    def control_pid(self) -> int: ...

    def fold_counters(self) -> Mapping[str, int]:
        """The named counters, with the ones kept apart on the hot path added in."""
        ...

# Samples older than this do not count in p50/p95 (one minute, like `uptime`'s shortest load average).
RECENT_WINDOW_S = 60.0
# Recent events returned by /status (the balancer keeps its own bounded deque).
MAX_EVENTS = 50


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an ascending sequence; None when it is empty.

    Nearest rank (not interpolation) so the value reported is one a request really saw.
    """
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def recent_latencies(server: Server, now_monotonic: float, window_s: float = RECENT_WINDOW_S) -> list[float]:
    """Latencies (seconds, ascending) of requests that finished in the last `window_s` seconds."""
    cutoff = now_monotonic - window_s
    return sorted(lat for at, lat in list(server.recent) if at >= cutoff)


def _ms(value_s: float | None) -> float | None:
    return None if value_s is None else round(value_s * 1000.0, 3)


def server_status(server: Server, now_monotonic: float) -> dict[str, Any]:
    """One server's row: identity, state, load, counters, latency estimate and percentiles."""
    lat = recent_latencies(server, now_monotonic)
    state = server.state(now_monotonic)
    return {
        "name": server.name,
        "address": server.address,
        "state": state.value,
        "available": server.is_available(now_monotonic),
        "weight": server.weight,
        "effective_weight": round(server.effective_weight(now_monotonic), 3),
        "inflight": server.inflight,
        "requests": server.requests,
        "failures": server.failures,
        "consecutive_failures": server.consecutive_failures,
        "bytes_in": server.bytes_in,
        "bytes_out": server.bytes_out,
        "latency_ewma_ms": _ms(server.latency_estimate(now_monotonic)),
        "latency_p50_ms": _ms(percentile(lat, 50)),
        "latency_p95_ms": _ms(percentile(lat, 95)),
        "recent_samples": len(lat),
        "sticky_clients": server.sticky_clients,
        "ejections": server.ejections,
        "ejected_for_s": round(server.ejected_until - now_monotonic, 3)
        if state is ServerState.EJECTED else 0.0,
        "static": server.static,
    }


def _totals(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    rows = list(rows)
    by_state = {s.value: 0 for s in ServerState}
    for r in rows:
        by_state[r["state"]] += 1
    return {
        "servers": len(rows),
        "available": sum(1 for r in rows if r["available"]),
        "by_state": by_state,
        "inflight": sum(r["inflight"] for r in rows),
        "requests": sum(r["requests"] for r in rows),
        "failures": sum(r["failures"] for r in rows),
        "bytes_in": sum(r["bytes_in"] for r in rows),
        "bytes_out": sum(r["bytes_out"] for r in rows),
    }


def _event(ev: dict[str, Any]) -> dict[str, Any]:
    kind = ev.get("kind")
    return {
        "at": ev.get("at"),
        "kind": getattr(kind, "value", kind),
        "server": ev.get("server"),
        "detail": ev.get("detail", ""),
    }


def build_status(balancer: BalancerView, now_monotonic: float,
                 now_wall: float | None = None) -> dict[str, Any]:
    """Snapshot of the balancer for the admin API.

    Args:
        balancer: the running `Balancer` (see rule 3).
        now_monotonic: `time.monotonic()` at the moment of the snapshot.
        now_wall: `time.time()` at the same moment; without it `uptime_s` is None.
    Returns:
        A dict of JSON types only: `version`, `hot_path` (the proxy build running: compiled or
        python, with the reason), `started_at` (Unix time), `uptime_s`, `strategy`, `connections`,
        `waiting` (requests queued for a server slot, or for one that is starting),
        `cold_start` (requests that waited for a server to start: count, failed, last_s, max_s),
        `servers`
        (one row per server, see `server_status`), `totals`, `counters` (the proxy's named counters,
        sorted), `events` (newest last, at most MAX_EVENTS) and `autoscale` (None without autoscaler).
    """
    rows = [server_status(s, now_monotonic) for s in list(balancer.pool)]
    events = list(balancer.events)[-MAX_EVENTS:]
    status_fn = balancer.autoscale_status
    autoscale = status_fn() if status_fn is not None else None
    started_at = balancer.started_at
    uptime = None if now_wall is None or not started_at else round(max(0.0, now_wall - started_at), 3)
    return {
        "version": __version__,
        # What `taxiway reload` and `taxiway upgrade` signal: with balancer.workers, the parent.
        "pid": balancer.control_pid,
        "hot_path": BUILD,
        "started_at": started_at,
        "uptime_s": uptime,
        "strategy": balancer.cfg.balancer.strategy,
        "connections": balancer.connections,
        # Requests waiting for a server slot (limits.upstream_max_connections reached everywhere).
        "waiting": balancer.waiting.live(),
        # Requests that waited for a server to start or recover: arrival to answer, seconds.
        "cold_start": dict(balancer.cold_start),
        "servers": rows,
        "totals": _totals(rows),
        "counters": {k: int(v) for k, v in sorted(balancer.fold_counters().items())},
        "events": [_event(e) for e in events],
        "autoscale": autoscale,
    }
