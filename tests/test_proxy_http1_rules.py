"""proxy/http1.py's rewriting, in process: the fast paths agree with the general ones, and the
connection code reads a message the same however its bytes are cut (h11's habit).

The rewriters each have a fast path for the common message (a response head forwarded as it came
with taxiway's lines appended; a request whose forwarding tail is cached per connection and Host)
and a general path that reads field by field. A user must never be able to tell which one ran:
Hypothesis generates ordinary messages and the two paths must produce the same bytes.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxiway.config import parse_config
from taxiway.proxy.http1 import (
    HEAD_CHUNKED,
    HEAD_HOP,
    HEAD_OTHER,
    ConnContext,
    RequestRewriter,
    ResponseContext,
    ResponseRewriter,
    cut_line,
    locate_cuts,
    split_head,
)

# Header names that are ordinary (no meaning to either rewriter) and values llhttp accepts.
_NAME = st.from_regex(rb"\AX-[A-Za-z0-9-]{1,12}\Z", fullmatch=True)
_VALUE = st.from_regex(rb"\A[!-~]([ !-~]{0,30}[!-~])?\Z", fullmatch=True)
_ORDINARY = st.lists(st.tuples(_NAME, _VALUE), max_size=8)
_HOST = st.sampled_from([b"example.test", b"127.0.0.1:8080", b"[::1]:8443", b"shop.example.test"])
_RID = re.compile(rb"X-Request-Id: [^\r]*\r\n")


def response_rewriter() -> ResponseRewriter:
    return ResponseRewriter({"X-Content-Type-Options": "nosniff", "X-Frame-Options": "SAMEORIGIN"},
                            "X-Served-By", 31536000.0)


def classified(rw: ResponseRewriter, head: bytes) -> tuple[int, list[int] | None]:
    """The flags and the cut ranges, as the upstream connection's general path collects them."""
    flags, lines = 0, []
    for name, value in split_head(head):
        f = rw.classify(name, value)
        flags |= f
        if f & (HEAD_HOP | HEAD_CHUNKED):
            lines.append(cut_line(name, value))
    if not lines:
        return flags, None
    cut = locate_cuts(head, lines)
    return (flags | HEAD_OTHER if cut is None else flags), cut


def context(https: bool, http11: bool, no_body: bool) -> ResponseContext:
    ctx = ResponseContext(no_body, False, http11, b"Date: Tue, 01 Dec 2026 00:00:00 GMT\r\n", "b1")
    ctx.https = https
    return ctx


# Fields the fast path handles itself: hop-by-hop lines that name nothing else (nginx, Node and
# gunicorn send them), a plain chunked coding, and security fields the app set itself (Django).
_HOP = st.lists(st.sampled_from([(b"Connection", b"keep-alive"), (b"Connection", b"Keep-Alive"),
                                 (b"connection", b"close"), (b"Keep-Alive", b"timeout=5"),
                                 (b"keep-alive", b"timeout=5, max=1000")]), max_size=2)
_APP_SECURITY = st.lists(st.sampled_from([(b"X-Frame-Options", b"DENY"),
                                          (b"x-content-type-options", b"nosniff"),
                                          (b"Strict-Transport-Security", b"max-age=60")]),
                         max_size=3, unique=True)


@settings(max_examples=500, deadline=None)
@given(status=st.sampled_from([200, 201, 204, 301, 304, 404, 500, 503]), headers=_ORDINARY,
       length=st.one_of(st.none(), st.integers(0, 10**9)), date=st.booleans(), https=st.booleans(),
       http11=st.booleans(), no_body=st.booleans(), hop=_HOP, chunked=st.booleans(),
       security=_APP_SECURITY, seed=st.randoms(use_true_random=False))
