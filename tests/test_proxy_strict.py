"""Strict parsing, limits and client timeouts: the right status, a closed connection, a counter,
and nothing forwarded that two parsers could read differently."""

from __future__ import annotations

import socket
import time

import pytest

from tests.proxy_support import Client, InProcess, RawServer, make_config, read_request_head

SMUGGLING = [
    pytest.param(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\n", id="cl-and-te"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
                 id="differing-duplicate-cl"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 4\r\n\r\nabcd", id="cl-list"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
                 id="bad-chunk-size"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\nabc\n0\n\n", id="chunk-bare-lf"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n", id="space-in-header-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nName : x\r\n\r\n", id="space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  folded\r\n\r\n", id="obs-fold"),
    pytest.param(b"GET / HTTP/1.1\nHost: t\n\n", id="bare-lf"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc", id="te-not-chunked"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                 id="te-gzip-chunked"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", id="te-twice"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="no-host-http11"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n", id="nul-in-value"),
    pytest.param(b"GARBAGE\r\n\r\n", id="garbage"),
]


@pytest.fixture(scope="module")
def recorder():
    """An upstream that records every request it gets (nothing smuggled may arrive)."""
    got: list[bytes] = []

    def handler(conn: socket.socket) -> None:
        while True:
            head = read_request_head(conn)
            if not head:
                return
            if b"Transfer-Encoding: chunked" in head:
                # A streamed body: the head may arrive before the bad chunk is seen; what matters
                # is that the upstream connection is then closed, never reused.
                rest = head.split(b"\r\n\r\n", 1)[1]
                while b"0\r\n\r\n" not in rest:
                    d = conn.recv(65536)
                    if not d:
                        return
                    rest += d
            got.append(head)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    up = RawServer(handler)
    lb = InProcess(make_config([up.port], limits={"max_body_bytes": 1000, "max_headers": 20,
                                                  "max_header_bytes": 2048},
                               timeouts={"client_header": "1s", "client_idle": "1s", "client_body": "1s"}))
    yield lb, got
    lb.stop()
    up.close()


@pytest.mark.parametrize("raw", SMUGGLING)
def test_ambiguous_requests_get_400_and_close(recorder, raw):
    lb, got = recorder
    before = len(got)
    n400 = lb.bal.counters["error_400"]
    c = Client(lb.port)
    c.send(raw)
    r = c.read_response()
    assert r.status == 400
    assert r.header("Connection") == "close"
    assert c.is_closed()
    assert len(got) == before
    assert lb.bal.counters["error_400"] == n400 + 1


def test_smuggled_second_request_never_reaches_upstream(recorder):
    lb, got = recorder
    before = len(got)
    c = Client(lb.port)
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: t\r\n\r\n")
    assert c.read_response().status == 400
    assert c.is_closed()
    assert not any(b"/admin" in h for h in got[before:])


@pytest.mark.parametrize(("raw", "status", "counter"), [
    pytest.param(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n", 413, "error_413",
                 id="content-length-over-limit"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + b"200\r\n" + b"a" * 512
                 + b"\r\n" + b"200\r\n" + b"a" * 512 + b"\r\n" + b"200\r\n" + b"a" * 512 + b"\r\n0\r\n\r\n",
                 413, "error_413", id="chunked-over-limit"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(30)) + b"\r\n",
                 431, "error_431", id="too-many-headers"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"v" * 3000 + b"\r\n\r\n", 431, "error_431",
                 id="header-too-large"),
    pytest.param(b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, "error_414",
                 id="uri-too-long"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: t\r\nExpect: magic\r\n\r\n", 417, "error_417",
                 id="unknown-expect"),
    pytest.param(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405, "error_405",
                 id="connect"),
])
def test_limits(recorder, raw, status, counter):
    lb, _ = recorder
    n = lb.bal.counters[counter]
    c = Client(lb.port)
    c.send(raw)
    r = c.read_response()
    assert r.status == status
    assert len(r.body) < 100
    assert c.is_closed()
    assert lb.bal.counters[counter] == n + 1


def test_slowloris_header_deadline_is_not_extended_by_data(recorder):
    lb, _ = recorder
    n = lb.bal.counters["error_408"]
    c = Client(lb.port)
    start = time.monotonic()
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
    closed = False
    for i in range(40):          # a header line every 100 ms: data keeps coming, the deadline holds
        try:
            c.send(b"X-%d: v\r\n" % i)
        except OSError:
            closed = True
            break
        time.sleep(0.1)
    elapsed = time.monotonic() - start
    if not closed:
        r = c.read_response()
        assert r.status == 408
    assert elapsed < 3.5
    assert lb.bal.counters["error_408"] == n + 1


def test_body_gap_timeout(recorder):
    lb, _ = recorder
    c = Client(lb.port)
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
    assert c.is_closed(wait_s=6)


def test_idle_keep_alive_closes_silently(recorder):
    lb, _ = recorder
    c = Client(lb.port)
    assert c.get("/").status == 200
    c.sock.settimeout(6)
    start = time.monotonic()
    assert c.sock.recv(100) == b""     # closed without an answer
    assert time.monotonic() - start < 4


def test_silent_connection_gets_408_at_header_deadline(recorder):
    lb, _ = recorder
    c = Client(lb.port)
    c.sock.settimeout(6)
    data = c.read_all()
    assert data == b"" or data.startswith(b"HTTP/1.1 408")


def test_connection_close_stops_reading(recorder):
    lb, got = recorder
    before = len(got)
    c = Client(lb.port)
    c.send(b"GET /one HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /two HTTP/1.1\r\nHost: t\r\n\r\n")
    r = c.read_response()
    assert r.status == 200 and r.header("Connection") == "close"
    assert c.is_closed()
    assert [h.split(b" ")[1] for h in got[before:]] == [b"/one"]


def test_max_connections_per_client():
    with InProcess(make_config([1], limits={"max_connections_per_client": 2})) as lb:
        a, b, c = Client(lb.port), Client(lb.port), Client(lb.port)
        assert c.is_closed()
        assert not a.is_closed(wait_s=0.3) and not b.is_closed(wait_s=0.3)
        assert lb.bal.counters["connections_refused"] == 1
