"""The admin listener: `GET /status` (JSON) and `GET /metrics` (Prometheus) on a separate port.

Why a small hand-written server on `asyncio.start_server` and not the proxy's protocol: this is not
a hot path (a scrape every few seconds), it must keep working when the proxy is saturated, and it
must never share state with the request path beyond reading counters. It speaks a strict subset of
HTTP/1.1: GET/HEAD only, no request bodies, keep-alive, a bounded request head and timeouts, so a
misbehaving client costs one small task and nothing else.

Bind it to loopback (the default `admin.listen = "127.0.0.1:9901"`): /status names every server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

# 0.0.4 text format: what generate_latest writes and every Prometheus 2.x/3.x scraper accepts.
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as METRICS_CONTENT_TYPE

from taxiway.admin.metrics import make_registry, render
from taxiway.admin.status import build_status

log = logging.getLogger("taxiway.admin")

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_S = 10.0     # whole request head, like the proxy's client_header default
IDLE_TIMEOUT_S = 30.0     # keep-alive between requests
LINGER_S = 2.0            # after an error answer, drain client input this long (nginx: lingering_time 30s)
LINGER_MAX_BYTES = 1 << 20

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 413: "Content Too Large", 431: "Request Header Fields Too Large",
            500: "Internal Server Error"}


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """Request line and headers of one request head (without the final CRLF CRLF)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise _BadRequest(400, "undecodable request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[1].startswith("/") or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise _BadRequest(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise _BadRequest(400, "malformed header line")
        headers[name.lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers


async def _lingering_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then read and drop what the client still sends (briefly) before closing.

    Closing a socket with unread input makes the kernel send RST, and the client may then lose the
    error response it has not read yet (nginx's `lingering_close` exists for the same reason).
    """
    with contextlib.suppress(Exception):
        if writer.can_write_eof():
            writer.write_eof()
        deadline = asyncio.get_running_loop().time() + LINGER_S
        drained = 0
        while drained < LINGER_MAX_BYTES:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            data = await asyncio.wait_for(reader.read(65536), remaining)
            if not data:
                break
            drained += len(data)


class AdminServer:
    """Serves one balancer's /status and /metrics.

    Called by `Balancer.start()` (`await AdminServer(b).start(host, port)`) and `Balancer.stop()`
    (`await admin.close()`).
    """

    def __init__(self, balancer: Any) -> None:
        self.balancer = balancer
        self.registry = make_registry(balancer)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (port 0 picks a free one). Returns the bound port.

        Raises OSError if the address is taken; the caller should report it and exit.
        """
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD_BYTES,
                                                  reuse_address=True)
        bound = self._server.sockets[0].getsockname()[1]
        log.info("admin API on http://%s:%d (/status, /metrics)", host, bound)
        return int(bound)

    async def close(self) -> None:
        """Stop listening and close open admin connections."""
        if self._server is not None:
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    # -- one connection ------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            first = True
            while True:
                timeout = HEAD_TIMEOUT_S if first else IDLE_TIMEOUT_S
                first = False
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
                except asyncio.IncompleteReadError:
                    return  # client closed
                except asyncio.LimitOverrunError:
                    await self._send(writer, 431, b"request head too large\n", "text/plain", close=True)
                    await _lingering_close(reader, writer)
                    return
                except TimeoutError:
                    return
                try:
                    method, target, version, headers = _parse_head(head[:-4])
                except _BadRequest as exc:
                    await self._send(writer, exc.status, f"{exc}\n".encode(), "text/plain", close=True)
                    await _lingering_close(reader, writer)
                    return
                if "transfer-encoding" in headers or headers.get("content-length", "0") not in ("", "0"):
                    await self._send(writer, 413, b"the admin API takes no request bodies\n",
                                     "text/plain", close=True)
                    await _lingering_close(reader, writer)
                    return
                close = version == "HTTP/1.0" or headers.get("connection", "").lower() == "close"
                status, body, ctype, extra = self._route(method, target)
                await self._send(writer, status, body, ctype, close=close, head_only=method == "HEAD",
                                 extra=extra)
                if close:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _route(self, method: str, target: str) -> tuple[int, bytes, str, list[tuple[str, str]]]:
        path = target.split("?", 1)[0]
        if path not in ("/status", "/metrics", "/"):
            return 404, b"not found: try /status or /metrics\n", "text/plain; charset=utf-8", []
        if method not in ("GET", "HEAD"):
            return 405, b"method not allowed: use GET\n", "text/plain; charset=utf-8", \
                [("Allow", "GET, HEAD")]
        try:
            if path == "/metrics":
                return 200, render(self.registry), METRICS_CONTENT_TYPE, []
            if path == "/":
                return 200, b"taxiway admin API: /status (JSON), /metrics (Prometheus)\n", \
                    "text/plain; charset=utf-8", []
            status = build_status(self.balancer, time.monotonic(), time.time())
            body = json.dumps(status, indent=1, default=str).encode() + b"\n"
            return 200, body, "application/json", []
        except Exception:  # a bug here must not kill the admin listener; log it, answer 500
            log.exception("admin API failed to answer %s %s", method, path)
            return 500, b"internal error (see the balancer's log)\n", "text/plain; charset=utf-8", []

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str, *, close: bool,
                    head_only: bool = False, extra: list[tuple[str, str]] | None = None) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
                 f"Content-Type: {ctype}", f"Content-Length: {len(body)}", "Cache-Control: no-store"]
        lines += [f"{k}: {v}" for k, v in extra or []]
        if close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        writer.write(head if head_only else head + body)
        await writer.drain()