def test_response_fast_path_equals_the_general_rewrite(status: int, headers: list[tuple[bytes, bytes]],
                                                      length: int | None, date: bool, https: bool,
                                                      http11: bool, no_body: bool,
                                                      hop: list[tuple[bytes, bytes]], chunked: bool,
                                                      security: list[tuple[bytes, bytes]],
                                                      seed: Any) -> None:
    fields = list(headers)
    if length is not None:
        fields.append((b"Content-Length", str(length).encode()))
    elif chunked:
        fields.append((b"Transfer-Encoding", b"chunked"))
    if date:
        fields.append((b"Date", b"Mon, 30 Nov 2026 23:59:59 GMT"))
    extra = hop + security
    for field in extra:   # anywhere among the others
        fields.insert(seed.randint(0, len(fields)), field)
    # As the upstream connection hands it over: status line and field lines, each ending in CRLF
    # (the blank line that ends the head is not part of it).
    head = b"HTTP/1.1 %d X\r\n" % status + b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    rw = response_rewriter()
    flags, cut = classified(rw, head)
    assert not flags & HEAD_OTHER          # ordinary heads only: the fast path's domain
    fast_ctx, slow_ctx = context(https, http11, no_body), context(https, http11, no_body)
    out: list[bytes] = []
    rw.rewrite_raw(status, head, flags, fast_ctx, out, cut)
    general = rw.rewrite(status, split_head(head), slow_ctx)
    assert b"".join(out) == general
    # What the rest of the exchange reads from the context: the same framing decisions. (The fast
    # path only notes that a Content-Length is there; its value matters to httptools alone.)
    def framing(ctx: ResponseContext) -> tuple[bool, bool, bool, bool, bytes]:
        return ctx.content_length >= 0, ctx.upstream_chunked, ctx.chunked_out, ctx.close, ctx.te_codings

    assert framing(fast_ctx) == framing(slow_ctx)


@settings(max_examples=300, deadline=None)
@given(headers=_ORDINARY, host=_HOST, target=st.sampled_from([b"/", b"/a/b?x=1", b"/search?q=AMS%20LIS"]),
       via=st.booleans(), harmless=st.sampled_from([(b"Expect", b"100-continue"),
                                                    (b"Connection", b"keep-alive, X-Absent")]))
def test_request_fast_path_equals_the_field_by_field_rewrite(headers: list[tuple[bytes, bytes]], host: bytes,
                                                            target: bytes, via: bool,
                                                            harmless: tuple[bytes, bytes]) -> None:
    """A request without framing, hop-by-hop or forwarding fields takes the fast path (tail cached
    per connection and Host, or built on the first request; `Connection: keep-alive` and the
    fields that are only ever dropped stay on it); the same request with one field that changes
    nothing in the head but is read field by field takes the general path. The upstream must get
    the same head either way (but for the request id, which is new per request)."""
    rw = RequestRewriter("X-Request-Id", via, 0)
    fields = [(b"Host", host), *headers]
    fresh = rw.rewrite(b"GET", target, fields, True, ConnContext("192.0.2.7", "https", False))
    ctx = ConnContext("192.0.2.7", "https", False)
    rw.rewrite(b"GET", target, fields, True, ctx)
    cached = rw.rewrite(b"GET", target, fields, True, ctx)    # the per-connection tail, cached
    general = rw.rewrite(b"GET", target, [*fields, harmless], True, ConnContext("192.0.2.7", "https", False))
    heads = {_RID.sub(b"", info.head_bytes) for info in (fresh, cached, general)}
    assert len(heads) == 1, heads
    assert all(info.request_id and info.host == host for info in (fresh, cached, general))


# --------------------------------------------------------------------------------------------
# The connection code, fed a byte at a time


class RecordingTransport(asyncio.Transport):
    """What the protocol wrote; never closes (a closed connection fails the test instead)."""

    def __init__(self, peer: tuple[str, int] | None = None) -> None:
        super().__init__()
        self.peer = peer
        self.written = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += data

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.written += chunk

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


REQUEST = (b"PUT /orders?src=app HTTP/1.1\r\nHost: shop.example.test\r\nUser-Agent: t/1\r\n"
           b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nCookie: a=1; b=2\r\n\r\n"
           b"7\r\n{\"a\":1}\r\n3;ext=1\r\n,[]\r\n0\r\nX-Checksum: 9\r\n\r\n")
RESPONSE = (b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nKeep-Alive: timeout=5\r\n"
            b"Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")


