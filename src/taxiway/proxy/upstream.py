"""Upstream side: keep-alive connections to one server, pooled, with an httptools response parser.

Rules of this module (driver):
1. One `UpstreamConnection` (asyncio Protocol) per TCP connection. While bound to an exchange it
   reports every parser event to it through `UpstreamEvents` (`on_upstream_*`, the only thing it
   knows of the request it serves); while idle in the pool any byte or close from the server just
   retires it. It never touches the client connection: back-pressure and "this read is parsed"
   are events too, and the exchange decides what they mean for the client.
2. A connection goes back to the pool only at a provable message boundary with nothing unread:
   a byte after the end of a response in the same read (a body longer than its Content-Length,
   a 204 with a body) retires it, so a server's extra bytes can never become another client's
   response. The decision waits until the read has been parsed whole (`on_upstream_complete`).
3. A response head is bounded (`ResponseRewriter.max_head_bytes`) as its bytes arrive, and a
   status outside 100-599, or a 101 nobody asked for, is an invalid response (502).
4. `UpstreamPool.acquire_idle()` is synchronous (the hot path: no task, no await). Only opening a
   new connection uses a task, because `loop.create_connection` is a coroutine.
5. Reads land in one buffer shared by every upstream connection (`asyncio.BufferedProtocol`,
   READ_BUFFER_BYTES): uvloop would allocate a fresh 256 KB `bytes` per read, which a slow
   client then pins (one read plus the write high-water mark per reader: 264 KiB each with
   1,000 slow readers, and glibc kept the heap afterwards). Body bytes are parsed straight from
   the buffer (httptools copies each body piece it reports); a head, a tunnel and the bytes
   after an upgrade are copied out, since they outlive the read.
6. The pool keeps at most `limits.upstream_pool_size` idle connections per server (LIFO: the most
   recently used one is the least likely to have been closed by the server); the balancer's tick
   closes those idle longer than `timeouts.upstream_idle`.
7. A response head is read the way a request head is (server.py rule 10): the parser reports
   no field, and `headscan.scan_response` finds in the head's bytes the few fields the response
   rewriter must see (framing, hop-by-hop, `Date`, security headers); the others are forwarded
   as received. A head the scan does not read (odd but valid to llhttp) or a chunked response
   (whose trailer fields the exchange forwards) switches the connection, for good, to a parser
   with field callbacks (`FieldEvents`), which re-reads that response from its first byte.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Final, Protocol

import httptools

from taxiway.balancing.model import Server
from taxiway.proxy import headscan
from taxiway.proxy.http1 import (
    HEAD_CHUNKED,
    HEAD_HOP,
    HEAD_OTHER,
    RequestInfo,
    ResponseContext,
    ResponseRewriter,
    cut_line,
    locate_cuts,
)

log = logging.getLogger("taxiway.proxy")


class _GeneralPath(Exception):
    """Raised by the fast parser's head callback: this response goes through the field callbacks."""


class FieldEvents:
    """The general path's parser callbacks (rule 7). httptools reports every field of every head
    (and every trailer field) to an object that has `on_header`, so the connection has none and
    gives this one to the parser of a connection that needs them."""

    __slots__ = ("conn",)

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn

    def on_message_begin(self) -> None:
        self.conn.on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.conn.on_field(name, value)

    def on_headers_complete(self) -> None:
        self.conn.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.conn.on_body(body)

    def on_message_complete(self) -> None:
        self.conn.on_message_complete()


class _StopParsing(Exception):
    """Raised in a parser callback to make httptools stop at once (it reports a callback error)."""


class ConnectionOwner(Protocol):
    """Who asked `UpstreamPool.connect` for a connection (once per new connection, off the hot
    path: a structural type, so anything with these three methods may ask)."""

    def on_connected(self, conn: UpstreamConnection) -> None: ...
    def on_connect_failed(self, timed_out: bool) -> None: ...
    def on_internal_error(self) -> None: ...


