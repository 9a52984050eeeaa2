"""The admin listener: `GET /status` (JSON) and `GET /metrics` (Prometheus) on a separate port.

Why a small hand-written server on `asyncio.start_server` and not the proxy's protocol: this is not
a hot path (a scrape every few seconds), it must keep working when the proxy is saturated, and it
must never share state with the request path beyond reading counters. It speaks a strict subset of
HTTP/1.1: GET/HEAD only, no request bodies, keep-alive, a bounded request head and timeouts, so a
misbehaving client costs one small task and nothing else.

Bind it to loopback (the default `admin.listen = "127.0.0.1:9901"`): /status names every server.
Any other address gets a WARNING at start: the API has no authentication.

Every request's `Host` must name us by address (an IPv4 literal, a bracketed IPv6 literal, or
`localhost`, any port) or by a name in `allowed_hosts`; anything else gets 421. This is the
defence against DNS rebinding: a web page on `evil.example` re-points its own name at 127.0.0.1,
and the victim's browser then sends its scripts' requests, with `Host: evil.example`, to the
loopback listener, and lets the page read the answers (same origin). A browser always sends the
name the page used, so refusing names we were not told about closes that hole. An HTTP/1.1
request without Host (or with two) is malformed: 400 (RFC 9112 §3.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Iterable

# 0.0.4 text format: what generate_latest writes and every Prometheus 2.x/3.x scraper accepts.
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as METRICS_CONTENT_TYPE

from taxiway.admin.metrics import make_registry, render
from taxiway.admin.status import BalancerView, build_status
from taxiway.config import AdminConfig, split_hostport

log = logging.getLogger("taxiway.admin")

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_S = 10.0     # whole request head, like the proxy's client_header default
IDLE_TIMEOUT_S = 30.0     # keep-alive between requests
LINGER_S = 2.0            # after an error answer, drain client input this long (nginx: lingering_time 30s)
LINGER_MAX_BYTES = 1 << 20

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 413: "Content Too Large", 421: "Misdirected Request",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}

# Names that cannot be rebound: localhost resolves to loopback without DNS (RFC 6761 §6.3).
LOCAL_HOST_NAMES = frozenset({"localhost"})


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
        key = name.lower()
        if key == "host" and key in headers:
            raise _BadRequest(400, "more than one Host header")
        headers[key] = value.strip()
    return parts[0], parts[1], parts[2], headers


def host_status(host: str | None, version: str, allowed_names: frozenset[str] = frozenset()) -> int | None:
    """Whether the admin API answers a request with this `Host`: None (yes) or the status to refuse with.

    Args:
        host: the Host header value, or None when there is none.
        version: "HTTP/1.1" or "HTTP/1.0" (1.0 clients may omit Host).
        allowed_names: extra lower-case host names to accept (besides IP literals and localhost).
    Returns:
        None to answer; 400 when Host is missing on HTTP/1.1 or is not a valid `host[:port]`; 421
        (Misdirected Request, RFC 9110 §15.5.20) for a well-formed name we were not told about.
        Why 421 and not 403: nothing is forbidden to the client; the request reached a server that
        does not serve that name. A name that resolves to us through DNS rebinding is not one we
        serve, and 421 says exactly that (and lets a client retry with the right authority).
    """
    if host is None:
        return 400 if version == "HTTP/1.1" else None
    # 1. Bracketed IPv6 literal, optional port: "[::1]:9901".
    if host.startswith("["):
        literal, bracket, port = host[1:].partition("]")
        if not bracket or not _is_port(port, allow_absent=True):
            return 400
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return 400
        return None
    # 2. Name or IPv4 literal, optional port. More than one ":" is an unbracketed IPv6 address.
    name, colon, digits = host.partition(":")
    if not name or not _is_port(colon + digits, allow_absent=True):
        return 400
    try:
        ipaddress.IPv4Address(name)
        return None
    except ValueError:
        pass
    lowered = name.lower()
    if lowered in LOCAL_HOST_NAMES or lowered in allowed_names:
        return None
    return 421


def _is_port(text: str, *, allow_absent: bool) -> bool:
    """`:digits` (RFC 3986 `port = *DIGIT`, so `:` alone too), or "" when a port may be absent."""
    if not text:
        return allow_absent
    digits = text[1:]
    return text[0] == ":" and len(digits) <= 5 and (not digits or (digits.isascii() and digits.isdigit()))


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ::ffff:127.x.y.z; False for wildcards, other addresses and names."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


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

    Started by the commands beside their balancer (`serve_admin`), not by the balancer: it reads
    the balancer through `BalancerView` only, and the balancer knows nothing of it.
    """

    def __init__(self, balancer: BalancerView, allowed_hosts: Iterable[str] = ()) -> None:
        self.balancer = balancer
        # Host names (besides IP literals and localhost) requests may carry; see the module docstring.
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.registry = make_registry(balancer)
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.port: int | None = None   # once listening

    async def start(self, host: str, port: int, sock: socket.socket | None = None,
                    accept: bool = True) -> int:
        """Listen on host:port (port 0 picks a free one), or on `sock`, a listening socket a
        predecessor handed over. Returns the bound port. `accept=False` waits for `accept_now`.

        Raises OSError if the address is taken; the caller should report it and exit.
        """
        if sock is not None:
            self._server = await asyncio.start_server(self._handle, sock=sock, limit=MAX_HEAD_BYTES,
                                                      start_serving=accept)
        else:
            self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD_BYTES,
                                                      reuse_address=True, start_serving=accept)
        bound = self._server.sockets[0].getsockname()[1]
        log.info("admin API on http://%s:%d (/status, /metrics)", host, bound)
        # Judged on the addresses really bound ("" and names can mean several), not on `host`.
        exposed = sorted({str(sock.getsockname()[0]) for sock in self._server.sockets
                          if not is_loopback(str(sock.getsockname()[0]))})
        if exposed:
            log.warning("admin API listens on %s port %d: it is reachable from the network and has no "
                        "authentication; /status and /metrics expose internals (server addresses, "
                        "counters, events). Bind admin.listen to 127.0.0.1 or firewall the port.",
                        ", ".join(exposed), bound)
        self.port = int(bound)
        return self.port

    async def accept_now(self) -> None:
        if self._server is not None and not self._server.is_serving():
            await self._server.start_serving()

    def fileno(self) -> int | None:
        """The listening socket's descriptor, for a successor to inherit."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].fileno())

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
                refused = host_status(headers.get("host"), version, self.allowed_hosts)
                if refused is not None:
                    msg = b"missing or malformed Host header\n" if refused == 400 else \
                        b"misdirected request: this admin API answers to its IP address or localhost only\n"
                    await self._send(writer, refused, msg, "text/plain", close=True)
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


async def serve_admin(balancer: BalancerView, cfg: AdminConfig, sock: socket.socket | None = None,
                      accept: bool = True) -> AdminServer | None:
    """The admin listener `taxiway lb` and `taxiway up` start beside their balancer, once its
    own listeners are bound (None when `admin.listen` is empty). Raises OSError when the address
    is taken; the command names the setting."""
    if not cfg.listen:
        return None
    admin = AdminServer(balancer, cfg.allowed_hosts)
    host, port = split_hostport(cfg.listen, "admin.listen")
    await admin.start(host, port, sock, accept)
    return admin
