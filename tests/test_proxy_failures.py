"""Upstream failures: 502/503/504, retries (and when never to retry), retry budget, ejection."""

from __future__ import annotations

import socket
import threading
import time

from tests.proxy_support import (
    Client,
    InProcess,
    RawServer,
    http_get,
    make_config,
    read_request_head,
    refused_port,
    wait_until,
)

NO_OUTLIER = {"enabled": False}


def ok_handler(conn: socket.socket) -> None:
    while True:
        head = read_request_head(conn)
        if not head:
            return
        if b"Content-Length: " in head:
            n = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            got = len(head.split(b"\r\n\r\n", 1)[1])
            while got < n:
                got += len(conn.recv(65536))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def test_503_with_retry_after_when_no_server_is_available():
    with InProcess(make_config([refused_port()], health={"enabled": False, "interval": "3s"})) as lb:
        lb.run(lambda: lb.bal.drain_server(lb.bal.pool.servers[0].name))
        c = Client(lb.port)
        r = c.get("/")
        assert r.status == 503 and r.header("Retry-After") == "3"
        assert c.get("/").status == 503     # the connection stays usable
        assert lb.bal.counters["error_503"] == 2


def test_502_when_the_only_server_refuses():
    with InProcess(make_config([refused_port()])) as lb:
        r = http_get(lb.port, "/")
        assert r.status == 502 and len(r.body) < 100
        assert lb.bal.counters["error_502"] == 1
        assert lb.bal.pool.servers[0].failures >= 1


