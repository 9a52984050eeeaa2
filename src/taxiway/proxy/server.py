"""Client side: one asyncio Protocol per downstream connection, httptools request parser.

Rules of this module (driver, uvicorn's httptools protocol made stricter):
1. Callbacks do O(1) work and never await. No task per request: the `Exchange` (forward.py) is a
   chain of callbacks between this protocol and an upstream connection.
2. Responses leave in request order. A pipelined request parsed while another is in flight is
   queued (its body buffered, reading paused) and started when the one ahead has finished.
3. Output produced while handling one read is collected in `wbuf` and written with one
   `writelines` (one syscall) by `flush()` after the parser returns.
4. Timers are deadlines checked by the balancer's tick (`check_timers`), not a `call_later` per
   request: the header deadline starts with the first byte of a request and data does not extend
   it (slowloris); the idle deadline closes a quiet keep-alive connection silently.
5. Reading pauses for several reasons at once (bit mask, PAUSE_* in forward.py); it resumes only
   when all of them are gone. Client write pressure is reported to the exchange, which pauses
   its upstream's reading.
6. After an Upgrade request, bytes from the client are held (reading paused) until the server
   answers 101; on any other answer they are dropped with the connection, never forwarded.
7. The request head is bounded by `limits.max_header_bytes` as bytes arrive, not only when a
   field completes: a header line that never ends costs one 431, not the event loop.
8. Connection limits are the balancer's (`admit` / `release`). A TLS connection was admitted by
   the HTTPS acceptor before its handshake (`admitted=True`), so it is not counted twice.
9. What this module needs of the balancer is `ListenerContext` (declared here, `app.Balancer`
   derives from it); of an exchange, its public methods and the fields it reports. It is the
   `forward.Downstream` every exchange writes to.
10. Two paths read a head. The fast one: llhttp parses and checks every byte without a callback
   per field, and `on_headers_complete` reads the head it accepted from the bytes themselves
   (`headscan.scan`), so the fields that need no change are forwarded as they came; for that it
   knows where each message starts (heads and Content-Length bodies have known ends). The general
   one (`FieldCallbacks`, every field through `on_field`, as before the fast path existed) takes
   over a connection for good at a head the scanner does not read (anything but plain and
   strict) and at a chunked request (its trailers are fields too, and its end is llhttp's to
   find): it re-reads that head from its first byte, so both see the same request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import monotonic  # (a module attribute lookup less per call, compiled)
from typing import Any, Final, cast

import httptools

from taxiway.errors import RequestRefused
from taxiway.proxy.forward import (
    PAUSE_BUFFER,
    PAUSE_DONE,
    PAUSE_PIPELINE,
    PAUSE_UPGRADE,
    PAUSE_UPSTREAM,
    RESPONDING,
    Downstream,
    Exchange,
    ProxyContext,
    client_keeps,
)
from taxiway.proxy.headscan import fields, scan
from taxiway.proxy.http1 import ConnContext, RequestHead, RequestInfo, error_response

UPGRADE_HOLD_MAX_BYTES: Final = 64 * 1024   # client bytes held while an upgrade is answered
# Bytes queued for a client before its upstream stops being read (HAProxy's 16k buffers; nginx's
# busy buffers 8-16k): with one upstream read (64 KiB) on top, what a slow reader can pin.
CLIENT_WRITE_HIGH_BYTES: Final = 16 * 1024



class _GeneralPath(Exception):
    """Raised by the fast path's head callback: this head goes through the field callbacks."""


class FieldCallbacks:
    """The general path's parser callbacks (rule 10). httptools reports every field of every head
    to an object that has `on_header`, so the client protocol has none and gives this one to the
    parser of a connection that needs them."""

    __slots__ = ("proto",)

    def __init__(self, proto: ClientProtocol) -> None:
        self.proto = proto

    def on_message_begin(self) -> None:
        self.proto.begin_fields()

    def on_url(self, url: bytes) -> None:
        self.proto.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.proto.on_field(name, value)

    def on_headers_complete(self) -> None:
        self.proto.on_fields_complete()

    def on_body(self, body: bytes) -> None:
        self.proto.on_body(body)

    def on_message_complete(self) -> None:
        self.proto.on_message_complete()


