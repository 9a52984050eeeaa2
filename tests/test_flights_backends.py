"""The flights app on PostgreSQL (DATABASE_URL) with the Redis cache (REDIS_URL), over real HTTP.

The embedded default (SQLite + database cache) is covered by test_flights_app.py; here the same
user-visible behaviour must hold on the servers a production deployment would use: the raw-SQL
search (date filter, partitions, UNION ALL), booking with a row lock, and seat-count invalidation
in a cache shared by every app server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.flights_support import (
    AppGroup,
    base_env,
    csrf_token,
    manage,
    prepared_dir,
    register,
)
from tests.services import RedisTarget

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def pg_group(postgres_db: str, redis_server: RedisTarget) -> Iterator[AppGroup]:
    workdir: Path = prepared_dir()  # for the collected static files; the SQLite copy goes unused
    env = base_env(workdir, DATABASE_URL=postgres_db, REDIS_URL=redis_server.url,
                   FLIGHTS_CACHE_PREFIX=redis_server.prefix.rstrip(":"))
    for args in (("prepare",), ("seed", "--flights", "300", "--users", "2", "--bookings", "50")):
        res = manage(env, *args)
        assert res.returncode == 0, res.stdout + res.stderr
    group = AppGroup(workdir, env)
    try:
        group.start(2, workers=1)
        yield group
    finally:
        group.stop()


def test_search_booking_and_shared_redis_cache_on_postgres(pg_group: AppGroup,
                                                           redis_server: RedisTarget) -> None:
    a, b = pg_group.servers
    with httpx.Client(base_url=a.url, timeout=30) as ca, httpx.Client(base_url=b.url, timeout=30) as cb:
        flights = ca.get("/api/flights", params={"kind": "international", "sort": "price"}).json()["results"]
        assert flights and all(f["ref"].startswith("I") for f in flights)
        day = flights[0]["departs_at"][:10]
        on_day = ca.get("/api/flights", params={"date": day, "page_size": 100}).json()["results"]
        assert flights[0]["ref"] in {f["ref"] for f in on_day}
        assert all(f["departs_at"].startswith(day) for f in on_day)
        assert ca.get("/", params={"q": "' OR 1=1 --"}).status_code == 200

        ref = flights[0]["ref"]
        before = cb.get(f"/api/flights/{ref}").json()["seats_left"]     # server B caches the count
        client = redis.Redis.from_url(redis_server.url)
        try:
            assert list(client.scan_iter(match=f"{redis_server.prefix}*seats:{ref}"))

            reg = register(ca, "pg" + uuid.uuid4().hex[:8], "pg-password-" + uuid.uuid4().hex)
            assert reg.status_code == 302
            token = csrf_token(ca.get(f"/flights/{ref}/").text)
            r = ca.post(f"/flights/{ref}/book", data={"full_name": "Grace Hopper", "passport_number": "P42",
                                                       "csrfmiddlewaretoken": token})
            assert r.status_code == 302                                     # booked on server A...
            assert not list(client.scan_iter(match=f"{redis_server.prefix}*seats:{ref}"))
        finally:
            client.close()
        assert cb.get(f"/api/flights/{ref}").json()["seats_left"] == before - 1   # ...seen by B
        assert "Grace Hopper" in ca.get("/bookings/").text