class UpstreamEvents(ResponseContext):
    """What an upstream connection reports to the request it serves, and the two fields it
    reads of it. `forward.Exchange` is the one implementation and overrides every method.

    A base class rather than a `typing.Protocol` because this is the hot path: compiled by mypyc,
    a call through a native base class is one vtable slot, a call through a Protocol a dictionary
    lookup by name (a response makes about five of these calls). It derives from
    `http1.ResponseContext` so the response rewriter fills in the same object.
    """

    info: RequestInfo   # what the request asked for (a 101 is valid only after an Upgrade)
    body_out = 0        # response body bytes relayed so far (the connection bounds chunk framing by it)

    def on_upstream_head(self, conn: UpstreamConnection, status: int, head: bytes, flags: int,
                         cut: list[int] | None) -> None:
        """The response head arrived whole (status line and header lines, CRLF-terminated,
        validated by llhttp; `flags`: what its fields mean to the rewriter; `cut`: where the
        lines of the hop-by-hop fields among them are, for `ResponseRewriter.rewrite_raw`)."""
        raise NotImplementedError

    def on_upstream_body(self, body: bytes) -> None:
        """A piece of the response body (de-chunked)."""
        raise NotImplementedError

    def on_upstream_complete(self, conn: UpstreamConnection, reusable: bool) -> None:
        """The response ended in the read just parsed; `reusable`: nothing followed it and the
        server keeps the connection (rule 2). The connection is unbound already."""
        raise NotImplementedError

    def on_upstream_upgraded(self, rest: bytes) -> None:
        """The server answered 101; `rest`: bytes of the new protocol that came with it."""
        raise NotImplementedError

    def on_tunnel_upstream_data(self, data: bytes) -> None:
        """Bytes from the server after a 101 (not HTTP any more)."""
        raise NotImplementedError

    def on_upstream_lost(self, conn: UpstreamConnection, reset: bool) -> None:
        """The connection closed while bound (`reset`: not a clean close)."""
        raise NotImplementedError

    def on_upstream_invalid(self, conn: UpstreamConnection) -> None:
        """The server broke HTTP or a bound; the connection is closed already."""
        raise NotImplementedError

    def on_upstream_read_done(self) -> None:
        """The read just handed over has been parsed whole: what it produced may leave now
        (one write per read, server.py rule 3)."""
        raise NotImplementedError

    def on_upstream_write_blocked(self, blocked: bool) -> None:
        """The server stopped reading what is sent to it (True), or caught up (False)."""
        raise NotImplementedError


READ_BUFFER_BYTES: Final = 64 * 1024   # one read from an upstream at most (HAProxy: 16k buffers)
_READ_BUFFER: Final = bytearray(READ_BUFFER_BYTES)
_READ_VIEW: Final = memoryview(_READ_BUFFER)