class ListenerContext(ProxyContext):
    """What a client connection needs of the balancer beyond what its requests share: the
    connection limits and the set of open connections (the tick checks their timers, a stop
    closes them). `app.Balancer` derives from it."""

    protocols: set[ClientProtocol]
    paused_writers: int     # client connections whose reading made taxiway wait

    def admit(self, ip: str) -> bool:
        """Count a new connection from `ip`, or refuse it (False: the caller closes it)."""
        raise NotImplementedError

    def release(self, ip: str) -> None:
        """An admitted connection is gone."""
        raise NotImplementedError


class ClientProtocol(Downstream):
    """One client connection. Created by the listener for every accepted socket."""

    # Slots: thousands of idle keep-alive connections each hold one of these.
    __slots__ = (
        "_began",
        "_conn_header", "_data", "_fed", "_general", "_head_buf", "_head_seen", "_header_bytes",
        "_headers", "_in_head", "_next_msg", "_refuse_head", "_refuse_status", "_replay", "_url",
        "admitted", "bal", "body_deadline", "client_ip", "closed", "closing", "ctx", "current",
        "dead", "header_deadline", "held", "https", "idle_deadline", "parser", "parsing", "paused",
        "pipeline", "redirect_https", "scheme", "transport", "tunnel_ex", "upgrade_ex", "wbuf",
        "wbuf_big", "write_paused",
    )

    def __init__(self, bal: ListenerContext, scheme: str,
                 redirect_https: Callable[[RequestHead], bytes] | None = None,
                 admitted: bool = False) -> None:
        # Shared
        self.bal = bal
        self.scheme = scheme
        self.https = scheme == "https"
        self.redirect_https = redirect_https
        # Per-connection
        self.transport: asyncio.Transport | None = None
        # The fast path's parser: no field callbacks (this class has no `on_header`), the head
        # is read from the bytes once llhttp accepted it (rule 10).
        self.parser = httptools.HttpRequestParser(self)
        self.ctx: ConnContext | None = None
        self.client_ip = ""
        self.current: Exchange | None = None          # the request whose response is being sent
        self.pipeline: list[Exchange | int] = []  # later requests (int: a refusal status); short
        self.parsing: Exchange | None = None          # the request whose body is being read
        self.tunnel_ex: Exchange | None = None
        # An Upgrade request waiting for its answer, and the client bytes that followed it.
        self.upgrade_ex: Exchange | None = None
        self.held: list[bytes] = []
        self.paused = 0
        self.write_paused = False
        self.closing = False
        self.closed = False
        self.dead = False                             # the parser failed or the client said close
        self.wbuf: list[bytes] = []
        self.wbuf_big = False
        self.header_deadline = 0.0
        self.idle_deadline = 0.0
        self.body_deadline = 0.0
        self.admitted = admitted   # counted by Balancer.admit (released in connection_lost)
        # Per-request (the head being parsed)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._refuse_status = 0
        self._conn_header = False   # the head has a Connection field (see on_headers_complete)
        self._refuse_head = False   # the head being refused is a HEAD request's
        self._in_head = False       # between the first byte of a request and the end of its head
        self._began = False         # a message began in the read being parsed
        self._head_seen = 0         # bytes of whole reads that fell inside the head
        # Where the fast path finds the head's bytes (rule 10): the read being parsed, the stream
        # offset of its first byte, the offset where the next message starts (the end of the
        # current one: heads and Content-Length bodies only), the earlier reads of an unfinished
        # head, and the bytes the general path re-reads when a head needs it.
        self._data = b""
        self._fed = 0
        self._next_msg = 0
        self._head_buf = b""
        self._replay: bytes | None = None
        self._general = False       # this connection's heads go through the field callbacks

    # -- asyncio callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Called by the listener for every accepted connection."""
        tr = self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        bal = self.bal
        s = bal.settings
        peer = transport.get_extra_info("peername")
        ip = peer[0] if peer else "unknown"
        self.client_ip = ip
        if not self.admitted:
            if not bal.admit(ip):
                self.closed = True
                tr.abort()
                return
            self.admitted = True
        tr.set_write_buffer_limits(high=CLIENT_WRITE_HIGH_BYTES)
        self.ctx = ConnContext(ip, self.scheme, s.is_trusted(ip), s.is_trusted)
        self.header_deadline = monotonic() + s.client_header_s
        bal.protocols.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Called by the loop when the client closed or the connection broke."""
        self.closed = True
        bal = self.bal
        bal.protocols.discard(self)
        if self.admitted:
            self.admitted = False
            bal.release(self.client_ip)
        if self.write_paused:
            self.write_paused = False
            bal.paused_writers -= 1
        ex = self.current
        self.current = None
        if ex is not None:
            if self.tunnel_ex is ex:
                ex.end_tunnel()
            else:
                ex.abort()
        self.pipeline.clear()

    def data_received(self, data: bytes) -> None:
        tex = self.tunnel_ex
        if tex is not None:
            tex.on_tunnel_client_data(data)
            return
        if self.upgrade_ex is not None:
            self._hold(data)
            return
        if self.dead:
            return
        in_head = self._in_head
        ex = self.parsing
        moved = ex.body_in if ex is not None and ex.info.chunked else -1
        self._began = False
        self._data = data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._on_upgrade(data[exc.args[0]:])
        except httptools.HttpParserError:
            if self._replay is not None:
                self._take_general_path()
            else:
                self._on_client_error(self._refuse_status or 400)
        else:
            if in_head and self._in_head and not self._began:
                # The whole read belonged to one unfinished head (a read in which a message
                # began is not counted: part of it was the previous message).
                self._count_unreported(len(data))
            elif moved >= 0 and self.parsing is ex and ex is not None:
                # A chunked body: reads that move no body byte (chunk-size lines, extensions,
                # the trailer section) are bounded like a head.
                if ex.body_in == moved:
                    self._count_unreported(len(data))
                else:
                    self._head_seen = 0
            if self._in_head and not self._general:
                # An unfinished head: keep its bytes for `on_headers_complete` (bounded by rule 7).
                if in_head and not self._began:
                    self._head_buf += data
                else:
                    self._head_buf = data[max(self._next_msg - self._fed, 0):]
        self._fed += len(data)
        self._data = b""
        if self.wbuf:
            self.flush()

    def _take_general_path(self) -> None:
        """A head the fast path does not read (see headscan.py) or a chunked request (its
        trailers are fields too): from this head on, the connection's heads go through a parser
        with field callbacks, which re-reads this one from its first byte."""
        replay = self._replay
        assert replay is not None
        self._replay = None
        self._general = True
        self._head_buf = b""
        self.parser = httptools.HttpRequestParser(FieldCallbacks(self))
        try:
            self.parser.feed_data(replay)
        except httptools.HttpParserUpgrade as exc:
            self._on_upgrade(replay[exc.args[0]:])
        except httptools.HttpParserError:
            self._on_client_error(self._refuse_status or 400)

    def _count_unreported(self, n: int) -> None:
        """Count `n` bytes httptools has not reported as anything yet (it reports a field only
        when it ends, and grows it by concatenation until then): past `limits.max_header_bytes`,
        431 (rule 7)."""
        total = self._head_seen = self._head_seen + n
        if total > self.bal.settings.max_header_bytes:
            self._on_client_error(431)

    def pause_writing(self) -> None:
        """Called by the transport when the client reads slower than we write."""
        if not self.write_paused:
            self.bal.paused_writers += 1
        self.write_paused = True
        ex = self.current
        if ex is not None:
            ex.on_client_write_blocked(True)

    def resume_writing(self) -> None:
        """Called by the transport when the client's buffer drained below the low-water mark."""
        if self.write_paused:
            self.bal.paused_writers -= 1
        self.write_paused = False
        ex = self.current
        if ex is not None:
            ex.on_client_write_blocked(False)

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._refuse_status = 0
        self._refuse_head = False
        self._began = True
        self._in_head = True
        self._head_seen = 0
        self.idle_deadline = 0.0
        if not self.header_deadline:
            self.header_deadline = monotonic() + self.bal.settings.client_header_s

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.bal.settings.max_header_bytes:
            self._refuse_status = 414
            raise RequestRefused(414, "request target too long")

    def on_headers_complete(self) -> None:
        """The fast path (rule 10): llhttp accepted the head; read it from its bytes."""
        data = self._data
        start = self._next_msg - self._fed
        if start >= 0:
            buf = data
            pos = start
        else:   # (it began in an earlier read; empty lines before it were not kept)
            buf = self._head_buf + data
            pos = 0
        self._head_buf = b""
        bal = self.bal
        s = bal.settings
        rewriter = s.request_rewriter
        found = scan(buf, pos, rewriter.name_table)
        if found is None:
            self._replay = buf[pos:]
            raise _GeneralPath()
        fields_start, head_end, count, field_bytes, version, cands, suspect = found
        self.header_deadline = 0.0
        self._in_head = False
        method = self.parser.get_method()
        self._refuse_head = method == b"HEAD"
        if field_bytes > s.max_header_bytes:
            self._refuse_status = 431
            raise RequestRefused(431, "request head too large")
        if count > s.max_headers:
            self._refuse_status = 431
            raise RequestRefused(431, "too many header fields")
        if version == 11:
            http_version = "1.1"
        elif version == 10:
            http_version = "1.0"
        else:
            http_version = ""
        headers: list[tuple[bytes, bytes]] | None = None
        assert self.ctx is not None
        try:
            self._check_request_line(method, http_version)
            origin_form = self._url[:1] == b"/" or self._url == b"*"
            found_info = rewriter.rewrite_raw(method, self._url, buf, fields_start, head_end, cands,
                                              suspect, version == 11, self.ctx) if origin_form else None
            if found_info is None:
                # A field the raw path leaves to the general rewriter, or an absolute-form target
                # (its authority replaces Host): the field list, then `rewrite`.
                self._headers = fields(buf, fields_start, head_end - 2)
                if not origin_form:
                    self._to_origin_form()
                headers = self._headers
                found_info = rewriter.rewrite(method, self._url, headers, version == 11, self.ctx)
            info = found_info
        except RequestRefused as exc:
            self._refuse_status = exc.status
            raise
        if info.chunked:
            self._replay = buf[pos:]
            raise _GeneralPath()
        # The next message starts after this one's body (a stream offset: `buf` may begin
        # with bytes of earlier reads).
        self._next_msg = self._fed + head_end - (len(buf) - len(data)) + max(info.content_length, 0)
        head = RequestHead(method.decode("ascii"), self._url, headers, info.client_ip or self.client_ip,
                           self.scheme, http_version, buf, fields_start, head_end - 2)
        self._start(method, head, info, version == 11)

    # The general path's callbacks (FieldCallbacks calls them): every field through `on_field`.

    def begin_fields(self) -> None:
        self.on_message_begin()
        self._headers = []
        self._header_bytes = 0
        self._conn_header = False

    def on_field(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        n = len(name)
        if (n == 10 or n == 16) and name.lower() in (b"connection", b"proxy-connection"):
            self._conn_header = True   # (llhttp reads Proxy-Connection like Connection)
        n = self._header_bytes = self._header_bytes + n + len(value) + 4
        # The byte limit bounds memory while the head streams in; the count is checked once, at
        # the end of the head (the answer is the same 431).
        if n > self.bal.settings.max_header_bytes:
            self._refuse_status = 431
            raise RequestRefused(431, "request head too large")

    def on_fields_complete(self) -> None:
        self.header_deadline = 0.0
        self._in_head = False
        parser = self.parser
        method = parser.get_method()
        # A refusal of a whole, valid head answers HEAD without a body (a malformed request line
        # that starts with HEAD is no HEAD request).
        self._refuse_head = method == b"HEAD"
        bal = self.bal
        if len(self._headers) > bal.settings.max_headers:
            self._refuse_status = 431
            raise RequestRefused(431, "too many header fields")
        # Without a Connection field llhttp keeps HTTP/1.1 alive and nothing older: that is the
        # version, without get_http_version's string formatting (the usual request).
        version = "1.1" if not self._conn_header and parser.should_keep_alive() else parser.get_http_version()
        if version != "1.1" and version != "1.0":
            version = ""
        http11 = version == "1.1"
        assert self.ctx is not None
        try:
            self._check_request_line(method, version)
            if self._url[:1] != b"/" and self._url != b"*":
                self._to_origin_form()
            info = bal.settings.request_rewriter.rewrite(method, self._url, self._headers, http11, self.ctx)
        except RequestRefused as exc:
            self._refuse_status = exc.status
            raise
        head = RequestHead(method.decode("ascii"), self._url, self._headers,
                           info.client_ip or self.client_ip, self.scheme, version)
        if info.chunked:
            # Header fields after a chunked body are trailers: collect them apart from the head
            # (which routing and retries read), for `on_message_complete`.
            self._headers = []
        self._start(method, head, info, http11)

    def _check_request_line(self, method: bytes, version: str) -> None:
        """What both paths refuse about the request line (version "": neither 1.1 nor 1.0)."""
        if method == b"CONNECT":
            raise RequestRefused(405, "CONNECT is not proxied")
        if not version:
            # llhttp also reads HTTP/0.9 and HTTP/2.0 request lines; neither is spoken here.
            raise RequestRefused(505, "HTTP version not supported")
        if self._url == b"*" and method != b"OPTIONS":
            # (RFC 9112 §3.2.4: asterisk-form is for OPTIONS only)
            raise RequestRefused(400, "asterisk-form target for a method other than OPTIONS")

    def _start(self, method: bytes, head: RequestHead, info: RequestInfo, http11: bool) -> None:
        """A request's head is read: its exchange starts now, or after the ones ahead (rule 2)."""
        bal = self.bal
        keep_alive = client_keeps(http11, info.close, info.keep_alive, info.upgrade)   # (rule 6)
        ex = Exchange(self, bal, head, info, method, keep_alive, http11)
        self.parsing = ex
        now = monotonic()
        if info.chunked or info.content_length > 0:
            self.body_deadline = now + bal.settings.client_body_s
        if self.current is None:
            self.current = ex
            ex.start(now)
        else:
            self.pipeline.append(ex)
            self.pause_reading(PAUSE_PIPELINE)

    def _to_origin_form(self) -> None:
        """An absolute-form target (`GET http://host/path`): forward origin-form and make Host the
        URI's authority (RFC 9112 §3.2.2), so no two readers disagree about the host."""
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            self._refuse_status = 400
            raise RequestRefused(400, "bad request target") from None
        # Read untyped: httptools' stubs say `port: int` and `path: bytes`, but either may be None,
        # and the compiled build checks declared types (a None port was a silent 400 there).
        parsed: Any = url
        host: bytes | None = parsed.host
        if not host or parsed.schema not in (b"http", b"https"):
            self._refuse_status = 400
            raise RequestRefused(400, "bad request target")
        port: int | None = parsed.port
        path: bytes | None = parsed.path
        query: bytes | None = parsed.query
        target = path or b"/"
        if query:
            target += b"?" + query
        self._url = target
        if b":" in host:
            host = b"[" + host + b"]"   # (httptools gives an IPv6 literal without its brackets)
        authority = host + (b":%d" % port if port else b"")
        self._headers = [(n, v) for n, v in self._headers if n.lower() != b"host"] + [(b"Host", authority)]

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is None:
            return
        s = self.bal.settings
        if s.max_body_bytes and ex.body_in + len(body) > s.max_body_bytes:
            self._refuse_status = 413
            raise RequestRefused(413, "body larger than limits.max_body_bytes")
        self.body_deadline = monotonic() + s.client_body_s
        ex.on_client_body(body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        self.parsing = None
        self.body_deadline = 0.0
        if ex is None:
            return
        if not ex.keep_alive and not ex.info.upgrade:
            # Connection: close (or HTTP/1.0): whatever follows is not read (RFC 9112 §9.6).
            self.dead = True
            self.pause_reading(PAUSE_DONE)
        ex.on_request_complete(self._headers if ex.info.chunked and self._headers else None)

    # -- errors, upgrade, tunnel ----------------------------------------------------------------

    def _on_client_error(self, status: int) -> None:
        """The client broke a rule (parse error, limit, timeout): answer in turn and close."""
        self.dead = True
        self.pause_reading(PAUSE_DONE)
        ex = self.parsing
        self.parsing = None
        self.header_deadline = self.body_deadline = 0.0
        if ex is not None and ex is self.current:
            if ex.state >= RESPONDING:
                self.abort()
                return
            ex.abort()
            self.current = None
            self._refuse_now(status)
            return
        if ex is not None and self.pipeline and self.pipeline[-1] is ex:
            self.pipeline.pop()
        if self.current is None:
            self._refuse_now(status)
        else:
            self.pipeline.append(status)

    def _refuse_now(self, status: int) -> None:
        bal = self.bal
        bal.counters[f"error_{status}"] += 1
        bal.counters["responses_4xx" if status < 500 else "responses_5xx"] += 1
        self.queue(error_response(status, bal.date.line, close=True, lines=self.own_lines(),
                                  head=self._refuse_head))
        self.close()

    def own_lines(self) -> bytes:
        """Header lines every answer taxiway writes itself carries on this listener (HSTS on
        HTTPS, as the app's answers get it)."""
        return self.bal.settings.response_rewriter.hsts_line if self.https else b""

    def _on_upgrade(self, rest: bytes) -> None:
        """httptools stopped at an Upgrade request. What follows is another protocol only if the
        server agrees (101): until then it is held, unread by anyone (forwarding it at
        once let a second request reach the app unchecked, and its answer reach another client).
        The parser is done with this connection either way: after a refused upgrade the
        connection closes with the answer (`Exchange.on_upstream_head`)."""
        ex = self.current if self.current is not None and self.current.info.upgrade else None
        if ex is None and self.pipeline and isinstance(self.pipeline[-1], Exchange):
            ex = self.pipeline[-1]
        if ex is None or not ex.info.upgrade:
            # llhttp saw an upgrade but no exchange waits for one: its answer was given at once
            # (a redirect, an edge refusal, 503) or the request went out without one. Nothing
            # more is read; the connection closes after what is being answered, with no answer
            # that nobody asked for.
            self.dead = True
            self.pause_reading(PAUSE_DONE)
            self.closing = True
            if self.current is None and not self.pipeline:
                self.close()
            return
        self.dead = True
        self.upgrade_ex = ex
        ex.forbid_replay()
        self.pause_reading(PAUSE_UPGRADE)
        if rest:
            self._hold(rest)

    def _hold(self, data: bytes) -> None:
        """Keep client bytes that arrived after an Upgrade request (bounded: reading is paused,
        so at most what was already on its way arrives)."""
        self.held.append(data)
        if sum(map(len, self.held)) > UPGRADE_HOLD_MAX_BYTES:
            self.bal.counters["upgrade_hold_overflow"] += 1
            self.abort()

    def start_tunnel(self, ex: Exchange) -> None:
        """Called by the exchange when the server answered 101 Switching Protocols: the held
        bytes go first, then everything the client sends."""
        self.tunnel_ex = ex
        self.upgrade_ex = None
        self.header_deadline = self.idle_deadline = self.body_deadline = 0.0
        self.bal.counters["tunnels"] += 1
        held = self.held
        self.held = []
        for data in held:
            ex.on_tunnel_client_data(data)
        self.resume_reading(PAUSE_UPGRADE)

    # -- output -------------------------------------------------------------------------------

    def queue(self, data: bytes) -> None:
        self.wbuf.append(data)

    def queue_many(self, parts: tuple[bytes, ...]) -> None:
        self.wbuf.extend(parts)
        self.wbuf_big = True

    def queue_body(self, data: bytes) -> None:
        self.wbuf.append(data)
        if len(data) > 4096:
            self.wbuf_big = True

    def flush(self) -> None:
        wbuf = self.wbuf
        if not wbuf:
            return
        if not self.closed and self.transport is not None:
            if len(wbuf) == 1:
                self.transport.write(wbuf[0])
            elif self.wbuf_big:
                self.transport.writelines(wbuf)   # large body pieces: no copy
            else:
                self.transport.write(b"".join(wbuf))
        self.wbuf = []
        self.wbuf_big = False

    def write_now(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        """Flush what is queued, then close (the transport sends buffered bytes first)."""
        self.flush()
        self.closing = True
        if not self.closed and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Cut the connection at once (a response was cut upstream: the client must notice)."""
        self.wbuf = []
        self.closing = True
        if not self.closed and self.transport is not None:
            self.transport.abort()

    # -- flow control ---------------------------------------------------------------------------

    def pause_reading(self, reason: int) -> None:
        if not self.paused and not self.closed and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def resume_reading(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if not self.paused and not self.closed and self.transport is not None:
            self.transport.resume_reading()
            if self.body_deadline:
                self.body_deadline = monotonic() + self.bal.settings.client_body_s

    # -- request lifecycle ----------------------------------------------------------------------

    def exchange_done(self, ex: Exchange, now: float = 0.0) -> None:
        """Called by an exchange when its response has been queued completely."""
        if ex is not self.current:
            return
        self.current = None
        if self.closed:
            return
        if self.paused & (PAUSE_UPSTREAM | PAUSE_BUFFER):
            # Pressure from this exchange's upstream no longer applies to the next request.
            self.resume_reading(PAUSE_UPSTREAM | PAUSE_BUFFER)
        if not ex.keep_alive or (self.closing and not self.pipeline):
            self.close()
            return
        if not now:
            now = monotonic()
        while self.current is None and self.pipeline:
            nxt = self.pipeline.pop(0)
            if isinstance(nxt, int):
                self.pipeline.clear()
                self._refuse_now(nxt)
                return
            self.current = nxt
            nxt.start(now)
        if not self.pipeline and self.paused & PAUSE_PIPELINE:
            self.resume_reading(PAUSE_PIPELINE)
        if self.current is None and self.parsing is None:
            if self.closing:
                self.close()
            else:
                self.idle_deadline = now + self.bal.settings.client_idle_s

    def check_timers(self, now: float) -> None:
        """Called by the balancer's tick (a few times a second) for every connection."""
        if self.closed or self.tunnel_ex is not None:
            return
        ex = self.current
        if ex is not None and ex.check_timers(now, self.write_paused):
            return
        if self.header_deadline and now > self.header_deadline and ex is None:
            self._on_client_error(408)
            self.flush()
            return
        if self.idle_deadline and now > self.idle_deadline and ex is None and self.parsing is None:
            self.bal.counters["idle_closed"] += 1
            self.close()
            return
        if self.body_deadline and now > self.body_deadline and not self.paused:
            self._on_client_error(408)
            self.flush()

    def shutdown(self, idle_linger_s: float = 0.0) -> None:
        """Graceful stop: close after the response in flight; an idle connection at once, or
        after `idle_linger_s` without a request (`Balancer.stop` says why it may wait)."""
        self.closing = True
        if self.current is None and self.parsing is None and not self.closed:
            if idle_linger_s <= 0:
                self.close()
                return
            end = monotonic() + idle_linger_s
            self.idle_deadline = min(self.idle_deadline, end) if self.idle_deadline else end
