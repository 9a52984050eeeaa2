"""Streaming with back-pressure (bounded memory) and Upgrade/WebSocket passthrough."""

from __future__ import annotations

import socket
import time

import pytest

from tests.proxy_support import Client, InProcess, RawServer, make_config, read_request_head, start_lb

MB = 1 << 20


def _status_mb(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {key}")


def peak_rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmHWM:")


def rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmRSS:")


@pytest.mark.slow
def test_large_upload_and_download_in_bounded_memory(procs, tmp_path):
    b1 = procs.backend("b1")
    port, proc, _ = start_lb(procs, tmp_path, [b1])
    size = 300 * MB
    c = Client(port, timeout_s=60)
    assert c.get("/").status == 200
    base = rss_mb(proc.pid)
    # Upload: chunked, 300 MB, to /sink (which counts it).
    c.send(b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"%x\r\n%s\r\n" % (MB, b"u" * MB)
    for _ in range(size // MB):
        c.send(piece)
    c.send(b"0\r\n\r\n")
    r = c.read_response()
    assert r.status == 200 and int(r.body) == size
    # Download: 300 MB with Content-Length, counted without keeping it.
    c.send(b"GET /bytes/%d HTTP/1.1\r\nHost: t\r\n\r\n" % size)
    head = b""
    while b"\r\n\r\n" not in head:
        head += c.sock.recv(65536)
    head, _, rest = head.partition(b"\r\n\r\n")
    assert b"200 OK" in head
    got = len(rest)
    while got < size:
        d = c.sock.recv(4 * MB)
        assert d
        got += len(d)
    assert got == size
    growth = peak_rss_mb(proc.pid) - base
    assert growth < 60, f"peak RSS grew by {growth:.0f} MB for a {size // MB} MB transfer"


def test_slow_client_pauses_the_upstream(procs, tmp_path):
    b1 = procs.backend("b1")
    port, proc, _ = start_lb(procs, tmp_path, [b1])
    c = Client(port, timeout_s=30)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    c.send(b"GET /bytes/%d HTTP/1.1\r\nHost: t\r\n\r\n" % (500 * MB))
    time.sleep(2.0)                     # do not read: the proxy must stop reading the backend
    assert rss_mb(proc.pid) < 150
    got = 0
    while got < 20 * MB:                # reading again resumes the flow
        d = c.sock.recv(MB)
        assert d
        got += len(d)
    c.close()


def ws_echo(conn: socket.socket) -> None:
    head = read_request_head(conn)
    if b"upgrade: websocket" not in head.lower():
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        return
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: x\r\n\r\nhello-from-server")
    rest = head.split(b"\r\n\r\n", 1)[1]
    if rest:
        conn.sendall(rest)
    while True:
        d = conn.recv(65536)
        if not d:
            return
        conn.sendall(d)


def test_websocket_upgrade_is_spliced_both_ways():
    up = RawServer(ws_echo)
    lb = InProcess(make_config([up.port]))
    try:
        c = Client(lb.port)
        c.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
               b"Sec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\n\r\n")
        r = c.read_response()
        assert r.status == 101
        assert (r.header("Upgrade") or "").lower() == "websocket"
        data = c._buf
        while len(data) < len(b"hello-from-server"):
            data += c.sock.recv(100)
        assert data == b"hello-from-server"
        for msg in (b"ping", b"x" * 200000, b"pong"):
            c.send(msg)
            got = b""
            while len(got) < len(msg):
                got += c.sock.recv(1 << 20)
            assert got == msg
        assert lb.bal.counters["tunnels"] == 1
        c.close()
    finally:
        lb.stop()
        up.close()


def test_upgrade_refused_by_server_closes_after_answer():
    def refuse(conn: socket.socket) -> None:
        if read_request_head(conn):
            conn.sendall(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope")
            time.sleep(0.5)

    up = RawServer(refuse)
    lb = InProcess(make_config([up.port]))
    try:
        c = Client(lb.port)
        c.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        r = c.read_response()
        assert r.status == 426 and r.body == b"nope"
        assert c.is_closed()
    finally:
        lb.stop()
        up.close()


def test_body_arriving_before_the_upstream_connects_is_forwarded(procs):
    """A fresh balancer has no idle upstream connection, so a large body sent at once is buffered
    while taxiway connects; past the replay limit (64 KiB) it must still be forwarded whole, not
    leave the request hanging."""
    b1, b2 = procs.backend("b1"), procs.backend("b2")
    for size in (1_000_000, 3_000_000):
        with InProcess(make_config([b1, b2])) as lb:
            with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as s:
                s.sendall(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size
                          + b"\0" * size)
                answer = b""
                while b"\r\n\r\n" not in answer or not answer.endswith(str(size).encode()):
                    data = s.recv(65536)
                    assert data, f"connection closed after {answer!r}"
                    answer += data
            assert answer.startswith(b"HTTP/1.1 200 ")
