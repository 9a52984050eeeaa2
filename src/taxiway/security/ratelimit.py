"""Rate-limit maths: the Generic Cell Rate Algorithm (GCRA), as pure functions.

Rules of this module:
1. Pure: no clock, no I/O, no asyncio, no logging. Time enters as `now`; state is one number (the
   TAT) that the caller stores (in a dict, or in Redis by the same maths written in Lua).
2. All times are in one unit chosen by the caller. The stores use integer microseconds, so the
   arithmetic is exact (no float drift at the burst boundary) and fits a Lua/Redis double
   (2**53 us is 285 years).

Theory of operation (ITU-T I.371 GCRA, as used by redis-cell and Stripe's limiter):
- A rate of `count` per `period` gives an *emission interval* T = period / count: the time one
  request "costs".
- The state is the *theoretical arrival time* TAT: when the client would be back to zero debt.
  An idle client has TAT <= now.
- A request at `now` is allowed when TAT - now <= tau, the *burst tolerance*. With tau = burst * T
  a fresh client may send 1 + burst requests at once, then one per T: never more than
  1 + burst + (t1 - t0) / T requests in any interval [t0, t1].
- Allowing moves TAT to max(TAT, now) + T. A denial leaves TAT untouched, so rejected requests do
  not push the client further into debt (a flood does not lock a client out for ever).

Compared with a token bucket this needs one stored number and no refill loop; compared with a
fixed window it has no boundary burst of 2x the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class Limit:
    """One rule's parameters in store units (microseconds in the stores)."""

    emission_interval: int   # T: period / count
    burst_tolerance: int     # tau: burst * T
    count: int               # the configured count, for RateLimit-Limit
    period: int              # the configured period, for RateLimit-Policy

    @classmethod
    def from_rate(cls, count: int, period_s: float, burst: int, unit_per_s: int = 1_000_000) -> Limit:
        """Build from a config rate like 100/m with `burst` extra requests allowed at once.

        Raises ValueError for a non-positive count or period or a negative burst (the config
        schema already refuses these; this guards direct callers).
        """
        if count <= 0 or period_s <= 0 or burst < 0:
            raise ValueError(f"bad rate {count}/{period_s}s burst {burst}")
        period = round(period_s * unit_per_s)
        interval = max(1, period // count)
        return cls(interval, interval * burst, count, period)


class Verdict(NamedTuple):
    """The outcome of one check, in store units (convert to seconds for headers).

    A NamedTuple rather than a frozen dataclass: it is built on every request, and tuple
    construction is several times cheaper.
    """

    allowed: bool
    new_tat: int | float
    retry_after: int | float   # 0 when allowed; else wait this long before the next try
    remaining: int             # requests still allowed right now after this one
    reset_after: int | float   # time until the client is back to a full burst


def gcra_check(tat: float, now: float, emission_interval: float,
               burst_tolerance: float) -> tuple[bool, float, float, int]:
    """Decide one request. Returns (allowed, new_tat, retry_after, remaining).

    Args:
        tat: the stored theoretical arrival time (use `now` or anything <= now for a new client).
        now: the current time, same unit.
        emission_interval: T, the cost of one request (> 0).
        burst_tolerance: tau = burst * T (>= 0).
    Returns:
        allowed: whether to serve the request.
        new_tat: the value to store (unchanged on a denial).
        retry_after: 0 when allowed, else how long until one request would be allowed.
        remaining: how many more requests would be allowed at `now` after this decision.
    """
    base = tat if tat > now else now
    debt = base - now                      # how far ahead of schedule the client is
    if debt > burst_tolerance:
        return False, tat, debt - burst_tolerance, 0
    new_tat = base + emission_interval
    remaining = int((burst_tolerance - (new_tat - now)) // emission_interval) + 1
    return True, new_tat, 0, max(0, remaining)


def check(tat: float, now: float, limit: Limit) -> Verdict:
    """`gcra_check` for a `Limit`, also reporting when the client is back to a full burst."""
    allowed, new_tat, retry_after, remaining = gcra_check(
        tat, now, limit.emission_interval, limit.burst_tolerance)
    return Verdict(allowed, new_tat, retry_after, remaining, max(0, new_tat - now))


def check_all(tats: list[float], now: float, limits: list[Limit]) -> tuple[int, list[Verdict]]:
    """Decide one request against several rules at once, all or nothing.

    Returns (index of the first rule that denies or -1, verdicts). When any rule denies, no TAT may
    be committed: a request that is refused must not use up another rule's allowance. The Redis
    script implements exactly this (see ratestore.py).
    """
    verdicts = [check(t, now, lim) for t, lim in zip(tats, limits, strict=True)]
    for i, v in enumerate(verdicts):
        if not v.allowed:
            return i, verdicts
    return -1, verdicts


def ceil_seconds(value: float, unit_per_s: int = 1_000_000) -> int:
    """Whole seconds for HTTP headers (Retry-After, RateLimit-Reset): round up, never below 0."""
    if value <= 0:
        return 0
    return int(-(-value // unit_per_s))
