"""Health and failure: active-check counting, passive outlier ejection and the retry budget.

Rules of this module:
1. Pure state machines: no I/O, no clock, no RNG, no logging. Results of health checks and of
   proxied requests come in through `process_*` calls, time as `now` (monotonic seconds). The
   drivers (the active checker, the proxy) do the sockets and emit pool events.
2. Each machine names its states with an enum, and one method per input (`process_check`,
   `process_outcome`) moves it, a branch per state; the returned value tells the driver what
   changed so it can log, count and emit exactly once.

Theory of operation.
- `ActiveHealth` (HAProxy's `rise`/`fall`): a health counter in [0, rise + fall - 1]. An UP server
  sits at the top; a failed check takes one off, a good one puts one back, and it goes DOWN when a
  failure finds the counter at `rise` -- so `fall` consecutive failures take a fully healthy server
  down, while scattered failures between successes do not. A DOWN server needs `rise` consecutive
  good checks; any failure starts it over.
- `OutlierDetector` (Envoy's consecutive-5xx / consecutive-gateway-failure ejection): passive, fed
  with every proxied outcome. `consecutive_failures` failures in a row eject the server for
  `base_ejection x 2^(ejections - 1)`, capped at `max_ejection`; the multiplier decays by one for
  each `base_ejection` the server then stays in without being ejected again (Envoy decrements it
  per interval), so a server that recovered for good is soon treated as new. Ejection is refused
  when it would put more than `max_ejected_percent` of the pool out at once: a mass failure is more
  likely the network or a shared dependency than every server at once, and ejecting them all
  would turn partial failure into total failure.
- `RetryBudget` (Finagle's RetryBudget, Envoy's retry_budget): retries may add at most `ratio` of
  the request rate, plus a small reserve of `min_per_s` per second so low-traffic services can still
  retry. Requests and retries are exponentially decaying counts over `window_s`; a retry is
  allowed while `retries + 1 <= ratio x requests + min_per_s x window_s`. Integrating that
  invariant gives a hard bound: over any run of T seconds with N requests, at most
  `ratio x N + min_per_s x (window_s + T)` retries are allowed (the Hypothesis property tests it).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

from taxiway.balancing.model import Server
from taxiway.config import OutlierConfig

# ------------------------------------------------------------------------------------------------
# Active checks


class HealthState(enum.Enum):
    UP = "up"
    DOWN = "down"


class ActiveHealth:
    """Rise/fall counting for one server, exactly as HAProxy's `check->health` counter.

    Args:
        rise: consecutive good checks that bring a DOWN server UP (HAProxy default 2).
        fall: consecutive failed checks that take a fully UP server DOWN (HAProxy default 3).
        healthy: the initial state (HAProxy starts servers UP; a pool-managed starting server
            may start DOWN so it gets traffic only after `rise` good checks).
    Raises:
        ValueError: rise or fall below 1 (the config schema refuses those first).
    """

    __slots__ = ("fall", "health", "rise", "state")

    def __init__(self, rise: int, fall: int, healthy: bool = True) -> None:
        if rise < 1 or fall < 1:
            raise ValueError(f"rise and fall must be >= 1, got rise={rise} fall={fall}")
        self.rise = rise
        self.fall = fall
        self.state = HealthState.UP if healthy else HealthState.DOWN
        self.health = self._top if healthy else 0

    @property
    def _top(self) -> int:
        return self.rise + self.fall - 1

    @property
    def healthy(self) -> bool:
        return self.state is HealthState.UP

    def process_check(self, ok: bool) -> bool | None:
        """Feed one check result. Returns the new `healthy` value when the state changed, else None.

        The driver should set `server.healthy` (and `joined_at = now` on recovery, for slow start)
        and emit a pool event only when this returns a value.
        """
        if self.state is HealthState.UP:
            if ok:
                self.health = min(self._top, self.health + 1)
                return None
            if self.health > self.rise:
                self.health -= 1
                return None
            self.state, self.health = HealthState.DOWN, 0
            return False
        if not ok:
            self.health = 0
            return None
        self.health += 1
        if self.health >= self.rise:
            self.state, self.health = HealthState.UP, self._top
            return True
        return None

    def __repr__(self) -> str:
        return (f"<ActiveHealth {self.state.name} health={self.health}/{self._top} "
                f"rise={self.rise} fall={self.fall}>")


# ------------------------------------------------------------------------------------------------
# Passive outlier detection


class OutlierDetector:
    """Ejects servers after consecutive failures, for growing times, never too many at once.

    The detector owns three fields of each `Server`: `consecutive_failures`, `ejections` and
    `ejected_until` (`Server.is_available` reads the latter, so an ejected server comes back by
    itself when its time is up; no timer is needed). On ejection it also sets `joined_at` to the
    ejection's end, so slow start (if configured) ramps the server back in.
    """

    def __init__(self, cfg: OutlierConfig) -> None:
        self.cfg = cfg
        # When each server's ejection multiplier last started decaying (ejection end).
        self._decay_from: dict[Server, float] = {}

    def ejection_time(self, ejections: int) -> float:
        """Seconds the `ejections`-th consecutive ejection lasts: base x 2^(n-1), capped."""
        if ejections <= 0:
            return 0.0
        return min(float(self.cfg.max_ejection), self.cfg.base_ejection * 2.0 ** min(ejections - 1, 62))

    def _decay(self, server: Server, now: float) -> None:
        """Forget one ejection per `base_ejection` the server stayed in since its last ejection ended."""
        since = self._decay_from.get(server)
        if since is None or server.ejections == 0 or now < since:
            return
        base = self.cfg.base_ejection
        if base <= 0:
            server.ejections = 0
            return
        periods = int((now - since) // base)
        if periods > 0:
            server.ejections = max(0, server.ejections - periods)
            self._decay_from[server] = since + periods * base
            if server.ejections == 0:
                del self._decay_from[server]

    def process_outcome(self, server: Server, ok: bool, now: float, servers: Sequence[Server]) -> bool:
        """Feed one proxied outcome (ok = a response that was not a connect error or 5xx).

        Args:
            server: the server that handled (or failed) the request.
            ok: False for connect errors, resets, timeouts and 5xx answers.
            now: monotonic seconds.
            servers: the whole pool, to enforce `max_ejected_percent`.
        Returns:
            True when this outcome ejected the server: the driver should emit `PoolEvent.EJECTED`
            and log it. Outcomes of requests that finish while the server is already ejected are
            ignored (they were sent before the ejection).
        """
        if server.is_ejected(now):
            return False
        self._decay(server, now)
        if ok:
            server.consecutive_failures = 0
            return False
        server.consecutive_failures += 1
        if not self.cfg.enabled or server.consecutive_failures < self.cfg.consecutive_failures:
            return False
        if not self._may_eject(server, now, servers):
            return False
        server.ejections += 1
        server.ejected_until = now + self.ejection_time(server.ejections)
        server.consecutive_failures = 0
        # Slow start ramps from the moment it comes back, as for a server recovering from failed
        # active checks: a server that just failed must not get its full share at once.
        server.joined_at = server.ejected_until
        self._decay_from[server] = server.ejected_until
        return True

    def _may_eject(self, server: Server, now: float, servers: Sequence[Server]) -> bool:
        ejected = sum(1 for s in servers if s is not server and s.is_ejected(now))
        pool = max(len(servers), 1)
        return (ejected + 1) * 100 <= self.cfg.max_ejected_percent * pool

    def forget(self, server: Server) -> None:
        """Called by the driver when a server leaves the pool for good."""
        self._decay_from.pop(server, None)


# ------------------------------------------------------------------------------------------------
# Retry budget


class RetryBudget:
    """Caps retries at `ratio` of requests (plus a reserve of `min_per_s`), over a decaying window.

    Args:
        ratio: retries allowed per original request (0.2 = 20 %, Envoy's and Finagle's default).
        min_per_s: retries per second always allowed, so a quiet service can still retry
            (Finagle's default is 10).
        window_s: how long a request keeps (a decaying share of) its deposit (Finagle: 10 s).
    """

    __slots__ = ("_at", "_requests", "_retries", "min_per_s", "ratio", "window_s")

    def __init__(self, ratio: float, min_per_s: float = 10.0, window_s: float = 10.0) -> None:
        if ratio < 0 or min_per_s < 0 or window_s <= 0:
            raise ValueError("ratio and min_per_s must be >= 0 and window_s > 0")
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._requests = 0.0
        self._retries = 0.0
        self._at: float | None = None

    def _advance(self, now: float) -> None:
        if self._at is None:
            self._at = now
            return
        elapsed = now - self._at
        if elapsed > 0:
            w = math.exp(-elapsed / self.window_s)
            self._requests *= w
            self._retries *= w
            self._at = now

    def process_request(self, now: float) -> None:
        """Called by the proxy once per original request (not per retry)."""
        self._advance(now)
        self._requests += 1.0

    def process_requests(self, count: int, now: float) -> None:
        """`count` original requests at once: the proxy deposits the requests counted since its
        last call (every tick and before each retry decision), not one call per request."""
        self._advance(now)
        self._requests += count

    def allow_retry(self, now: float) -> bool:
        """May one more retry go out now? Consumes it when True.

        When False the caller should answer with the original failure instead of retrying.
        """
        self._advance(now)
        if self._retries + 1.0 <= self.ratio * self._requests + self.min_per_s * self.window_s + 1e-9:
            self._retries += 1.0
            return True
        return False

    def __repr__(self) -> str:
        return (f"<RetryBudget ratio={self.ratio} requests~{self._requests:.1f} "
                f"retries~{self._retries:.1f}>")
