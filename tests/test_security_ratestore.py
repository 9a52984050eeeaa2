"""Rate-limit stores: one invariant suite for the memory store and the Redis store (real Redis)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxiway.security.ratelimit import Limit, Verdict
from taxiway.security.ratestore import MemoryStore, RateStoreError, RedisStore, redact_url
from tests.conftest import free_port
from tests.services import RedisTarget


class Runner:
    """Drives either store the same way: the memory store is sync, the Redis store async."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store = store
        self.prefix = prefix
        self.loop = asyncio.new_event_loop()

    def check(self, keys: list[str], limits: list[Limit]) -> tuple[int, list[Verdict]]:
        res = self.store.check([self.prefix + k for k in keys], limits)
        if inspect.isawaitable(res):
            res = self.loop.run_until_complete(res)
        return res

    def close(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()


@pytest.fixture(params=["memory", "redis"])
def runner(request: pytest.FixtureRequest) -> Iterator[Runner]:
    if request.param == "memory":
        r = Runner(MemoryStore(), "")
    else:
        target: RedisTarget = request.getfixturevalue("redis_server")
        r = Runner(RedisStore(target.url), target.prefix)
    yield r
    r.close()


def test_burst_then_refused(runner: Runner) -> None:
    lim = Limit.from_rate(1, 3600, burst=4)  # 1/h: nothing refills during the test
    results = [runner.check(["a"], [lim]) for _ in range(7)]
    allowed = [denied < 0 for denied, _ in results]
    assert allowed == [True] * 5 + [False] * 2
    assert [v[0].remaining for _, v in results[:5]] == [4, 3, 2, 1, 0]
    denied, verdicts = results[-1]
    assert denied == 0
    # Retry after about one emission interval (an hour), give or take the test's own runtime.
    assert 3500 * 1e6 < verdicts[0].retry_after <= 3600 * 1e6


def test_clients_are_independent(runner: Runner) -> None:
    lim = Limit.from_rate(1, 3600, burst=0)
    assert runner.check(["a"], [lim])[0] < 0
    assert runner.check(["a"], [lim])[0] == 0
    assert runner.check(["b"], [lim])[0] < 0


def test_refused_request_commits_no_rule(runner: Runner) -> None:
    loose, strict = Limit.from_rate(1, 3600, burst=1), Limit.from_rate(1, 3600, burst=0)
    assert runner.check(["loose", "strict"], [loose, strict])[0] < 0
    assert runner.check(["loose", "strict"], [loose, strict])[0] == 1
    # The loose rule still has the allowance the refused request did not use.
    assert runner.check(["loose"], [loose])[0] < 0


def test_allowance_refills_with_time(runner: Runner) -> None:
    lim = Limit.from_rate(20, 1, burst=0)   # one every 50 ms
    assert runner.check(["r"], [lim])[0] < 0
    assert runner.check(["r"], [lim])[0] == 0
    time.sleep(0.12)
    assert runner.check(["r"], [lim])[0] < 0


def test_memory_store_uses_injected_clock_and_prunes_idle_clients() -> None:
    now = [100.0]
    store = MemoryStore(clock=lambda: now[0])
    lim = Limit.from_rate(1, 10, burst=0)
    assert store.check(["x"], [lim])[0] < 0
    assert store.check(["x"], [lim])[0] == 0
    now[0] += 10
    assert store.check(["x"], [lim])[0] < 0
    assert len(store) == 1
    store.prune(int((now[0] + 11) * 1e6))
    assert len(store) == 0


@pytest.mark.redis
def test_redis_keys_expire_when_idle(redis_server: RedisTarget) -> None:
    import redis

    r = Runner(RedisStore(redis_server.url), redis_server.prefix)
    try:
        r.check(["e"], [Limit.from_rate(1, 2, burst=0)])
    finally:
        r.close()
    client = redis.Redis.from_url(redis_server.url)
    try:
        ttl = client.pttl(redis_server.prefix + "e")
    finally:
        client.close()
    assert 0 < ttl <= 2002


@pytest.mark.redis
@pytest.mark.slow
def test_two_redis_clients_hold_a_combined_limit(redis_server: RedisTarget) -> None:
    """Two store instances with separate connections hammer one key: together they get ~ the rate."""
    # A 1 s burst tolerance: a stall of the test process (loaded CI machine) shorter than that
    # costs no allowance, so the count measures the limiter, not the machine.
    rate_per_s, burst, duration_s = 50, 50, 4.0
    lim = Limit.from_rate(rate_per_s, 1, burst=burst)
    key = redis_server.prefix + "shared"

    async def hammer(store: RedisStore, stop_at: float, counts: list[int]) -> None:
        while time.monotonic() < stop_at:
            denied, _ = await store.check([key], [lim])
            if denied < 0:
                counts[0] += 1
            await asyncio.sleep(0.001)

    async def main() -> tuple[int, int, float]:
        a, b = RedisStore(redis_server.url), RedisStore(redis_server.url)
        ca, cb = [0], [0]
        start = time.monotonic()
        stop_at = start + duration_s
        await asyncio.gather(*(hammer(a, stop_at, ca) for _ in range(3)),
                             *(hammer(b, stop_at, cb) for _ in range(3)))
        elapsed = time.monotonic() - start
        await a.close()
        await b.close()
        return ca[0], cb[0], elapsed

    na, nb, elapsed = asyncio.run(main())
    expected = 1 + burst + rate_per_s * elapsed
    assert na > 0 and nb > 0, "both clients must have been served"
    assert abs((na + nb) - expected) / expected < 0.05, (na, nb, expected)


def test_unreachable_redis_raises_store_error_quickly() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    r = Runner(RedisStore(dead), "")
    lim = Limit.from_rate(1, 1, burst=0)
    try:
        with pytest.raises(RateStoreError, match=r"127\.0\.0\.1"):
            r.check(["k"], [lim])
        t0 = time.monotonic()
        with pytest.raises(RateStoreError, match="unavailable"):
            r.check(["k"], [lim])
        assert time.monotonic() - t0 < 0.1  # no connect attempt while marked down
    finally:
        r.close()


def test_store_errors_and_repr_never_show_the_redis_password() -> None:
    port = free_port()
    r = Runner(RedisStore(f"redis://:hunter2@127.0.0.1:{port}/0"), "")
    lim = Limit.from_rate(1, 1, burst=0)
    try:
        for _ in range(2):   # the connect error, then the "unavailable (retrying shortly)" one
            with pytest.raises(RateStoreError) as info:
                r.check(["k"], [lim])
            assert "hunter2" not in str(info.value)
            assert f"redis://:***@127.0.0.1:{port}/0" in str(info.value)
        assert "hunter2" not in repr(r.store) and "hunter2" not in r.store.url
    finally:
        r.close()


@pytest.mark.parametrize(("url", "shown"), [
    pytest.param("redis://:secret@db:6379/0", "redis://:***@db:6379/0", id="password-only"),
    pytest.param("redis://app:secret@db:6379/0", "redis://app:***@db:6379/0", id="user-and-password"),
    pytest.param("rediss://:p%40ss@[::1]:6380/2", "rediss://:***@[::1]:6380/2", id="tls-ipv6-encoded"),
    pytest.param("redis://:a:b@db/0", "redis://:***@db/0", id="colon-in-password"),
    pytest.param("redis://u:p@ss@db/0", "redis://u:***@db/0", id="at-in-password"),
    pytest.param("redis://:@db/0", "redis://:***@db/0", id="empty-password"),
    pytest.param("redis://db:6379/0?password=secret", "redis://db:6379/0?password=***", id="query-password"),
    pytest.param("unix:///run/redis.sock?db=1&password=secret", "unix:///run/redis.sock?db=1&password=***",
                 id="unix-query-password"),
    pytest.param("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", id="no-password-unchanged"),
    pytest.param("redis://app@db/0", "redis://app@db/0", id="user-only-unchanged"),
    pytest.param("redis://:secret@[::1/0", "<unparsable URL>", id="unparsable"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@settings(max_examples=100, deadline=None)
@given(gaps_ms=st.lists(st.integers(0, 300), min_size=1, max_size=80), burst=st.integers(0, 5),
       per_s=st.integers(1, 50))
def test_memory_fast_path_matches_the_general_path(gaps_ms: list[int], burst: int, per_s: int) -> None:
    """One rule takes a shortcut; two identical rules take check_all. Same answers either way."""
    now = [1000.0]
    one, two = MemoryStore(clock=lambda: now[0]), MemoryStore(clock=lambda: now[0])
    lim = Limit.from_rate(per_s, 1, burst)
    for gap in gaps_ms:
        now[0] += gap / 1000
        d1, v1 = one.check(["k"], [lim])
        d2, v2 = two.check(["k", "k2"], [lim, lim])
        assert (d1 < 0) == (d2 < 0)
        assert v1[0] == v2[0]
