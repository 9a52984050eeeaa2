"""AdminServer over real sockets (a stand-in balancer in a background event loop), and the
`taxiway status` verb as a real subprocess against it."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from taxiway.admin.api import AdminServer, host_status, is_loopback
from taxiway.balancing.model import Server
from taxiway.proxy.app import Balancer
from tests.conftest import free_port, run_cli
from tests.test_admin_status import make_balancer


class Running:
    def __init__(self, balancer: Balancer, host: str = "127.0.0.1",
                 allowed_hosts: tuple[str, ...] = (), port: int = 0) -> None:
        self.balancer = balancer
        self.connect_to = "::1" if ":" in host else "127.0.0.1"   # asyncio binds "::" IPv6-only
        self.loop = asyncio.new_event_loop()
        self.admin = AdminServer(balancer, allowed_hosts)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self.admin.start(host, port), self.loop).result(10)

    def get(self, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.connect_to, self.port, timeout=10)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.admin.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def admin() -> Iterator[Running]:
    import time
    b = make_balancer()
    b.started_at = time.time() - 42.0
    r = Running(b)
    try:
        yield r
    finally:
        r.stop()


def test_status_json_reflects_live_state(admin: Running) -> None:
    status, headers, body = admin.get("/status")
    assert status == 200 and headers["content-type"] == "application/json"
    data = json.loads(body)
    assert [s["name"] for s in data["servers"]] == ["a", "b"]
    assert data["totals"]["requests"] == 0

    a = admin.balancer.pool.get("a")
    assert a is not None
    a.requests, a.inflight = 12, 1
    admin.balancer.counters["requests"] = 12
    admin.balancer.pool.add(Server("c", "127.0.0.1", 9003), now=0.0)
    data = json.loads(admin.get("/status?pretty=1")[2])
    assert data["totals"]["requests"] == 12 and data["totals"]["inflight"] == 1
    assert data["counters"]["requests"] == 12
    assert [s["name"] for s in data["servers"]] == ["a", "b", "c"]
    assert data["uptime_s"] >= 42.0  # started_at is wall-clock time (time.time() - 42 s)


def test_metrics_prometheus_exposition(admin: Running) -> None:
    admin.balancer.counters.update({"requests": 3, "responses_2xx": 3})
    status, headers, body = admin.get("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert fams["taxiway_requests"].samples[0].value == 3
    assert {s.labels["server"] for s in fams["taxiway_server_up"].samples} == {"a", "b"}


@pytest.mark.parametrize(("method", "path", "expected"), [
    pytest.param("GET", "/nope", 404, id="unknown-path"),
    pytest.param("POST", "/status", 405, id="post"),
    pytest.param("DELETE", "/metrics", 405, id="delete"),
    pytest.param("HEAD", "/status", 200, id="head"),
])
def test_routes_and_methods(admin: Running, method: str, path: str, expected: int) -> None:
    status, headers, body = admin.get(path, method)
    assert status == expected
    if expected == 405:
        assert headers["allow"] == "GET, HEAD"
    if method == "HEAD":
        assert body == b"" and int(headers["content-length"]) > 0


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_keep_alive_then_close(admin: Running) -> None:
    out = _raw(admin.port, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /metrics HTTP/1.1\r\n"
                           b"Host: localhost\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200 OK") == 2 and b"taxiway_requests_total" in out


@pytest.mark.parametrize(("request_bytes", "status"), [
    pytest.param(b"GARBAGE\r\n\r\n", b"400", id="bad-request-line"),
    pytest.param(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Name: x\r\n\r\n", b"400",
                 id="space-in-header-name"),
    pytest.param(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431",
                 id="huge-head"),
    pytest.param(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello", b"413",
                 id="body"),
])
def test_bad_requests_get_a_status_and_close(admin: Running, request_bytes: bytes, status: bytes) -> None:
    out = _raw(admin.port, request_bytes)
    assert out.startswith(b"HTTP/1.1 " + status) and b"Connection: close" in out
    # The listener survives and still answers.
    assert admin.get("/status")[0] == 200


# -- Host check (DNS rebinding) and the non-loopback warning -----------------------------------------


@pytest.mark.parametrize(("host", "version", "expected"), [
    pytest.param("127.0.0.1", "HTTP/1.1", None, id="ipv4"),
    pytest.param("127.0.0.1:9901", "HTTP/1.1", None, id="ipv4-port"),
    pytest.param("10.1.2.3:9901", "HTTP/1.1", None, id="other-ipv4-literal"),
    pytest.param("127.0.0.1:", "HTTP/1.1", None, id="empty-port"),
    pytest.param("localhost", "HTTP/1.1", None, id="localhost"),
    pytest.param("LocalHost:9901", "HTTP/1.1", None, id="localhost-any-case"),
    pytest.param("[::1]:9901", "HTTP/1.1", None, id="ipv6-port"),
    pytest.param("[2001:db8::1]", "HTTP/1.1", None, id="ipv6"),
    pytest.param(None, "HTTP/1.0", None, id="http10-may-omit-host"),
    pytest.param("evil.example", "HTTP/1.1", 421, id="name"),
    pytest.param("evil.example:9901", "HTTP/1.1", 421, id="name-port"),
    pytest.param("localhost.evil.example", "HTTP/1.1", 421, id="localhost-prefix"),
    pytest.param("127.0.0.1.nip.io", "HTTP/1.1", 421, id="ip-looking-name"),
    pytest.param("evil.example", "HTTP/1.0", 421, id="name-on-http10"),
    pytest.param(None, "HTTP/1.1", 400, id="missing"),
    pytest.param("", "HTTP/1.1", 400, id="empty"),
    pytest.param(":9901", "HTTP/1.1", 400, id="port-only"),
    pytest.param("::1", "HTTP/1.1", 400, id="unbracketed-ipv6"),
    pytest.param("[::1", "HTTP/1.1", 400, id="unclosed-bracket"),
    pytest.param("[evil.example]", "HTTP/1.1", 400, id="name-in-brackets"),
    pytest.param("[::1]x", "HTTP/1.1", 400, id="junk-after-bracket"),
    pytest.param("127.0.0.1:http", "HTTP/1.1", 400, id="non-numeric-port"),
    pytest.param("127.0.0.1:123456", "HTTP/1.1", 400, id="port-too-long"),
])
def test_host_status(host: str | None, version: str, expected: int | None) -> None:
    assert host_status(host, version) == expected


def test_host_status_allow_list() -> None:
    assert host_status("lb1.internal:9901", "HTTP/1.1", frozenset({"lb1.internal"})) is None
    assert host_status("LB1.Internal", "HTTP/1.1", frozenset({"lb1.internal"})) is None
    assert host_status("lb2.internal", "HTTP/1.1", frozenset({"lb1.internal"})) == 421


@pytest.mark.parametrize(("address", "expected"), [
    pytest.param("127.0.0.1", True, id="v4-loopback"),
    pytest.param("127.8.9.10", True, id="v4-loopback-net"),
    pytest.param("::1", True, id="v6-loopback"),
    pytest.param("::ffff:127.0.0.1", True, id="v4-mapped-loopback"),
    pytest.param("0.0.0.0", False, id="v4-any"),
    pytest.param("::", False, id="v6-any"),
    pytest.param("", False, id="empty-means-all"),
    pytest.param("10.0.0.1", False, id="private"),
    pytest.param("fe80::1%eth0", False, id="link-local-with-zone"),
    pytest.param("localhost", False, id="name"),
])
def test_is_loopback(address: str, expected: bool) -> None:
    assert is_loopback(address) is expected


@pytest.mark.parametrize("host_line", [
    pytest.param(b"Host: evil.example\r\n", id="rebound-name"),
    pytest.param(b"Host: evil.example:%d\r\n", id="rebound-name-with-port"),
])
def test_rebound_host_is_refused_with_421_byte_by_byte(admin: Running, host_line: bytes) -> None:
    if b"%d" in host_line:
        host_line = host_line % admin.port
    request = b"GET /status HTTP/1.1\r\n" + host_line + b"\r\n"
    with socket.create_connection(("127.0.0.1", admin.port), timeout=10) as s:
        for i in range(len(request)):          # the attack fed byte by byte
            s.sendall(request[i:i + 1])
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out.startswith(b"HTTP/1.1 421 Misdirected Request\r\n") and b"Connection: close" in out
    assert b"servers" not in out, "no status data in the refusal"


@pytest.mark.parametrize(("request_bytes", "status"), [
    pytest.param(b"GET /status HTTP/1.1\r\n\r\n", b"400", id="missing-host-http11"),
    pytest.param(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n", b"400",
                 id="two-hosts"),
    pytest.param(b"GET /metrics HTTP/1.1\r\nHost: evil.example\r\n\r\n", b"421", id="metrics-too"),
    pytest.param(b"GET /status HTTP/1.0\r\nHost: evil.example\r\n\r\n", b"421", id="http10-name"),
    pytest.param(b"GET /status HTTP/1.0\r\n\r\n", b"200", id="http10-without-host"),
])
def test_host_header_checked_on_every_request(admin: Running, request_bytes: bytes, status: bytes) -> None:
    out = _raw(admin.port, request_bytes)
    assert out.startswith(b"HTTP/1.1 " + status + b" "), out[:80]


@pytest.mark.parametrize("host", [
    pytest.param("127.0.0.1:{port}", id="ipv4-port"),
    pytest.param("localhost:{port}", id="localhost-port"),
    pytest.param("[::1]:{port}", id="ipv6-port"),
    pytest.param("admin.internal:{port}", id="allow-listed-name"),
])
def test_ip_literal_localhost_and_allow_listed_hosts_are_served(host: str) -> None:
    r = Running(make_balancer(), allowed_hosts=("Admin.Internal",))
    try:
        value = host.format(port=r.port).encode()
        out = _raw(r.port, b"GET /status HTTP/1.1\r\nHost: " + value + b"\r\n\r\n"
                           b"GET /metrics HTTP/1.1\r\nHost: " + value + b"\r\nConnection: close\r\n\r\n")
        assert out.count(b"HTTP/1.1 200 OK") == 2, out[:200]
    finally:
        r.stop()


def test_a_rebound_request_after_a_good_one_is_still_refused(admin: Running) -> None:
    out = _raw(admin.port, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                           b"GET /status HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    assert out.count(b"HTTP/1.1 200 OK") == 1 and b"HTTP/1.1 421 " in out


@pytest.mark.parametrize(("bind", "warned"), [
    pytest.param("0.0.0.0", True, id="v4-any"),
    pytest.param("", True, id="empty-all-interfaces"),
    pytest.param("::", True, id="v6-any"),
    pytest.param("127.0.0.1", False, id="v4-loopback"),
    pytest.param("::1", False, id="v6-loopback"),
    pytest.param("localhost", False, id="localhost"),
])
def test_non_loopback_bind_logs_a_warning(caplog: pytest.LogCaptureFixture, bind: str, warned: bool) -> None:
    with caplog.at_level(logging.INFO, logger="taxiway.admin"):
        # A fixed port: with port 0, "" would bind 0.0.0.0 and :: on two different ports.
        r = Running(make_balancer(), host=bind, port=free_port())
        try:
            # Still served on loopback, with the Host check, whatever the bind.
            assert r.get("/status")[0] == 200
        finally:
            r.stop()
    warnings = [rec for rec in caplog.records
                if rec.levelno == logging.WARNING and rec.name == "taxiway.admin"]
    if not warned:
        assert warnings == []
        return
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "reachable from the network" in msg and "/status and /metrics expose internals" in msg
    assert str(r.port) in msg


def test_status_verb_names_the_address_it_reached_in_host(tmp_path: object) -> None:
    """`taxiway status --admin NAME:PORT` sends Host: <IP>:PORT, which the Host check accepts."""
    seen: list[bytes] = []
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            seen.append(data)
            body = b'{"servers": []}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        out = _status_cli("--admin", f"localhost:{port}", "--json")
    finally:
        t.join(10)
        srv.close()
    assert out.returncode == 0, out.stderr
    assert f"\r\nHost: 127.0.0.1:{port}\r\n".encode() in seen[0]


def _status_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("status", *args)


def test_status_verb_prints_table_and_json(admin: Running) -> None:
    admin.balancer.pool.get("b").healthy = False  # type: ignore[union-attr]
    admin.balancer.events.append({"at": 1.7e9, "kind": "down", "server": "b", "detail": "GET /healthz: 503"})
    out = _status_cli("--admin", f"127.0.0.1:{admin.port}")
    assert out.returncode == 0, out.stderr
    assert "127.0.0.1:9001" in out.stdout and "down" in out.stdout and "GET /healthz: 503" in out.stdout
    js = _status_cli("--admin", f"127.0.0.1:{admin.port}", "--json")
    assert js.returncode == 0 and json.loads(js.stdout)["servers"][1]["state"] == "down"


def test_status_verb_reads_admin_address_from_config(admin: Running, tmp_path: object) -> None:
    from pathlib import Path
    cfg = Path(str(tmp_path)) / "lb.toml"
    cfg.write_text(f'[admin]\nlisten = "127.0.0.1:{admin.port}"\n[[servers]]\nurl = "http://127.0.0.1:9001"\n')
    out = _status_cli("--config", str(cfg), "--json")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["servers"]) == 2


def test_status_verb_one_line_error_when_nothing_answers() -> None:
    port = free_port()
    out = _status_cli("--admin", f"127.0.0.1:{port}")
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "Traceback" not in out.stderr


def test_status_verb_bad_address() -> None:
    out = _status_cli("--admin", "nonsense")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


def test_status_verb_when_admin_is_off_in_config(tmp_path: object) -> None:
    from pathlib import Path
    cfg = Path(str(tmp_path)) / "lb.toml"
    cfg.write_text('[admin]\nlisten = ""\n[[servers]]\nurl = "http://127.0.0.1:9001"\n')
    out = _status_cli("--config", str(cfg))
    assert out.returncode == 2 and "admin API is off" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_admin_allowed_hosts_from_the_config() -> None:
    """`admin.allowed_hosts` reaches the admin listener: a listed name is served, others get 421."""
    from tests.proxy_support import InProcess, make_config

    with InProcess(make_config([], admin={"listen": "127.0.0.1:0", "allowed_hosts": ["lb1.internal"]})) as b:
        port = b.admin_port
        assert port is not None
        answers = []
        for host in (b"lb1.internal:9901", b"evil.example"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /status HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
                answers.append(s.recv(65536).split(b" ", 2)[1])
        assert answers == [b"200", b"421"]