def test_get_and_post_retried_when_connect_is_refused():
    up = RawServer(ok_handler)
    lb = InProcess(make_config([refused_port(), up.port], balancer={"strategy": "round-robin"},
                               outlier=NO_OUTLIER))
    try:
        c = Client(lb.port)
        for _ in range(4):
            assert c.get("/").status == 200
        for _ in range(4):
            c.send(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
            assert c.read_response().status == 200    # nothing was sent: safe to try elsewhere
        assert lb.bal.counters["retries"] >= 4
        assert lb.bal.counters["error_502"] == 0
        assert all(s.inflight == 0 for s in lb.bal.pool)
    finally:
        lb.stop()
        up.close()


def test_post_is_never_replayed_after_bytes_reached_a_server():
    def swallow(conn: socket.socket) -> None:
        head = read_request_head(conn)      # read the request, then reset without answering
        if head:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    bad = RawServer(swallow)
    good = RawServer(ok_handler)
    lb = InProcess(make_config([bad.port, good.port], balancer={"strategy": "round-robin"},
                               outlier=NO_OUTLIER))
    try:
        statuses = []
        for _ in range(2):
            c = Client(lb.port)
            c.send(b"POST /pay HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
            statuses.append(c.read_response().status)
            c.close()
        assert sorted(statuses) == [200, 502]       # the one sent to `bad` is not replayed
        assert lb.bal.counters["retries"] == 0
        # The same failure for an idempotent GET is retried on the other server.
        assert [http_get(lb.port, "/").status for _ in range(2)] == [200, 200]
        assert lb.bal.counters["retries"] >= 1
    finally:
        lb.stop()
        bad.close()
        good.close()


def test_502_on_invalid_upstream_response():
    def garbage(conn: socket.socket) -> None:
        if read_request_head(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Header Name: x\r\n\r\nok")
            time.sleep(0.5)

    up = RawServer(garbage)
    lb = InProcess(make_config([up.port]))
    try:
        assert http_get(lb.port, "/").status == 502
        assert lb.bal.counters["error_502"] == 1
    finally:
        lb.stop()
        up.close()


def test_504_on_upstream_response_timeout(procs):
    b1 = procs.backend("b1")
    with InProcess(make_config([b1], timeouts={"upstream_response": "500ms"})) as lb:
        start = time.monotonic()
        c = Client(lb.port)
        r = c.get("/delay/3000")
        assert r.status == 504
        assert time.monotonic() - start < 2.5
        assert lb.bal.counters["error_504"] == 1 and lb.bal.counters["retries"] == 0
        assert c.get("/").status == 200          # the client connection survives


def test_response_cut_midway_is_cut_for_the_client_too():
    def cut(conn: socket.socket) -> None:
        if read_request_head(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            time.sleep(0.2)

    up = RawServer(cut)
    lb = InProcess(make_config([up.port]))
    try:
        c = Client(lb.port)
        r = c.get("/")
        assert r.status == 200 and not r.complete and bytes(r.body) == b"0123456789"
        assert wait_until(lambda: lb.bal.counters["upstream_aborted"] == 1)
    finally:
        lb.stop()
        up.close()


def test_retry_budget_stops_retry_storms():
    up = RawServer(ok_handler)
    lb = InProcess(make_config([refused_port(), up.port], balancer={"strategy": "round-robin",
                                                                   "retry_budget": 0.0},
                               outlier=NO_OUTLIER))
    try:
        c = Client(lb.port)
        statuses = [c.get("/").status for _ in range(260)]
        c.close()
        # The budget's reserve (10/s over a 10 s window) allows ~100 retries; then failures show.
        assert lb.bal.counters["retry_budget_exhausted"] > 0
        assert 90 <= lb.bal.counters["retries"] <= 110
        assert statuses.count(502) == lb.bal.counters["retry_budget_exhausted"]
    finally:
        lb.stop()
        up.close()


def test_outlier_detection_ejects_failing_server():
    up = RawServer(ok_handler)
    lb = InProcess(make_config([refused_port(), up.port], balancer={"strategy": "round-robin"},
                               outlier={"consecutive_failures": 2, "base_ejection": "30s"}))
    try:
        for _ in range(10):
            assert http_get(lb.port, "/").status == 200
        dead = lb.bal.pool.servers[0]
        assert dead.ejected_until > 0
        assert any(e["kind"] == "ejected" and e["server"] == dead.name for e in lb.bal.events)
        retries = lb.bal.counters["retries"]
        for _ in range(10):
            assert http_get(lb.port, "/").status == 200
        assert lb.bal.counters["retries"] == retries      # no longer tried while ejected
    finally:
        lb.stop()
        up.close()


def test_inflight_counts_while_a_request_runs(procs):
    b1 = procs.backend("b1")
    with InProcess(make_config([b1])) as lb:
        srv = lb.bal.pool.servers[0]
        result = []
        t = threading.Thread(target=lambda: result.append(http_get(lb.port, "/delay/800").status))
        t.start()
        assert wait_until(lambda: srv.inflight == 1, 5)
        t.join(10)
        assert result == [200] and srv.inflight == 0 and srv.requests == 1


def test_stale_pooled_connection_is_retried_fresh_for_get_but_not_for_post():
    def one_per_connection(conn: socket.socket) -> None:
        # Answers the first request; a second one on the same connection finds it closed, as if
        # the server's keep-alive timeout had raced the proxy's reuse.
        if read_request_head(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        if read_request_head(conn):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    up = RawServer(one_per_connection)
    lb = InProcess(make_config([up.port]))
    try:
        c = Client(lb.port)
        assert c.get("/").status == 200
        assert c.get("/").status == 200                  # retried on a fresh connection
        srv = lb.bal.pool.servers[0]
        assert lb.bal.counters["stale_connection_retries"] == 1
        assert srv.failures == 0 and lb.bal.counters["retries"] == 0
        c.send(b"POST /pay HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc")
        assert c.read_response().status == 502            # bytes reached the server: no replay
    finally:
        lb.stop()
        up.close()


def test_post_does_not_reuse_a_connection_idle_for_long():
    def handler(conn: socket.socket) -> None:
        while read_request_head(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    up = RawServer(handler)
    lb = InProcess(make_config([up.port]))
    try:
        c = Client(lb.port)
        assert c.get("/").status == 200
        time.sleep(1.3)
        c.send(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\na")
        assert c.read_response().status == 200
        assert up.accepted == 2                            # a fresh connection for the POST
        c.send(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\na")
        assert c.read_response().status == 200
        assert up.accepted == 2                            # reused while recently busy
    finally:
        lb.stop()
        up.close()


def test_an_internal_error_after_connecting_fails_the_request_instead_of_hanging(procs):
    """The safety net under the connect callback: whatever raises in it, the owner is told (and
    the fresh connection closed), so the request gets an answer; the exchange answers 502."""
    import asyncio

    import uvloop

    from taxiway.balancing.model import Server
    from taxiway.proxy.upstream import UpstreamPool

    port = procs.backend("b1")

    class Owner:
        def __init__(self) -> None:
            self.failed = False
            self.conn = None

        def on_connected(self, conn) -> None:
            self.conn = conn
            raise RuntimeError("a bug")

        def on_connect_failed(self, timed_out: bool) -> None:
            raise AssertionError("not a connect failure")

        def on_internal_error(self) -> None:
            self.failed = True

    async def run() -> Owner:
        pool = UpstreamPool(Server(name="b1", host="127.0.0.1", port=port), asyncio.get_running_loop(),
                            4, 2.0)
        owner = Owner()
        await pool._connect(owner)
        return owner

    owner = uvloop.run(run())
    assert owner.failed and owner.conn is not None and owner.conn.closed

    # The exchange's side: a request in flight answered 502 and the connection closed.
    silent = RawServer(lambda conn: (read_request_head(conn), time.sleep(3)))
    lb = InProcess(make_config([silent.port]))
    try:
        c = Client(lb.port)
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert wait_until(lambda: any(p.current is not None for p in list(lb.bal.protocols)))
        lb.run(lambda: next(p.current for p in list(lb.bal.protocols) if p.current).on_internal_error())
        r = c.read_response()
        assert r.status == 502 and r.header("Connection") == "close"
        assert lb.bal.counters["internal_errors"] == 1
    finally:
        lb.stop()
        silent.close()
