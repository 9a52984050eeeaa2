"""The proxy over real sockets: forwarding, keep-alive, pipelining, bodies, headers."""

from __future__ import annotations

import json
import socket

from tests.proxy_support import (
    Client,
    HeadRecorder,
    InProcess,
    RawServer,
    http_get,
    make_config,
    read_request_head,
    start_lb,
    wait_until,
)


def test_forwards_and_balances_over_keep_alive(procs, tmp_path):
    b1, b2 = procs.backend("b1"), procs.backend("b2")
    port, _, _ = start_lb(procs, tmp_path, [b1, b2], balancer={"strategy": "round-robin"})
    c = Client(port)
    seen = [c.get("/").header("X-Backend") for _ in range(6)]
    assert sorted(set(seen)) == ["b1", "b2"]
    assert seen.count("b1") == 3          # round robin alternates on one client connection
    r = c.get("/")
    assert r.status == 200 and r.body.startswith(b"hello from")
    c.close()


def test_pipelined_requests_answered_in_order(procs, tmp_path):
    b1 = procs.backend("b1")
    port, _, _ = start_lb(procs, tmp_path, [b1])
    c = Client(port)
    # The slow one first: its answer must still come first.
    c.send(b"GET /delay/300 HTTP/1.1\r\nHost: t\r\n\r\n"
           b"GET /bytes/5 HTTP/1.1\r\nHost: t\r\n\r\n"
           b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
           b"GET /status/404 HTTP/1.1\r\nHost: t\r\n\r\n")
    r1, r2, r3, r4 = (c.read_response() for _ in range(4))
    assert r1.body == b"hello from b1\n"
    assert r2.body == b"xxxxx"
    assert r3.body == b"3"
    assert r4.status == 404


def test_upstream_connections_are_reused():
    served = []

    def handler(conn: socket.socket) -> None:
        while True:
            head = read_request_head(conn)
            if not head:
                return
            served.append(head)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    up = RawServer(handler)
    lb = InProcess(make_config([up.port]))
    try:
        for _ in range(3):            # three separate client connections ...
            c = Client(lb.port)
            for _ in range(5):
                assert c.get("/").body == b"ok"
            c.close()
        assert len(served) == 15
        assert up.accepted == 1       # ... one upstream connection
    finally:
        lb.stop()
        up.close()


def test_chunked_request_and_response(procs, tmp_path):
    b1 = procs.backend("b1")
    port, _, _ = start_lb(procs, tmp_path, [b1])
    c = Client(port)
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    r = c.read_response()
    assert r.status == 200 and r.body == b"hello world"
    assert r.header("Transfer-Encoding") == "chunked"
    r = c.get("/chunked/100000")
    assert len(r.body) == 100000
    r = c.get("/bytes/70000")
    assert len(r.body) == 70000 and r.header("Content-Length") == "70000"
    r = c.get("/bytes/10", method="HEAD")
    assert r.status == 200 and r.header("Content-Length") == "10"
    assert c.get("/").status == 200   # the connection is still in sync after HEAD