def exchange(cuts: int) -> tuple[bytes, bytes]:
    """One request through a real ClientProtocol and UpstreamConnection (no sockets), the client's
    bytes and the server's delivered `cuts` bytes at a time; returns (what the server got, what
    the client got)."""
    from taxiway.proxy.app import Balancer
    from taxiway.proxy.server import ClientProtocol
    from taxiway.proxy.upstream import UpstreamConnection

    bal = Balancer(parse_config({"servers": [{"url": "http://127.0.0.1:9001", "name": "b1"}],
                                 "access_log": {"enabled": False}, "health": {"enabled": False}}))
    bal._loop = loop = asyncio.new_event_loop()
    try:
        up = bal.upstream_pool(bal.pool.servers[0])
        conn = UpstreamConnection(up)
        server_side = RecordingTransport()
        conn.connection_made(server_side)
        up.idle.append(conn)
        client = ClientProtocol(bal, "http")
        client_side = RecordingTransport(("192.0.2.7", 5555))
        client.connection_made(client_side)
        for i in range(0, len(REQUEST), cuts):
            client.data_received(REQUEST[i:i + cuts])
        for i in range(0, len(RESPONSE), cuts):
            piece = RESPONSE[i:i + cuts]
            view = conn.get_buffer(-1)
            view[:len(piece)] = piece
            conn.buffer_updated(len(piece))
        assert not client_side.closed and not server_side.closed
        return bytes(server_side.written), bytes(client_side.written)
    finally:
        loop.close()


def test_a_message_cut_anywhere_is_forwarded_the_same() -> None:
    whole_up, whole_down = exchange(len(REQUEST) + len(RESPONSE))
    assert whole_up.startswith(b"PUT /orders?src=app HTTP/1.1\r\n") and b"X-Checksum: 9\r\n" in whole_up
    assert b'{"a":1}' in whole_up and whole_down.startswith(b"HTTP/1.1 201 Created\r\n")
    assert b"hello" in whole_down and b" world" in whole_down and b"Keep-Alive" not in whole_down
    for cuts in (1, 2, 3, 7, 64):
        up, down = exchange(cuts)
        # Bodies are re-chunked as their bytes arrive, so chunk boundaries may differ; the head,
        # the body and the trailers each side reads must not.
        assert dechunk(_RID.sub(b"", up)) == dechunk(_RID.sub(b"", whole_up)), cuts
        assert dechunk(down) == dechunk(whole_down), cuts


def dechunk(message: bytes) -> tuple[bytes, bytes, bytes]:
    """(head without Date, body, trailer section) of a chunked message; checks it ends there."""
    head, _, rest = message.partition(b"\r\n\r\n")
    body = bytearray()
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body += rest[:size]
        assert rest[size:size + 2] == b"\r\n"
        rest = rest[size + 2:]
    trailers, _, after = rest.partition(b"\r\n\r\n") if rest != b"\r\n" else (b"", b"", b"")
    assert after == b"", after
    return re.sub(rb"Date: [^\r]*\r\n", b"", head + b"\r\n"), bytes(body), trailers


@pytest.mark.parametrize(("name", "value"), [
    (b"Connection", b"keep-alive, X-Private"),   # names another field: only the general path reads it
    (b"Connection", b"upgrade"),
    (b"Transfer-Encoding", b"gzip, chunked"),     # a coding the client must be told of
    (b"Close", b"1"),                             # hop-by-hop only if a Connection: close names it
    (b"Proxy-Connection", b"keep-alive"),
])
def test_what_the_fast_path_leaves_to_the_general_one(name: bytes, value: bytes) -> None:
    assert response_rewriter().classify(name, value) & HEAD_OTHER


def test_a_close_field_is_dropped_only_when_connection_names_it() -> None:
    rw = response_rewriter()
    ctx = context(False, True, False)
    kept = rw.rewrite(200, [(b"Close", b"1"), (b"Content-Length", b"0")], ctx)
    dropped = rw.rewrite(200, [(b"Connection", b"close"), (b"Close", b"1"), (b"Content-Length", b"0")],
                         context(False, True, False))
    assert b"Close: 1\r\n" in kept and b"Close: 1" not in dropped


@settings(max_examples=200, deadline=None)
@given(headers=_ORDINARY, host=_HOST, dropped=st.lists(st.sampled_from([
    (b"Connection", b"keep-alive"), (b"connection", b"Keep-Alive"), (b"Keep-Alive", b"timeout=5"),
    (b"TE", b"trailers"), (b"Trailer", b"X-Sum"), (b"Proxy-Authorization", b"Basic eA==")]),
    min_size=1, max_size=3))
