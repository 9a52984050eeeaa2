"""The minimal Redis client: RESP parsing (whole, byte by byte, garbage) and real-Redis behaviour."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from taxiway.security.ratelimit import Limit
from taxiway.security.ratestore import RateStoreError, RedisStore
from taxiway.security.resp import RespClient, RespError, _Incomplete, encode, parse
from tests.services import RedisTarget

REPLIES = [
    (b":42\r\n", 42),
    (b"+OK\r\n", "OK"),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$-1\r\n", None),
    (b"*3\r\n:1\r\n:-2\r\n$1\r\nx\r\n", [1, -2, b"x"]),
    (b"*2\r\n*1\r\n:1\r\n*0\r\n", [[1], []]),
]


@pytest.mark.parametrize(("raw", "value"), REPLIES)
def test_parse_whole(raw: bytes, value: object) -> None:
    assert parse(raw, 0) == (value, len(raw))


@pytest.mark.parametrize(("raw", "value"), REPLIES)
def test_parse_byte_by_byte_is_incomplete_until_the_end(raw: bytes, value: object) -> None:
    for cut in range(len(raw)):
        with pytest.raises(_Incomplete):
            parse(raw[:cut], 0)
    assert parse(raw + b":7\r\n", 0) == (value, len(raw))


def test_error_reply_is_a_value_not_an_exception() -> None:
    err, pos = parse(b"-NOSCRIPT No matching script\r\n", 0)
    assert isinstance(err, RespError) and err.reply and err.reply.startswith("NOSCRIPT") and pos == 30


def test_garbage_type_byte_is_refused() -> None:
    with pytest.raises(ValueError):
        parse(b"?what\r\n", 0)


def test_encode() -> None:
    assert encode("GET", b"k", 5) == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$1\r\n5\r\n"


@pytest.mark.redis
def test_pipelined_calls_resolve_in_order(redis_server: RedisTarget) -> None:
    async def go() -> list[object]:
        c = RespClient(redis_server.url, 5.0)
        await c.connect()
        key = redis_server.prefix + "n"
        futs = [c.call("INCR", key) for _ in range(200)]   # all written before any reply is read
        out = await asyncio.gather(*futs)
        await c.close()
        return out

    assert asyncio.run(go()) == list(range(1, 201))


@pytest.mark.redis
def test_script_is_reloaded_after_script_flush(redis_server: RedisTarget) -> None:
    async def go() -> int:
        store = RedisStore(redis_server.url)
        lim = Limit.from_rate(1, 3600, 5)
        await store.check([redis_server.prefix + "a"], [lim])
        admin = RespClient(redis_server.url, 5.0)
        await admin.connect()
        await admin.call("SCRIPT", "FLUSH")
        await admin.close()
        _, verdicts = await store.check([redis_server.prefix + "a"], [lim])
        await store.close()
        return verdicts[0].remaining

    assert asyncio.run(go()) == 4   # burst 5: six at once, two used


@pytest.mark.redis
def test_selects_the_database_in_the_url(redis_server: RedisTarget) -> None:
    async def go() -> tuple[object, object]:
        c3 = RespClient(redis_server.url.rsplit("/", 1)[0] + "/3", 5.0)
        c0 = RespClient(redis_server.url.rsplit("/", 1)[0] + "/0", 5.0)
        await c3.connect()
        await c0.connect()
        key = redis_server.prefix + "db"
        await c3.call("SET", key, "three")
        got = await c3.call("GET", key), await c0.call("GET", key)
        await c3.call("DEL", key)
        await c3.close()
        await c0.close()
        return got

    assert asyncio.run(go()) == (b"three", None)


def test_a_server_that_never_answers_times_out_and_marks_the_store_down() -> None:
    """A Redis that accepts but never replies (hung): calls fail after the timeout, not forever."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(srv.accept()[0]), daemon=True).start()

    async def go() -> None:
        store = RedisStore(f"redis://127.0.0.1:{port}/0")
        with pytest.raises(RateStoreError, match="did not answer"):
            await store.check(["k"], [Limit.from_rate(1, 1, 0)])
        with pytest.raises(RateStoreError, match="unavailable"):
            await store.check(["k"], [Limit.from_rate(1, 1, 0)])
        await store.close()

    try:
        asyncio.run(go())
    finally:
        for s in held:
            s.close()
        srv.close()
