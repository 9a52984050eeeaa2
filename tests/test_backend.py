"""The built-in test server: other tests and the benchmarks rely on each endpoint behaving."""

from __future__ import annotations

import socket
import time

import httpx

from .conftest import Processes


def test_endpoints(procs: Processes) -> None:
    port = procs.backend("alpha")
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=10) as c:
        r = c.get("/")
        assert r.status_code == 200 and r.text == "hello from alpha\n"
        assert r.headers["x-backend"] == "alpha"
        assert c.get("/healthz").text == "ok"
        assert c.get("/status/503").status_code == 503
        assert len(c.get("/bytes/300000").content) == 300000
        assert len(c.get("/chunked/70000").content) == 70000
        assert c.post("/echo", content=b"abc" * 1000).content == b"abc" * 1000
        assert c.post("/sink", content=b"z" * 123456).text == "123456"
        assert ["X-Probe", "1"] in c.get("/headers", headers={"X-Probe": "1"}).json()
        t0 = time.monotonic()
        c.get("/delay/150")
        assert time.monotonic() - t0 >= 0.15


def test_pipelined_requests_answered_in_order(procs: Processes) -> None:
    port = procs.backend("p")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /delay/100 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/404 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 ") < 2:
            data += s.recv(65536)
    assert data.index(b"200 OK") < data.index(b"404 Not Found")


def test_fail_healthz(procs: Processes) -> None:
    port = procs.backend("sick", None, "--fail-healthz")
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 503
