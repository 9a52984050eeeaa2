"""Active health checks: the driver around `taxiway.balancing.health.ActiveHealth`.

Every `health.interval` (jittered by +-10 %, so several balancers in front of the same servers do
not probe in lock-step, the reason Envoy adds `interval_jitter`), each server gets one
`GET health.path` over a fresh connection (`Connection: close`: a probe that reuses the proxy's
pooled connections would test the pool, not the server). The result (status in
`health.expected_status` within `health.timeout`) goes into that server's rise/fall counter; when the
counter flips, this module sets `server.healthy`, emits `PoolEvent.DOWN`/`READY` and records an
event for /status.

All decisions live in the pure `ActiveHealth`; this module only does sockets and the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from typing import Any

from taxiway.balancing.health import ActiveHealth
from taxiway.balancing.model import PoolEvent, Server
from taxiway.config import HealthConfig

log = logging.getLogger("taxiway.proxy")

JITTER = 0.1          # +-10 % of the interval
MAX_STATUS_LINE = 8192


async def probe(host: str, port: int, path: str, timeout_s: float) -> tuple[int | None, str]:
    """One health request. Returns (status code or None, short reason for the event log)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_STATUS_LINE)
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: taxiway-health\r\n"
                         "Connection: close\r\n\r\n".encode("latin-1"))
            line = await reader.readline()
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            return None, "invalid HTTP response" if line else "connection closed without a response"
        return int(parts[1]), f"status {int(parts[1])}"
    except TimeoutError:
        return None, f"timeout after {timeout_s:g}s"
    except (OSError, ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as exc:
        # asyncio wraps a refused connect as OSError(errno, "Connect call failed ..."): name the errno.
        errno = getattr(exc, "errno", None)
        return None, os.strerror(errno) if errno else type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class HealthChecker:
    """Probes every server of `balancer.pool` periodically until `stop()`.

    Called by `Balancer.start()` (`HealthChecker(b).start()`, on the running loop) and
    `Balancer.stop()` (`await checker.stop()`).
    """

    def __init__(self, balancer: Any, rng: random.Random | None = None) -> None:
        self.balancer = balancer
        self.rng = rng or random.Random()
        self._state: dict[Server, ActiveHealth] = {}
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0   # completed check rounds (tests and /status can tell checks happen)

    def start(self) -> None:
        """Schedule the check loop on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="taxiway-healthcheck")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def cfg(self) -> HealthConfig:
        """Read through the balancer each time, so a SIGHUP reload's new settings apply."""
        health: HealthConfig = self.balancer.cfg.health
        return health

    def _sleep_s(self) -> float:
        return self.cfg.interval * (1.0 + self.rng.uniform(-JITTER, JITTER))

    async def _run(self) -> None:
        # A random first delay spreads balancers started together; the first round still comes soon.
        await asyncio.sleep(self.rng.uniform(0.0, min(self.cfg.interval, 1.0) * JITTER))
        while True:
            started = time.monotonic()
            try:
                await self.check_all()
            except Exception:  # a bug in one round must not end health checking for good
                log.exception("health check round failed")
            self.rounds += 1
            await asyncio.sleep(max(0.0, self._sleep_s() - (time.monotonic() - started)))

    async def check_all(self) -> None:
        """Probe every ready server once, concurrently, and apply the results."""
        servers = [s for s in list(self.balancer.pool) if s.ready]
        # Forget servers that left the pool (a re-added server starts from its own flags).
        for gone in [s for s in self._state if s not in servers]:
            del self._state[gone]
        results = await asyncio.gather(
            *(probe(s.host, s.port, self.cfg.path, self.cfg.timeout) for s in servers))
        for server, (status, reason) in zip(servers, results, strict=True):
            self._apply(server, status in self.cfg.expected_status, reason)

    def _apply(self, server: Server, ok: bool, reason: str) -> None:
        state = self._state.get(server)
        # New server, a reload that changed rise/fall, or someone else (the autoscale supervisor)
        # flipped `healthy`: start counting from the server's current flag.
        if state is None or (state.rise, state.fall) != (self.cfg.rise, self.cfg.fall) \
                or state.healthy != server.healthy:
            state = self._state[server] = ActiveHealth(self.cfg.rise, self.cfg.fall, healthy=server.healthy)
        counters = self.balancer.counters
        counters["health_checks"] += 1
        if not ok:
            counters["health_checks_failed"] += 1
        changed = state.process_check(ok)
        if changed is None:
            return
        server.healthy = changed
        if changed:
            server.joined_at = time.monotonic()  # slow start ramps from the recovery
            detail = f"UP: GET {self.cfg.path}: {reason} ({self.cfg.rise} good checks in a row)"
            kind = PoolEvent.READY
        else:
            detail = f"DOWN: GET {self.cfg.path}: {reason} ({self.cfg.fall} failed checks in a row)"
            kind = PoolEvent.DOWN
        log.warning("server %s (%s) %s", server.name, server.address, detail)
        # The balancer also records the pool event itself ("down"/"ready", no detail); this one
        # says why, so /status shows the cause next to the transition.
        self.balancer.events.append({"at": time.time(), "kind": "health", "server": server.name,
                                     "detail": detail})
        self.balancer.pool.emit(kind, server)
