"""The shared model: one `Server` per backend process, owned by a `Pool`.

Rules of this module:
1. No I/O, no clock, no RNG: time enters as `now` (monotonic seconds), randomness is injected.
2. Counters that must outlive a strategy's snapshot (in-flight, latency EWMA) live here, on the
   Server object, shared by reference between the proxy, strategies, the health checker, the
   admin API and the autoscaler.
3. Strategies see only the "server view" below (in-flight, weight, latency, availability), so the
   same classes serve the proxy, the simulator and the database replica router.

A server is *available* when it is healthy (active checks), not ejected (passive outlier
detection), not draining (leaving the pool) and has weight > 0.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final


class ServerState(enum.Enum):
    """Lifecycle as the admin API reports it, derived from the flags on `Server`."""

    STARTING = "starting"   # process launched, not ready yet (pool-managed servers)
    UP = "up"
    DOWN = "down"           # failed active health checks
    EJECTED = "ejected"     # passive outlier detection took it out for a while
    DRAINING = "draining"   # leaving: no new requests, in-flight ones finish


class PoolEvent(enum.Enum):
    ADDED = "added"
    READY = "ready"
    DOWN = "down"
    EJECTED = "ejected"
    DRAINING = "draining"
    REMOVED = "removed"
    CHANGED = "changed"     # weight or other setting changed (SIGHUP reload)


# Peak-EWMA decay time (Finagle's default is 10 s; Linkerd uses the same order).
DEFAULT_EWMA_DECAY_S: Final = 10.0
RECENT_SAMPLES: Final = 1024


@dataclass(eq=False)
class Server:
    """One upstream server. Identity is the object; `name` is unique within a pool."""

    name: str
    host: str
    port: int
    weight: int = 1
    # Lifecycle flags (see module docstring for "available").
    ready: bool = True          # False while a pool-managed process is starting
    healthy: bool = True
    draining: bool = False
    ejected_until: float = 0.0
    ejections: int = 0          # consecutive ejections, for growing ejection times
    joined_at: float = 0.0      # when it (re)joined: slow start ramps from here
    slow_start_s: float = 0.0
    static: bool = True         # listed in [[servers]] (vs started by the pool)
    # Live counters.
    inflight: int = 0
    requests: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    sticky_clients: int = 0
    # Peak EWMA of response latency (seconds) and when it was last updated.
    ewma_s: float = 0.0
    ewma_at: float = 0.0
    ewma_decay_s: float = DEFAULT_EWMA_DECAY_S
    # Recent (finished_at, latency_s) samples for percentile metrics (autoscaler p95, /status).
    recent: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=RECENT_SAMPLES))
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def is_ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def is_available(self, now: float) -> bool:
        """May new requests go here now?"""
        return self.ready and self.healthy and not self.draining and self.weight > 0 \
            and not self.is_ejected(now)

    def state(self, now: float) -> ServerState:
        if self.draining:
            return ServerState.DRAINING
        if not self.ready:
            return ServerState.STARTING
        if not self.healthy:
            return ServerState.DOWN
        if self.is_ejected(now):
            return ServerState.EJECTED
        return ServerState.UP

    def slow_start_factor(self, now: float) -> float:
        """Share of its weight a (re)joined server gets: ramps linearly 0.1 -> 1 (like Envoy)."""
        if self.slow_start_s <= 0:
            return 1.0
        age = now - self.joined_at
        if age >= self.slow_start_s:
            return 1.0
        return max(0.1, age / self.slow_start_s)

    def effective_weight(self, now: float) -> float:
        return self.weight * self.slow_start_factor(now)

    # -- outcomes fed by the driver ----------------------------------------------------------

    def process_latency(self, latency_s: float, now: float) -> None:
        """Peak EWMA: a slower sample takes over at once, faster ones decay in (Finagle)."""
        if latency_s > self.ewma_s:
            self.ewma_s = latency_s
        else:
            elapsed = now - self.ewma_at
            w = math.exp(-elapsed / self.ewma_decay_s) if elapsed > 0.0 else 1.0
            self.ewma_s = self.ewma_s * w + latency_s * (1.0 - w)
        self.ewma_at = now
        self.recent.append((now, latency_s))

    def latency_estimate(self, now: float) -> float:
        """Current EWMA; a server with no samples yet is assumed as fast as it gets (0)."""
        return self.ewma_s


Listener = Callable[[PoolEvent, Server], None]


class Pool:
    """The servers of one backend and the events that change it.

    The pool is a plain container: it decides nothing. The health checker, outlier detector and
    autoscale supervisor call its methods; the proxy, admin API and metrics subscribe to events.
    """

    def __init__(self) -> None:
        self._servers: dict[str, Server] = {}
        self._listeners: list[Listener] = []
        self.version = 0   # bumped on every change; strategies rebuild when it moves
        # Servers its owner (the autoscaler) is bringing that are not in it yet: between the
        # listener opening and the first launch, or a crashed server and its replacement.
        self.expected = 0

    def __iter__(self) -> Iterator[Server]:
        return iter(self._servers.values())

    def __len__(self) -> int:
        return len(self._servers)

    def __contains__(self, name: object) -> bool:
        return name in self._servers

    def get(self, name: str) -> Server | None:
        return self._servers.get(name)

    @property
    def servers(self) -> list[Server]:
        return list(self._servers.values())

    def available(self, now: float) -> list[Server]:
        return [s for s in self._servers.values() if s.is_available(now)]

    def coming(self, now: float, tried: Sequence[Server] = ()) -> bool:
        """Is a server out of rotation only for now (starting, failing its health checks,
        ejected), so that a request that found none available may wait for it? A draining
        server, or one weighted 0, is leaving, not coming; `tried`: servers a retry avoids."""
        if self.expected > 0:
            return True
        for s in self._servers.values():
            if not s.draining and s.weight > 0 and not s.is_available(now) and s not in tried:
                return True
        return False

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def emit(self, event: PoolEvent, server: Server) -> None:
        self.version += 1
        for listener in self._listeners:
            listener(event, server)

    def add(self, server: Server, now: float) -> Server:
        if server.name in self._servers:
            raise ValueError(f"server {server.name!r} is already in the pool")
        server.joined_at = now
        self._servers[server.name] = server
        self.emit(PoolEvent.ADDED, server)
        return server

    def drain(self, name: str) -> Server | None:
        s = self._servers.get(name)
        if s is not None and not s.draining:
            s.draining = True
            self.emit(PoolEvent.DRAINING, s)
        return s

    def remove(self, name: str) -> Server | None:
        s = self._servers.pop(name, None)
        if s is not None:
            self.emit(PoolEvent.REMOVED, s)
        return s

    def mark_ready(self, name: str, now: float) -> None:
        s = self._servers[name]
        if not s.ready:
            s.ready = True
            s.joined_at = now
            self.emit(PoolEvent.READY, s)