def test_fields_the_fast_path_drops_are_dropped_as_the_general_path_drops_them(
        headers: list[tuple[bytes, bytes]], host: bytes, dropped: list[tuple[bytes, bytes]]) -> None:
    rw = RequestRewriter("X-Request-Id", True, 0)
    fields = [(b"Host", host), *dropped, *headers]
    fast = rw.rewrite(b"GET", b"/", fields, True, ConnContext("192.0.2.7", "http", False))
    general = rw.rewrite(b"GET", b"/", [*fields, (b"Expect", b"100-continue")], True,
                         ConnContext("192.0.2.7", "http", False))
    assert _RID.sub(b"", fast.head_bytes) == _RID.sub(b"", general.head_bytes)
    assert fast.keep_alive == general.keep_alive == any(n.lower() == b"connection" for n, _ in dropped)


@pytest.mark.parametrize("line", [b"Connection:keep-alive", b"Keep-Alive:   timeout=5",
                                  b"Transfer-Encoding:chunked"])
def test_a_hop_line_written_otherwise_goes_the_general_way(line: bytes) -> None:
    """The general path looks for the line as llhttp reported it (`name: value`); a server that
    wrote it another way still gets it dropped, by the general rewrite."""
    head = b"HTTP/1.1 200 OK\r\nX-A: 1\r\n" + line + b"\r\nX-B: 2\r\n"
    rw = response_rewriter()
    fields = split_head(head)
    flags, cut = classified(rw, head)
    assert flags & HEAD_OTHER and cut is None
    out: list[bytes] = []
    rw.rewrite_raw(200, head, flags, context(False, True, False), out, cut)
    general = rw.rewrite(200, fields, context(False, True, False))
    assert b"".join(out) == general and line not in general


def test_hsts_named_in_headers_security_is_not_repeated_when_the_app_sends_its_own() -> None:
    rw = ResponseRewriter({"Strict-Transport-Security": "max-age=5", "X-Frame-Options": "DENY"},
                          "X-Served-By", 3600.0)
    fields = [(b"Transfer-Encoding", b"chunked"), (b"Strict-Transport-Security", b"max-age=1")]
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    flags, cut = classified(rw, head)
    fast_ctx, slow_ctx = context(True, True, False), context(True, True, False)
    out: list[bytes] = []
    rw.rewrite_raw(200, head, flags, fast_ctx, out, cut)
    general = rw.rewrite(200, fields, slow_ctx)
    assert b"".join(out) == general and general.lower().count(b"strict-transport-security") == 1


@settings(max_examples=200, deadline=None)
@given(headers=_ORDINARY, host=_HOST, length=st.integers(0, 10**9), keep=st.booleans(),
       spelled=st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-LENGTH"]))
def test_a_body_with_content_length_is_framed_the_same_on_both_paths(
        headers: list[tuple[bytes, bytes]], host: bytes, length: int, keep: bool, spelled: bytes) -> None:
    """A POST with a Content-Length (every API call) takes the fast path; its head must be the
    general path's, the length written last and normalised."""
    rw = RequestRewriter("X-Request-Id", False, 0)
    fields = [(b"Host", host), *headers, (spelled, str(length).encode())]
    if keep:
        fields.insert(1, (b"Connection", b"keep-alive"))
    fast = rw.rewrite(b"POST", b"/api", fields, True, ConnContext("192.0.2.7", "http", False))
    general = rw.rewrite(b"POST", b"/api", [*fields, (b"Expect", b"100-continue")], True,
                         ConnContext("192.0.2.7", "http", False))
    assert _RID.sub(b"", fast.head_bytes) == _RID.sub(b"", general.head_bytes)
    assert fast.content_length == general.content_length == length
    assert fast.head_bytes.endswith(b"Content-Length: %d\r\n\r\n" % length)


def test_a_body_over_the_limit_is_refused_on_the_fast_path_too() -> None:
    from taxiway.errors import RequestRefused

    rw = RequestRewriter("X-Request-Id", False, 100)
    with pytest.raises(RequestRefused) as refused:
        rw.rewrite(b"POST", b"/", [(b"Host", b"t"), (b"Content-Length", b"101")], True,
                   ConnContext("192.0.2.7", "http", False))
    assert refused.value.status == 413
    ok = rw.rewrite(b"POST", b"/", [(b"Host", b"t"), (b"Content-Length", b"100")], True,
                    ConnContext("192.0.2.7", "http", False))
    assert ok.content_length == 100
