"""A minimal pipelined Redis client (RESP2) for the rate limiter's hot path (driver).

Why not redis-py: its asyncio client checks a connection out of a pool, awaits the write and
parses on a task for every command: measured here, that alone cut the balancer's throughput to a
tenth. The limiter needs one command (EVALSHA) with integer-array replies, so this client keeps
ONE connection, writes each command at once (no await), and matches replies to futures in order
(Redis answers a connection's commands in the order sent). Many requests in flight share one
connection and one syscall per loop iteration: pipelining for free.

Rules:
1. `call()` returns an `asyncio.Future`; it never blocks and never awaits.
2. Each call has a deadline (`loop.call_later`); a late reply is still consumed in order, so the
   stream never gets out of step.
3. A lost connection fails every pending call with `RespError`; the next call reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any
from urllib.parse import unquote, urlsplit

from taxiway.errors import RespError


def encode(*args: bytes | str | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class _Incomplete(Exception):
    pass


def parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """Parse one reply at `pos`; returns (value, next position). Raises _Incomplete for more data.

    Error replies become RespError values (returned, not raised), so one bad reply fails only its
    own call.
    """
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos:pos + 1], bytes(buf[pos + 1:end])
    nxt = end + 2
    if kind == b":":
        return int(line), nxt
    if kind == b"+":
        return line.decode(), nxt
    if kind == b"-":
        text = line.decode(errors="replace")
        return RespError(f"redis: {text}", text), nxt
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, nxt
        if len(buf) < nxt + n + 2:
            raise _Incomplete
        return bytes(buf[nxt:nxt + n]), nxt + n + 2
    if kind == b"*":
        n = int(line)
        if n < 0:
            return None, nxt
        items = []
        for _ in range(n):
            item, nxt = parse(buf, nxt)
            items.append(item)
        return items, nxt
    raise ValueError(f"unexpected RESP type byte {kind!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self, client: RespClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Called by the loop when the TCP (or TLS) connection is up."""
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        """Called by the loop with reply bytes: resolve pending calls in order."""
        buf = self.buf
        buf += data
        pos = 0
        pending = self.client._pending
        try:
            while pos < len(buf):
                value, pos = parse(buf, pos)
                if not pending:
                    continue
                fut, timer = pending.popleft()
                if timer is not None:
                    timer.cancel()
                if not fut.done():
                    if isinstance(value, RespError):
                        fut.set_exception(value)
                    else:
                        fut.set_result(value)
        except _Incomplete:
            pass
        except ValueError as exc:
            self.client._fail(f"redis protocol error: {exc}")
            return
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        """Called by the loop when Redis closed the connection or it broke."""
        self.client._fail(f"connection to redis lost: {exc or 'closed by server'}")


class RespClient:
    """One pipelined connection to the Redis at `url` (redis:// or rediss://, password, db)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise RespError(f"unsupported Redis URL scheme {parts.scheme!r} (use redis:// or rediss://)")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.tls = parts.scheme == "rediss"
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.db = int(parts.path.strip("/") or 0)
        self.timeout_s = timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._pending: collections.deque[tuple[asyncio.Future[Any], asyncio.TimerHandle | None]] = \
            collections.deque()

    @property
    def is_connected(self) -> bool:
        return self._proto is not None and self._proto.transport is not None \
            and not self._proto.transport.is_closing()

    async def connect(self) -> None:
        """Open the connection (AUTH/SELECT pipelined behind it). Raises RespError."""
        if self.is_connected:
            return
        if self._connecting is not None:
            await asyncio.shield(self._connecting)
            return
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            ctx = ssl.create_default_context() if self.tls else None
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: _Protocol(self), self.host, self.port, ssl=ctx),
                    self.timeout_s)
            except (OSError, TimeoutError) as exc:
                where = f"{self.host}:{self.port}"
                raise RespError(f"cannot connect to redis {where}: {exc or 'timeout'}") from None
            self._proto = proto
            setup = []
            if self.password is not None:
                auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
                setup.append(self.call(*auth))
            if self.db:
                setup.append(self.call("SELECT", self.db))
            for fut in setup:
                await fut
            self._connecting.set_result(None)
        except BaseException as exc:
            self._connecting.set_exception(exc if isinstance(exc, RespError) else RespError(str(exc)))
            self._connecting.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._connecting = None

    def call(self, *args: bytes | str | int) -> asyncio.Future[Any]:
        """Send one command now; the future resolves to its reply or fails with RespError."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        proto = self._proto
        if proto is None or proto.transport is None or proto.transport.is_closing():
            fut.set_exception(RespError("not connected to redis"))
            return fut
        timer = loop.call_later(self.timeout_s, self._on_timeout, fut)
        self._pending.append((fut, timer))
        proto.transport.write(encode(*args))
        return fut

    def _on_timeout(self, fut: asyncio.Future[Any]) -> None:
        """Called by the loop when a reply is overdue. The slot stays queued (replies stay in step)."""
        if not fut.done():
            fut.set_exception(RespError(f"redis {self.host}:{self.port} did not answer within "
                                        f"{self.timeout_s:g}s"))

    def _fail(self, message: str) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.abort()
        while self._pending:
            fut, timer = self._pending.popleft()
            if timer is not None:
                timer.cancel()
            if not fut.done():
                fut.set_exception(RespError(message))

    async def close(self) -> None:
        self._fail("client closed")
