"""`taxiway backend`: a small, fast HTTP/1.1 app server for demos, tests and benchmarks.

Why not a WSGI app under gunicorn: benchmarks compare proxies, so the backend must not be the
bottleneck (this one does tens of thousands of requests/s on one core), and tests need endpoints
that misbehave on purpose (delays, arbitrary statuses, large streamed bodies, failing health).

Endpoints (every response carries `X-Backend: NAME`):
  /healthz           200 "ok" (503 with --fail-healthz)
  /delay/<ms>        answers after <ms> milliseconds (requests wait on I/O, not CPU)
  /status/<code>     answers with that status
  /bytes/<n>         n bytes with Content-Length, streamed with back-pressure
  /chunked/<n>       n bytes, chunked
  /echo              streams the request body back (chunked)
  /sink              reads the whole body, answers its length
  /headers           JSON object of the request headers as received
  anything else      200 "hello from NAME"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from email.utils import formatdate

import httptools

from taxiway.errors import UsageError

HELP = "Run a small built-in HTTP/1.1 test server (for demos, tests and benchmarks)."

_CHUNK = b"x" * 65536


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--name", default=None, help="name reported in X-Backend (default host:port)")
    p.add_argument("--delay-ms", type=float, default=0.0, help="add this delay to every response")
    p.add_argument("--fail-healthz", action="store_true", help="answer /healthz with 503")
    p.add_argument("--boot-ms", type=float, default=0.0,
                   help="wait this long before listening (an app that takes time to start)")


class _Conn(asyncio.Protocol):
    """One client connection; requests are answered strictly in order (pipelining safe)."""

    def __init__(self, app: _App) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[tuple | None] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: asyncio.Queue[bytes | None] | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.worker = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.queue.put_nowait(None)
        if self.body is not None:
            self.body.put_nowait(None)
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n"
                                 b"connection: close\r\n\r\n")
            self.transport.close()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    # -- parser callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.body = asyncio.Queue()
        self.queue.put_nowait((self.parser.get_method(), self.url, self.headers, self.body,
                               self.parser.should_keep_alive()))

    def on_body(self, body: bytes) -> None:
        assert self.body is not None
        self.body.put_nowait(body)
        if self.body.qsize() > 16 and self.transport is not None:
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        assert self.body is not None
        self.body.put_nowait(None)

    # -- request handling
    async def _read_body(self, body: asyncio.Queue[bytes | None]):  # type: ignore[no-untyped-def]
        while True:
            chunk = await body.get()
            if body.qsize() < 4 and self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
            if chunk is None:
                return
            yield chunk

    async def _serve(self) -> None:
        assert self.transport is not None
        t = self.transport
        while True:
            item = await self.queue.get()
            if item is None or t.is_closing():
                return
            method, url, headers, body, keep_alive = item
            try:
                await self._handle(method, url, headers, body, keep_alive)
            except (ConnectionError, RuntimeError):
                t.close()
                return
            if not keep_alive:
                t.close()
                return

    def _head(self, status: int, extra: list[tuple[bytes, bytes]], keep_alive: bool) -> bytes:
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Status")),
                 b"x-backend: " + self.app.name + b"\r\n", b"date: " + self.app.date() + b"\r\n"]
        lines += [n + b": " + v + b"\r\n" for n, v in extra]
        if not keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _handle(self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]],
                      body: asyncio.Queue[bytes | None], keep_alive: bool) -> None:
        assert self.transport is not None
        t = self.transport
        path = url.split(b"?", 1)[0]
        parts = path.strip(b"/").split(b"/")
        delay = self.app.delay_s
        if parts[0] == b"delay" and len(parts) > 1 and parts[1].isdigit():
            delay += int(parts[1]) / 1000
        if parts[0] == b"echo":
            t.write(self._head(200, [(b"transfer-encoding", b"chunked")], keep_alive))
            async for chunk in self._read_body(body):
                t.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await self.can_write.wait()
            t.write(b"0\r\n\r\n")
            return
        received = 0
        async for chunk in self._read_body(body):
            received += len(chunk)
        if delay:
            await asyncio.sleep(delay)
        if parts[0] == b"healthz":
            status = 503 if self.app.fail_healthz else 200
            payload = b"failing" if self.app.fail_healthz else b"ok"
        elif parts[0] == b"status" and len(parts) > 1 and parts[1].isdigit():
            status, payload = int(parts[1]), b"status %s" % parts[1]
        elif parts[0] == b"sink":
            status, payload = 200, b"%d" % received
        elif parts[0] == b"headers":
            status = 200
            payload = json.dumps([[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]).encode()
        elif parts[0] in (b"bytes", b"chunked") and len(parts) > 1 and parts[1].isdigit():
            await self._stream(int(parts[1]), chunked=parts[0] == b"chunked", keep_alive=keep_alive,
                               head_only=method == b"HEAD")
            return
        else:
            status, payload = 200, b"hello from " + self.app.name + b"\n"
        extra = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(payload))]
        if status in (204, 304) or 100 <= status < 200:
            extra = []
            payload = b""
        t.write(self._head(status, extra, keep_alive) + (b"" if method == b"HEAD" else payload))

    async def _stream(self, n: int, chunked: bool, keep_alive: bool, head_only: bool) -> None:
        assert self.transport is not None
        t = self.transport
        framing = (b"transfer-encoding", b"chunked") if chunked else (b"content-length", b"%d" % n)
        t.write(self._head(200, [(b"content-type", b"application/octet-stream"), framing], keep_alive))
        if head_only:
            return
        left = n
        while left > 0:
            piece = _CHUNK if left >= len(_CHUNK) else _CHUNK[:left]
            t.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            left -= len(piece)
            await self.can_write.wait()
            if t.is_closing():
                raise ConnectionError("client went away")
        if chunked:
            t.write(b"0\r\n\r\n")


_REASONS = {200: b"OK", 201: b"Created", 204: b"No Content", 301: b"Moved Permanently", 302: b"Found",
            304: b"Not Modified", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
            404: b"Not Found", 429: b"Too Many Requests", 500: b"Internal Server Error",
            502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout"}


class _App:
    def __init__(self, name: str, delay_s: float, fail_healthz: bool) -> None:
        self.name = name.encode()
        self.delay_s = delay_s
        self.fail_healthz = fail_healthz
        self._date = b""
        self._date_at = -1

    def date(self) -> bytes:
        """The Date header, formatted once per second (formatting per request is measurable)."""
        now = int(asyncio.get_running_loop().time())
        if now != self._date_at:
            self._date_at = now
            self._date = formatdate(usegmt=True).encode()
        return self._date


async def serve(host: str, port: int, name: str, delay_s: float = 0.0, fail_healthz: bool = False) -> None:
    loop = asyncio.get_running_loop()
    app = _App(name, delay_s, fail_healthz)
    server = await loop.create_server(lambda: _Conn(app), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"taxiway backend {name}: listening on http://{host}:{bound}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def run(args: argparse.Namespace) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep the backend usable anyway
        uvloop = None  # type: ignore[assignment]
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port: expected 0..65535 (got {args.port})")
    if args.delay_ms < 0:
        raise UsageError(f"--delay-ms: expected a delay >= 0 (got {args.delay_ms:g})")
    if args.boot_ms < 0:
        raise UsageError(f"--boot-ms: expected a delay >= 0 (got {args.boot_ms:g})")
    if args.boot_ms:
        time.sleep(args.boot_ms / 1000)   # (before the port is bound: nothing answers yet)
    name = args.name or f"{args.host}:{args.port}"
    runner = uvloop.run if uvloop else asyncio.run
    try:
        runner(serve(args.host, args.port, name, args.delay_ms / 1000, args.fail_healthz))
    except OSError as exc:
        why = exc.strerror or exc
        raise UsageError(f"backend: cannot listen on {args.host}:{args.port}: {why}") from None
    return 0


if __name__ == "__main__":  # `python -m taxiway.testing.backend --port 9001`
    parser = argparse.ArgumentParser(description=HELP)
    add_arguments(parser)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        raise SystemExit(run(parser.parse_args()))
    except UsageError as exc:
        print(f"taxiway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
