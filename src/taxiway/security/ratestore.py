"""Rate-limit stores (drivers): where each client's GCRA state (its TAT) lives.

- `MemoryStore`: a dict in this process. Synchronous, so the proxy's callback chain never awaits.
  Limits are per balancer process.
- `RedisStore`: one Redis shared by several balancers, so together they hold one limit. Each
  request costs exactly one round trip (pipelined with other requests' on one connection): a Lua
  script (EVALSHA) that reads the server's clock, checks every rule that applies and commits all
  TATs or none, atomically. Time comes from Redis (`TIME`), not from the balancers, so balancers
  with skewed clocks still agree. Every key gets a PEXPIRE at the moment its TAT falls back to
  "idle", so Redis holds only active clients.

Both stores answer `check(keys, limits) -> (denied_index, verdicts)` with the maths of
`ratelimit.check_all` (the Lua script is the same algorithm; tests run both through one suite).
Units are integer microseconds.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from taxiway.config import redact_url
from taxiway.errors import RateStoreError, RespError
from taxiway.security.ratelimit import Limit, Verdict, check_all, gcra_check
from taxiway.security.resp import RespClient

log = logging.getLogger("taxiway.security")

US_PER_S = 1_000_000
PRUNE_EVERY_CHECKS = 4096     # memory store: drop idle clients this often (amortised O(1))
REDIS_TIMEOUT_S = 0.5         # a shared limiter slower than this is treated as down
REDIS_RETRY_AFTER_ERROR_S = 1.0  # after a failure, skip Redis this long (no timeout per request)


class MemoryStore:
    """TATs in a dict; `clock` returns seconds (monotonic: immune to wall-clock jumps)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tats: dict[str, int] = {}
        self._checks = 0

    def check(self, keys: list[str], limits: list[Limit]) -> tuple[int, list[Verdict]]:
        now = int(self._clock() * US_PER_S)
        tats = self._tats
        self._checks += 1
        if self._checks % PRUNE_EVERY_CHECKS == 0:
            self.prune(now)
        if len(keys) == 1:
            # The common case (one rule applies), without check_all's lists: same maths.
            key, lim = keys[0], limits[0]
            allowed, new_tat, retry, remaining = gcra_check(
                tats.get(key, 0), now, lim.emission_interval, lim.burst_tolerance)
            if allowed:
                tats[key] = new_tat  # type: ignore[assignment]
            return (-1 if allowed else 0), [Verdict(allowed, new_tat, retry, remaining, new_tat - now)]
        denied, verdicts = check_all([tats.get(k, 0) for k in keys], now, limits)
        if denied < 0:
            for k, v in zip(keys, verdicts, strict=True):
                tats[k] = int(v.new_tat)
        return denied, verdicts

    def prune(self, now_us: int) -> None:
        """Forget clients whose TAT has passed: they are indistinguishable from new ones."""
        self._tats = {k: t for k, t in self._tats.items() if t > now_us}

    def __len__(self) -> int:
        return len(self._tats)

    async def close(self) -> None:
        self._tats.clear()


# KEYS: one per rule. ARGV: interval_1, tolerance_1, interval_2, tolerance_2, ...
# Returns: {denied (1-based, 0 = none), now, then per key: allowed, tat, retry_after, remaining}.
# The maths mirrors ratelimit.gcra_check; see that module for the theory.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local denied = 0
local out = {0, now}
local news = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  local base = tat
  if base < now then base = now end
  local debt = base - now
  if debt > tolerance then
    if denied == 0 then denied = i end
    out[#out + 1] = 0; out[#out + 1] = tat; out[#out + 1] = debt - tolerance; out[#out + 1] = 0
  else
    local new = base + interval
    news[i] = new
    out[#out + 1] = 1; out[#out + 1] = new; out[#out + 1] = 0
    out[#out + 1] = math.floor((tolerance - debt) / interval)
  end
end
out[1] = denied
if denied == 0 then
  for i = 1, #KEYS do
    local ttl_ms = math.ceil((news[i] - now) / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%.0f', news[i]), 'PX', ttl_ms)
  end
end
return out
"""


class RedisStore:
    """Shared TATs in Redis; `check` is a coroutine and raises RateStoreError when Redis is down.

    Uses the pipelined single-connection client in resp.py (see there for why not redis-py).
    """

    def __init__(self, url: str, clock: Callable[[], float] = time.monotonic) -> None:
        # Only the redacted form is kept: every message, log line and repr shows this one.
        self.url = redact_url(url)
        self._clock = clock
        self._client = RespClient(url, REDIS_TIMEOUT_S)
        self._sha = hashlib.sha1(GCRA_LUA.encode()).hexdigest()
        self._down_until = 0.0

    async def check(self, keys: list[str], limits: list[Limit]) -> tuple[int, list[Verdict]]:
        """One round trip. Raises RateStoreError (quickly, without retrying) when Redis is down."""
        if self._clock() < self._down_until:
            raise RateStoreError(f"rate-limit store {self.url} is unavailable (retrying shortly)")
        args: list[int] = []
        for lim in limits:
            args += (lim.emission_interval, lim.burst_tolerance)
        client = self._client
        try:
            if not client.is_connected:
                await client.connect()
            try:
                reply = await client.call("EVALSHA", self._sha, len(keys), *keys, *args)
            except RespError as exc:
                if not (exc.reply or "").startswith("NOSCRIPT"):
                    raise
                # First use on this Redis (or after SCRIPT FLUSH): EVAL sends and caches the script.
                reply = await client.call("EVAL", GCRA_LUA, len(keys), *keys, *args)
        except RespError as exc:
            self._down_until = self._clock() + REDIS_RETRY_AFTER_ERROR_S
            raise RateStoreError(f"rate-limit store {self.url}: {exc}") from exc
        denied, now = int(reply[0]), int(reply[1])
        verdicts = []
        for i in range(len(keys)):
            allowed, tat, retry, remaining = (int(x) for x in reply[2 + 4 * i: 6 + 4 * i])
            verdicts.append(Verdict(bool(allowed), tat, retry, remaining, max(0, tat - now)))
        return denied - 1, verdicts

    def __repr__(self) -> str:
        return f"<RedisStore {self.url}>"

    async def close(self) -> None:
        await self._client.close()