def test_expect_100_continue(procs, tmp_path):
    b1 = procs.backend("b1")
    port, _, _ = start_lb(procs, tmp_path, [b1])
    c = Client(port)
    c.send(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    interim = c.sock.recv(1024)
    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    c._buf = interim[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
    c.send(b"abcd")
    r = c.read_response()
    assert r.status == 200 and r.body == b"4"


def test_forwarding_headers_untrusted_peer(procs, tmp_path):
    b1 = procs.backend("b1")
    port, _, _ = start_lb(procs, tmp_path, [b1], balancer={"served_by_header": "X-Served-By"})
    r = http_get(port, "/headers", {
        "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "Forwarded": "for=6.6.6.6",
        "Connection": "keep-alive, X-Secret", "X-Secret": "hop", "Keep-Alive": "timeout=5",
        "Proxy-Connection": "keep-alive", "X-Request-Id": "abc-123", "TE": "trailers",
    })
    h = {k.lower(): v for k, v in json.loads(r.body)}
    assert h["x-forwarded-for"] == "127.0.0.1"         # the client's claim is not believed
    assert h["x-forwarded-proto"] == "http"            # set by taxiway alone
    assert h["forwarded"] == 'for=127.0.0.1;proto=http;host="test"'
    assert h["x-forwarded-host"] == "test"
    assert h["via"] == "1.1 taxiway"
    assert h["x-request-id"] == "abc-123"              # kept when present
    for hop in ("connection", "x-secret", "keep-alive", "proxy-connection", "te"):
        assert hop not in h, hop
    assert r.header("X-Served-By") == f"127.0.0.1:{b1}"
    assert r.header("X-Content-Type-Options") == "nosniff"
    assert r.header("X-Frame-Options") == "SAMEORIGIN"


def test_forwarding_headers_trusted_proxy_and_generated_request_id(procs, tmp_path):
    b1 = procs.backend("b1")
    port, _, _ = start_lb(procs, tmp_path, [b1], headers={"trusted_proxies": ["127.0.0.0/8"]})
    r = http_get(port, "/headers", {"X-Forwarded-For": "203.0.113.9", "Forwarded": "for=203.0.113.9",
                                    "X-Forwarded-Host": "shop.example", "Via": "1.0 edge"})
    h = {k.lower(): v for k, v in json.loads(r.body)}
    assert h["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert h["forwarded"].startswith("for=203.0.113.9, for=127.0.0.1")
    assert h["x-forwarded-host"] == "shop.example"
    assert h["via"] == "1.0 edge, 1.1 taxiway"
    r2 = http_get(port, "/headers")
    rid1 = {k.lower(): v for k, v in json.loads(r2.body)}["x-request-id"]
    rid2 = {k.lower(): v for k, v in json.loads(http_get(port, "/headers").body)}["x-request-id"]
    assert rid1 and rid2 and rid1 != rid2


def test_security_headers_kept_when_app_sets_them():
    def handler(conn: socket.socket) -> None:
        while read_request_head(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Frame-Options: DENY\r\nContent-Length: 0\r\n\r\n")

    up = RawServer(handler)
    lb = InProcess(make_config([up.port]))
    try:
        r = http_get(lb.port, "/")
        frames = [v for n, v in r.headers if n.lower() == b"x-frame-options"]
        assert frames == [b"DENY"]
        assert r.header("Referrer-Policy") == "strict-origin-when-cross-origin"
        assert r.header("Date")
    finally:
        lb.stop()
        up.close()


def test_http10_client_gets_close_delimited_answer(procs, tmp_path):
    b1 = procs.backend("b1")
    port, _, _ = start_lb(procs, tmp_path, [b1])
    c = Client(port)
    c.send(b"GET /chunked/1000 HTTP/1.0\r\n\r\n")
    raw = c.read_all()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Transfer-Encoding" not in head and body == b"x" * 1000


def test_http10_keep_alive_is_honoured(procs, tmp_path):
    """An HTTP/1.0 client that asks for keep-alive (as `ab -k` does) keeps its connection, and
    each answer says so; an answer of unknown length still ends with the connection."""
    b1 = procs.backend("b1")
    port, _, _ = start_lb(procs, tmp_path, [b1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    buf = b""
    for _ in range(3):   # three requests, one connection
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, buf   # the proxy must not close
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        lower = head.lower()
        assert head.startswith(b"HTTP/1.1 200") and b"\r\nconnection: keep-alive" in lower, head
        length = int(lower.split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(buf) < length:
            buf += sock.recv(65536)
        assert buf[:length] == b"hello from b1\n"
        buf = buf[length:]
    sock.sendall(b"GET /chunked/100 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    while chunk := sock.recv(65536):   # no length to give: the close ends the body
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower() and body == b"x" * 100
    sock.close()


def test_access_log_lines(procs, tmp_path):
    b1 = procs.backend("b1")
    log_path = tmp_path / "access.log"
    port, _, _ = start_lb(procs, tmp_path, [b1], access_log={"enabled": True, "path": str(log_path)})
    http_get(port, "/status/201?x=1", {"X-Request-Id": "rid-7"})
    assert wait_until(lambda: log_path.exists() and log_path.read_text().strip() != "")
    line = json.loads(log_path.read_text().splitlines()[0])
    assert line["method"] == "GET" and line["path"] == "/status/201?x=1" and line["status"] == 201
    assert line["server"] == f"127.0.0.1:{b1}" and line["request_id"] == "rid-7"
    assert line["duration_ms"] >= 0 and "bytes" in line


def test_counters_and_server_stats():
    def handler(conn: socket.socket) -> None:
        while read_request_head(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    up = RawServer(handler)
    lb = InProcess(make_config([up.port]))
    try:
        c = Client(lb.port)
        for _ in range(4):
            c.get("/")
        c.close()
        assert wait_until(lambda: lb.bal.connections == 0)
        srv = lb.bal.pool.servers[0]
        counters = lb.run(lb.bal.fold_counters)
        assert counters["requests"] == 4 and counters["responses_2xx"] == 4
        assert lb.bal.counters["connections_total"] == 1
        assert srv.requests == 4 and srv.inflight == 0 and srv.bytes_out == 20
        assert len(srv.recent) == 4 and srv.ewma_s > 0
    finally:
        lb.stop()
        up.close()


def test_response_trailers_follow_the_last_chunk():
    """A chunked response's trailer fields reach the client after the last chunk; the ones a
    trailer must not carry are dropped; the connection stays usable."""

    def handler(conn: socket.socket) -> None:
        while read_request_head(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
                         b"5\r\nhello\r\n0\r\nX-Checksum: abc123\r\nSet-Cookie: evil=1\r\n"
                         b"Cache-Control: no-store\r\n\r\n")

    up = RawServer(handler)
    lb = InProcess(make_config([up.port]))
    try:
        sock = socket.create_connection(("127.0.0.1", lb.port), timeout=10)
        for _ in range(2):   # twice on one connection: the framing after the trailers is right
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            data = b""
            while not data.endswith(b"\r\n0\r\nX-Checksum: abc123\r\n\r\n"):
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            assert b"transfer-encoding: chunked" in head.lower()
            assert b"x-checksum" not in head.lower()          # a trailer, not a header
            assert body == b"5\r\nhello\r\n0\r\nX-Checksum: abc123\r\n\r\n"   # forbidden ones dropped
        sock.close()
    finally:
        lb.stop()
        up.close()


def test_http10_client_with_proxy_connection_keep_alive_is_still_http10():
    """llhttp reads Proxy-Connection like Connection: an HTTP/1.0 request carrying
    `Proxy-Connection: keep-alive` (and no Host, which 1.0 does not need) is answered as 1.0:
    a body of unknown length is delimited by the close, never chunked."""

    def handler(conn: socket.socket) -> None:
        while read_request_head(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")

    up = RawServer(handler)
    lb = InProcess(make_config([up.port]))
    try:
        sock = socket.create_connection(("127.0.0.1", lb.port), timeout=10)
        sock.sendall(b"GET / HTTP/1.0\r\nProxy-Connection: keep-alive\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):   # the proxy closes: that ends the body
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 ") and b"chunked" not in head.lower(), head
        assert body == b"hello"
        sock.close()
    finally:
        lb.stop()
        up.close()


def test_absolute_form_target_becomes_origin_form(procs, tmp_path):
    b1 = procs.backend("b1")
    port, _, _ = start_lb(procs, tmp_path, [b1])
    c = Client(port)
    c.send(b"GET http://shop.example:8443/headers?x=1 HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    r = c.read_response()
    h = {k.lower(): v for k, v in json.loads(r.body)}
    assert h["host"] == "shop.example:8443"         # the URI's authority wins over Host
    c.send(b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert c.read_response().status == 400


def test_request_trailers_are_forwarded_and_never_become_headers():
    """A chunked request's trailer fields reach the server after the body; forbidden ones
    (framing, routing, credentials) are dropped; none of them is read as a request header."""
    up = HeadRecorder()
    lb = InProcess(make_config([up.port], affinity={"mode": "cookie", "secret": "x" * 32}))
    try:
        c = Client(lb.port)
        c.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
               b"Trailer: X-Checksum\r\n\r\n"
               b"5\r\nhello\r\n0\r\nX-Checksum: abc123\r\nCookie: taxiway_server=evil\r\n"
               b"Host: other.example\r\n\r\n")
        assert c.read_response().status == 200
        assert wait_until(lambda: bool(up.seen))
        head, body = up.seen[0]
        assert b"x-checksum" not in head.lower() and b"taxiway_server" not in head   # not headers
        assert body == b"5\r\nhello\r\n0\r\nX-Checksum: abc123\r\n\r\n"   # allowed one forwarded
        # The connection stays usable: the next request is framed correctly.
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.read_response().status == 200
        # A framing field in the trailers is a smuggling attempt: 400 and the connection closes.
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"0\r\nContent-Length: 5\r\n\r\n")
        assert c.read_response().status == 400
        c.close()
    finally:
        lb.stop()
        up.close()
