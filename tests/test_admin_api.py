"""AdminServer over real sockets (a stand-in balancer in a background event loop), and the
`taxiway status` verb as a real subprocess against it."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from taxiway.admin.api import AdminServer
from taxiway.balancing.model import Server
from tests.conftest import free_port, taxiway_env
from tests.test_admin_status import StandIn, make_balancer


class Running:
    def __init__(self, balancer: StandIn) -> None:
        self.balancer = balancer
        self.loop = asyncio.new_event_loop()
        self.admin = AdminServer(balancer)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self.admin.start("127.0.0.1", 0), self.loop).result(10)

    def get(self, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
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
    out = _raw(admin.port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n"
                           b"Connection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200 OK") == 2 and b"taxiway_requests_total" in out


@pytest.mark.parametrize(("request_bytes", "status"), [
    pytest.param(b"GARBAGE\r\n\r\n", b"400", id="bad-request-line"),
    pytest.param(b"GET /status HTTP/1.1\r\nBad Name: x\r\n\r\n", b"400", id="space-in-header-name"),
    pytest.param(b"GET /status HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431", id="huge-head"),
    pytest.param(b"GET /status HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", b"413", id="body"),
])
def test_bad_requests_get_a_status_and_close(admin: Running, request_bytes: bytes, status: bytes) -> None:
    out = _raw(admin.port, request_bytes)
    assert out.startswith(b"HTTP/1.1 " + status) and b"Connection: close" in out
    # The listener survives and still answers.
    assert admin.get("/status")[0] == 200


def _status_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "taxiway", "status", *args], capture_output=True, text=True,
                          env=taxiway_env(), timeout=60)


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