class UpstreamConnection(asyncio.BufferedProtocol):
    """One keep-alive connection to a server. Called by the event loop; never awaits."""

    __slots__ = (
        "closed",
        "exchange",
        "general",
        "got_bytes",
        "head_buf",
        "head_cut",
        "head_cut_lines",
        "head_done",
        "head_flags",
        "idle_since",
        "informational",
        "message_done",
        "overrun",
        "parser",
        "pool",
        "reading_paused",
        "rewriter",
        "server_keeps",
        "status",
        "switching",
        "tail_seen",
        "trailers",
        "transport",
        "tunnel",
        "uses",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        # The fast parser reports no field (no `on_header` here): the fields of a head the
        # rewriter must see are found by `headscan.scan_response` (rule 7).
        self.parser = httptools.HttpResponseParser(self)
        self.general = False     # this connection's responses go through the field callbacks
        self.switching = False   # ... from the response being parsed on (its head callback said)
        self.exchange: UpstreamEvents | None = None
        # The raw response head is collected from the bytes fed to the parser (llhttp validates it:
        # CRLF only, no bare CR, no obs-fold), so the head is forwarded without one Python callback
        # per header. Usually it is one `data` object (no copy); a split head becomes a bytearray.
        self.head_buf: bytes | bytearray = b""
        self.head_done = False
        # What the response head's field names mean to the rewriter (http1.HEAD_* bits), from
        # the scan or `on_field`; `rewriter` is the one of the balancer settings the exchange started with.
        self.head_flags = 0
        # Where its hop-by-hop fields' lines are in the head (`rewrite_raw`'s `cut`); the general
        # path collects their `cut_line`s first and finds them when the head is complete.
        self.head_cut: list[int] | None = None
        self.head_cut_lines: list[bytes] | None = None
        self.rewriter: ResponseRewriter | None = None
        self.trailers: list[tuple[bytes, bytes]] | None = None   # of a chunked response
        self.tail_seen = 0   # bytes of reads that moved no body byte of a chunked response
        self.status = 0   # of the response being read (from on_headers_complete)
        self.closed = False
        self.idle_since = 0.0
        self.tunnel = False
        self.reading_paused = False
        self.informational = False
        self.message_done = False   # the response ended in the read being parsed
        self.overrun = False        # ... and bytes followed it
        self.server_keeps = False   # ... and the server keeps the connection open (read then:
        #                             llhttp resets what it knows once the message is done)
        self.got_bytes = False   # any response byte for the current exchange (no retry after)
        self.uses = 0            # exchanges bound so far (> 1: a reused keep-alive connection)

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Called by the loop when the TCP connect finished."""
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.pool.open_count += 1

    def connection_lost(self, exc: Exception | None) -> None:
        """Called by the loop when the server closed or reset the connection."""
        self.closed = True
        self.pool.open_count -= 1
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.on_upstream_lost(self, exc is not None)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Called by the loop before each read: where to put the bytes (rule 5)."""
        return _READ_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        """Called by the loop after a read of `nbytes` into the shared buffer."""
        ex = self.exchange
        if ex is None:
            self.close()   # unsolicited bytes on an idle connection: it cannot be reused safely
            return
        if self.head_done and not self.tunnel:
            # A body (the usual case for large answers): parsed in place, no copy here.
            moved = ex.body_out
            self._feed(ex, _READ_VIEW[:nbytes])
            if ex.upstream_chunked and self.exchange is ex and ex.body_out == moved:
                # A read that moved no body byte: chunk-size lines, extensions or trailers. They
                # are bounded like a head (httptools grows an unfinished field by concatenation).
                self.tail_seen += nbytes
                if self.rewriter is not None and self.tail_seen > self.rewriter.max_head_bytes:
                    self._invalid(ex)
                    ex.on_upstream_read_done()
            else:
                self.tail_seen = 0
            return
        self.data_received(bytes(_READ_VIEW[:nbytes]))

    def data_received(self, data: bytes) -> None:
        """Bytes that must outlive the read: a response head (kept until it is whole), tunnel data.
        (Also what a plain `asyncio.Protocol` transport would call.)"""
        ex = self.exchange
        if ex is None:
            self.close()
            return
        if self.tunnel:
            ex.on_tunnel_upstream_data(data)
            return
        if not self.head_done:
            buf = self.head_buf
            if not buf:
                if data[:1] in (b"\r", b"\n"):
                    data = data.lstrip(b"\r\n")   # (llhttp skips CRLFs before a status line)
                self.head_buf = data
            elif type(buf) is bytes:
                self.head_buf = bytearray(buf) + data
            else:
                buf += data
            rw = self.rewriter
            if rw is not None and len(self.head_buf) > rw.max_head_bytes and \
                    self.head_buf.find(b"\r\n\r\n", 0, rw.max_head_bytes) < 0:
                self._invalid(ex)
                ex.on_upstream_read_done()
                return
        self._feed(ex, data)

    def _feed(self, ex: UpstreamEvents, data: bytes | memoryview) -> None:
        """Parse one read for exchange `ex`; decide reuse once it is parsed whole (rule 2)."""
        self.got_bytes = True
        try:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserCallbackError:
                if not self.switching:
                    raise
                self._take_general_path()   # (the head callback raised _GeneralPath)
        except httptools.HttpParserUpgrade as exc:
            if self.exchange is ex:
                self.tunnel = True
                ex.on_upstream_upgraded(bytes(data[exc.args[0]:]))
        except httptools.HttpParserError:
            if self.message_done:
                self.overrun = True    # what followed the response is not ours to read
            elif self.exchange is ex:
                self._invalid(ex)
        if self.message_done:
            self.message_done = False
            if self.exchange is ex:
                self.exchange = None
                ex.on_upstream_complete(self, self.server_keeps and not self.overrun)
            if self.overrun:
                self.close()
        ex.on_upstream_read_done()

    def _take_general_path(self) -> None:
        """A response head the scan does not read, or a chunked response (its trailers are
        fields too): from this response on, the connection's heads go through a parser with
        field callbacks, which re-reads this one from its first byte (`head_buf` holds every
        byte of it received so far: the head was not done). Parser errors go to `_feed`'s."""
        self.general = True
        self.switching = False
        self.parser = httptools.HttpResponseParser(FieldEvents(self))
        replay = self.head_buf
        self.parser.feed_data(replay if type(replay) is bytes else bytes(replay))

    def _invalid(self, ex: UpstreamEvents) -> None:
        """The server broke HTTP or a bound (rule 3): retire the connection, tell the exchange."""
        self.close()
        ex.on_upstream_invalid(self)

    def pause_writing(self) -> None:
        """Called by the transport when the server stops reading: stop reading the client."""
        ex = self.exchange
        if ex is not None:
            ex.on_upstream_write_blocked(True)

    def resume_writing(self) -> None:
        """Called by the transport when the server's buffer drained: read the client again."""
        ex = self.exchange
        if ex is not None:
            ex.on_upstream_write_blocked(False)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.message_done:
            # A byte after the end of the response (CRLFs alone are skipped by llhttp): the
            # connection is not at a boundary any more. Stop here; data_received retires it.
            raise _StopParsing

    def on_field(self, name: bytes, value: bytes) -> None:
        """Every response header field, and the trailer fields of a chunked response, on the
        general path (`FieldEvents`). For the head only the name is looked at (and the value of
        the three names `classify` reads). Trailer fields are kept for the last chunk
        (`forward.last_chunk`)."""
        if not self.head_done:
            rw = self.rewriter
            if rw is not None:
                f = rw.classify(name, value)
                if f:
                    self.head_flags |= f
                    if f & (HEAD_HOP | HEAD_CHUNKED):
                        line = cut_line(name, value)
                        if self.head_cut_lines is None:
                            self.head_cut_lines = [line]
                        else:
                            self.head_cut_lines.append(line)
        elif self.exchange is not None:
            t = self.trailers
            if t is None:
                self.trailers = [(name, value)]
            elif len(t) < MAX_TRAILERS:   # (a server cannot grow this without bound)
                t.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.status = self.parser.get_status_code()
        if status < 100 or status > 599:
            raise _StopParsing   # (no such status: an invalid response, 502)
        ex = self.exchange
        if status == 101 and ex is not None and not ex.info.upgrade:
            raise _StopParsing   # a protocol switch the client did not ask for
        buf = self.head_buf
        rw = self.rewriter
        if self.general or rw is None or status == 101:
            # The head starts at buf[0] and llhttp accepted it, so its first empty line ends it.
            # (A 101's head is rewritten field by field anyway; no body or trailer follows it.)
            end = buf.find(b"\r\n\r\n")
            lines = self.head_cut_lines
            if lines is not None:
                self.head_cut_lines = None
                cut = locate_cuts(bytes(buf[:end + 2]), lines)
                if cut is None:
                    self.head_flags |= HEAD_OTHER
                self.head_cut = cut
        else:
            # The fast path: the fields the rewriter must see, found in the head's bytes (rule 7).
            if type(buf) is not bytes:
                buf = self.head_buf = bytes(buf)
            found = headscan.scan_response(buf, 0, rw.name_table)
            if found is None:
                self.switching = True
                raise _GeneralPath()
            end = found[1] - 4
            for code, value, start, stop in found[5]:
                f = rw.classify_code(code, value)
                if f:
                    if f & HEAD_CHUNKED:
                        self.switching = True   # its trailers are fields the exchange forwards
                        raise _GeneralPath()
                    self.head_flags |= f
                    if f & HEAD_HOP:
                        cut = self.head_cut
                        if cut is None:
                            self.head_cut = [start, stop]
                        else:
                            cut.append(start)
                            cut.append(stop)
        if 100 <= status < 200 and status != 101:
            self.informational = True   # 100 Continue etc.: taxiway answered 100 itself
            self.head_buf = buf[end + 4:].lstrip(b"\r\n")
            self.head_flags = 0
            self.head_cut = None
            return
        self.head_buf = b""
        self.head_done = True
        if ex is not None:
            head = buf[:end + 2]
            ex.on_upstream_head(self, status, head if type(head) is bytes else bytes(head), self.head_flags,
                                self.head_cut)

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.on_upstream_body(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if self.status == 101:
            return   # llhttp ends the 101 message, then raises HttpParserUpgrade: a tunnel follows
        # The exchange hears of it once the whole read is parsed (data_received): only then is
        # it known whether anything followed.
        self.message_done = True
        self.server_keeps = self.parser.should_keep_alive()

    # -- used by the exchange ---------------------------------------------------------------

    def bind(self, ex: UpstreamEvents, rewriter: ResponseRewriter, client_write_paused: bool) -> None:
        """Serve `ex` next, its response head checked by `rewriter` (the settings it started with)."""
        self.exchange = ex
        self.got_bytes = False
        self.head_buf = b""
        self.head_done = False
        self.head_flags = 0
        self.head_cut = None
        self.head_cut_lines = None
        self.rewriter = rewriter
        self.trailers = None
        self.tail_seen = 0
        self.message_done = self.overrun = False
        self.uses += 1
        if client_write_paused:
            self.pause_reading()

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        """Close without reusing (the exchange it served went wrong or asked to close)."""
        self.exchange = None
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()


MAX_TRAILERS: Final = 100   # trailer fields kept per response; more are dropped


class UpstreamPool:
    """Keep-alive connections to one server."""

    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop, max_idle: int,
                 connect_timeout_s: float) -> None:
        self.server = server
        self.loop = loop
        self.max_idle = max_idle
        self.connect_timeout_s = connect_timeout_s
        self.idle: list[UpstreamConnection] = []
        self.open_count = 0
        self.closed = False
        self._tasks: dict[asyncio.Task[None], ConnectionOwner] = {}   # connects under way

    def acquire_idle(self, used_since: float = 0.0) -> UpstreamConnection | None:
        """The most recently used idle connection; with `used_since`, only one idle since then
        (older ones are closed: they are the likeliest to have been closed by the server)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if conn.idle_since < used_since:
                conn.close()
                continue
            return conn
        return None

    def release(self, conn: UpstreamConnection, now: float) -> None:
        """Put a connection whose last exchange finished cleanly back for reuse."""
        conn.exchange = None
        if conn.closed:
            return
        if self.closed or len(self.idle) >= self.max_idle or self.server.draining:
            conn.close()
            return
        if conn.reading_paused:
            conn.resume_reading()
        conn.idle_since = now
        self.idle.append(conn)

    def connect(self, owner: ConnectionOwner) -> None:
        """Open a new connection; calls `owner.on_connected(conn)` or `owner.on_connect_failed`."""
        task = self.loop.create_task(self._connect(owner))
        self._tasks[task] = owner
        task.add_done_callback(self._connect_done)

    def _connect_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _connect(self, owner: ConnectionOwner) -> None:
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamConnection(self),
                                            self.server.host, self.server.port),
                self.connect_timeout_s)
        except TimeoutError:
            owner.on_connect_failed(True)
            return
        except OSError:
            owner.on_connect_failed(False)
            return
        try:
            owner.on_connected(conn)
        except Exception:
            # A bug here would leave the request waiting forever (nothing else wakes it): fail it
            # with an answer instead, and say so in the log.
            log.exception("internal error after connecting to %s", self.server.name)
            conn.close()
            owner.on_internal_error()

    def sweep(self, now: float, idle_timeout_s: float) -> None:
        """Close connections idle longer than `idle_timeout_s` (called by the balancer's tick)."""
        if not self.idle:
            return
        keep = [c for c in self.idle if not c.closed and now - c.idle_since < idle_timeout_s]
        for c in self.idle:
            if c not in keep:
                c.close()
        self.idle = keep

    def close_idle(self) -> None:
        for c in self.idle:
            c.close()
        self.idle = []

    def close(self) -> None:
        """Close every idle connection and stop the connects under way (the server left the
        pool: removed after a crash, or by a reload). Each request waiting on one of those
        connects hears of it as a refused connect, and is retried on another server where it
        may be; a cancelled task alone would leave it waiting forever (a task cancelled before
        it ran never enters its `except`)."""
        self.closed = True
        self.close_idle()
        pending = [(t, owner) for t, owner in self._tasks.items() if not t.done()]
        self._tasks.clear()
        for t, _ in pending:
            t.cancel()
        for _, owner in pending:
            owner.on_connect_failed(False)
