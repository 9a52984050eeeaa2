"""tests/services.py is what CI relies on: check each way of getting a server really works."""

from __future__ import annotations

import pytest

from tests import services


def test_redis_fixture_gives_isolated_prefix(redis_server: services.RedisTarget) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set(redis_server.prefix + "x", "1")
        assert client.get(redis_server.prefix + "x") == b"1"
    finally:
        client.close()
    assert redis_server.prefix.startswith("taxiway-test:")


def test_prefix_keys_are_deleted_after(redis_server: services.RedisTarget) -> None:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set(redis_server.prefix + "a", "1")
        client.set(redis_server.prefix + "b", "1")
        services._delete_prefix(redis_server.url, redis_server.prefix)
        assert client.exists(redis_server.prefix + "a", redis_server.prefix + "b") == 0
    finally:
        client.close()


@pytest.mark.slow
def test_private_redis_server_starts_on_a_free_port() -> None:
    try:
        url = services._start_private_redis()
    except services.ServiceUnavailable as exc:
        pytest.skip(str(exc))
    assert services.redis_ping(url)
    assert not url.endswith(":6379/0")


def test_postgres_db_is_a_fresh_database(postgres_db: str) -> None:
    import psycopg

    with psycopg.connect(postgres_db) as conn:
        name = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute("CREATE TABLE t (x int)")
    assert name.startswith("taxiway_test_")


def test_temporary_database_is_dropped(postgres_server: str) -> None:
    import psycopg

    with services.temporary_database(postgres_server) as dsn:
        name = dsn.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server) as conn:
        rows = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchall()
    assert rows == []


@pytest.mark.slow
def test_private_postgres_starts_even_as_root() -> None:
    try:
        dsn = services._start_private_postgres()
    except services.ServiceUnavailable as exc:
        pytest.skip(str(exc))
    assert services._pg_connect_ok(dsn)
    assert ":5432/" not in dsn
