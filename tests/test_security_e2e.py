"""Attacks performed against a real `taxiway lb` process in front of real backends.

Two client addresses: 127.0.0.1 and 127.0.0.2 are both loopback on Linux, so binding the client
socket to one or the other makes the balancer see two different clients.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Processes, free_port, taxiway_env, wait_for_port
from tests.proxy_support import toml_value
from tests.services import RedisTarget

ATTACKER = "127.0.0.2"
USER = "127.0.0.1"


def write_config(path: Path, backends: list[int], sections: dict[str, dict[str, Any]],
                 tables: dict[str, list[dict[str, Any]]] | None = None) -> Path:
    """TOML with [sections] and [[array.tables]] (rate-limit rules, key routes)."""
    doc: dict[str, dict[str, Any]] = {"admin": {"listen": "127.0.0.1:0"}, "health": {"enabled": False},
                                      "access_log": {"enabled": False}}
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    lines: list[str] = []
    for name, values in doc.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    for name, items in (tables or {}).items():
        for item in items:
            lines.append(f"[[{name}]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
    for p in backends:
        lines += ["[[servers]]", f'url = "http://127.0.0.1:{p}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def start_lb(procs: Processes, cfg: Path, port: int, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    proc = procs.taxiway("lb", "--config", str(cfg), cwd=cwd)
    wait_for_port(port, proc=proc)
    return proc


class Conn:
    """A keep-alive HTTP/1.1 connection from a chosen source address."""

    def __init__(self, port: int, source: str = USER) -> None:
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=15, source_address=(source, 0))

    def get(self, path: str = "/", headers: dict[str, str] | None = None,
            method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        try:
            self.c.request(method, path, headers=headers or {})
            r = self.c.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.c.close()
            self.c.request(method, path, headers=headers or {})
            r = self.c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body

    def close(self) -> None:
        self.c.close()


def wait_until(cond: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


# -- a flood from one address ---------------------------------------------------------------------


@pytest.mark.slow
def test_flood_from_one_address_gets_429_while_another_is_served(procs: Processes, tmp_path: Path) -> None:
    b = procs.backend("b1")
    port = free_port()
    cfg = write_config(tmp_path / "lb.toml", [b], {"listen": {"http": f"127.0.0.1:{port}"}},
                       {"ratelimit.rules": [{"name": "per-ip", "rate": "10/m", "burst": 9}]})
    start_lb(procs, cfg, port)
    attacker, user = Conn(port, ATTACKER), Conn(port, USER)
    # Forged X-Forwarded-For from an untrusted peer must not give each request a fresh allowance.
    statuses = [attacker.get("/", {"X-Forwarded-For": f"10.9.{i // 250}.{i % 250}"})[0] for i in range(60)]
    assert statuses[:10] == [200] * 10
    assert statuses[10:].count(429) == 50
    status, headers, body = attacker.get("/")
    assert status == 429 and b"too many requests" in body
    assert int(headers["retry-after"]) >= 1
    assert headers["ratelimit-limit"] == "10" and headers["ratelimit-remaining"] == "0"
    assert "ratelimit-reset" in headers
    # The other address is served throughout.
    for _ in range(5):
        status, headers, body = user.get("/")
        assert status == 200 and body == b"hello from b1\n"
    attacker.close()
    user.close()


# -- API keys -------------------------------------------------------------------------------------


def _keys(cwd: Path, *args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "taxiway", "keys", *args], cwd=cwd, env=taxiway_env(),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.mark.slow
def test_api_calls_without_wrong_revoked_and_unscoped_keys(procs: Processes, tmp_path: Path) -> None:
    b = procs.backend("b1")
    port = free_port()
    reader = _keys(tmp_path, "create", "reader", "--scope", "flights:read")
    writer = _keys(tmp_path, "create", "writer", "--scope", "flights:read", "--scope", "flights:write")
    cfg = write_config(tmp_path / "lb.toml", [b], {"listen": {"http": f"127.0.0.1:{port}"}},
                       {"apikeys.routes": [{"path_prefix": "/api", "scopes": ["flights:read"]},
                                           {"path_prefix": "/api/bookings", "methods": ["POST"],
                                            "scopes": ["flights:write"]}]})
    proc = start_lb(procs, cfg, port, cwd=tmp_path)
    c = Conn(port)
    assert c.get("/")[0] == 200                                    # public
    status, headers, _ = c.get("/api/flights")                     # no key
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    for trick in ("//api/flights", "/%61pi/flights", "/static/../api/flights"):
        assert c.get(trick)[0] == 401, trick
    wrong = reader[:-4] + ("AAAA" if not reader.endswith("AAAA") else "BBBB")
    status, headers, _ = c.get("/api/flights", {"Authorization": f"Bearer {wrong}"})
    assert status == 401 and "invalid_token" in headers["www-authenticate"]
    status, _, body = c.get("/api/flights", {"Authorization": f"Bearer {reader}"})
    assert status == 200 and body == b"hello from b1\n"
    assert c.get("/api/flights", {"X-API-Key": reader})[0] == 200
    status, headers, _ = c.get("/api/bookings", {"X-API-Key": reader}, method="POST")
    assert status == 403 and "insufficient_scope" in headers["www-authenticate"]
    assert c.get("/api/bookings", {"X-API-Key": writer}, method="POST")[0] == 200
    # Revoke while the balancer runs: refused within a few seconds, no restart.
    _keys(tmp_path, "revoke", "reader")
    assert wait_until(lambda: c.get("/api/flights", {"X-API-Key": reader})[0] == 401)
    assert c.get("/api/flights", {"X-API-Key": writer})[0] == 200
    c.close()
    proc.terminate()
    out = proc.communicate(timeout=30)[0].decode(errors="replace")
    for key in (reader, writer, wrong):
        assert key not in out, "an API key reached the balancer's log"
    assert "refused at the edge: apikey missing" in out          # the first refusal, at once
    assert "apikey 'reader' revoked" in out                        # in the summary, by name


@pytest.mark.slow
def test_case_matrix_params_trailing_dots_and_head_do_not_bypass_key_routes_or_limits(
        procs: Processes, tmp_path: Path) -> None:
    b = procs.backend("b1")
    port = free_port()
    reader = _keys(tmp_path, "create", "reader", "--scope", "flights:read")
    cfg = write_config(tmp_path / "lb.toml", [b], {"listen": {"http": f"127.0.0.1:{port}"}},
                       {"apikeys.routes": [{"path_prefix": "/api", "methods": ["GET"],
                                            "scopes": ["flights:read"]}],
                        "ratelimit.rules": [{"name": "search", "rate": "1/h", "path_prefix": "/Search",
                                             "methods": ["GET"]}]})
    start_lb(procs, cfg, port, cwd=tmp_path)
    c = Conn(port)
    tricks = ["/API/flights", "/Api", "/api;jsessionid=1/flights", "/public/..;/api/flights", "/api./flights",
              "/api.", "/api%20/flights", "/api%20", "/api%2e/flights", "/aPi%3bx/flights"]
    for trick in tricks:
        assert c.get(trick)[0] == 401, trick
        assert c.get(trick, method="HEAD")[0] == 401, f"HEAD {trick}"
    assert c.get("/api/flights", {"X-API-Key": reader}, method="HEAD")[0] == 200
    assert c.get("/API;x/flights", {"X-API-Key": reader})[0] == 200   # guarded, not refused
    assert c.get("/apix")[0] == 200 and c.get("/api", method="POST")[0] == 200   # outside the route
    # The rule's prefix "/Search" is normalised too; HEAD uses up GET's allowance.
    assert c.get("/search", method="HEAD")[0] == 200
    assert c.get("/SEARCH.;q=1")[0] == 429
    c.close()
    # The same attack fed byte by byte on a raw socket.
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        request = b"HEAD /API;v=1/flights. HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        for i in range(len(request)):
            s.sendall(request[i:i + 1])
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    assert out.startswith(b"HTTP/1.1 401 "), out[:80]


# -- two balancers sharing Redis ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.redis
def test_two_balancers_sharing_redis_hold_a_combined_limit(procs: Processes, tmp_path: Path,
                                                           redis_server: RedisTarget) -> None:
    # A burst tolerance of 1 s means a client stall (loaded CI machine) shorter than that loses nothing.
    rate_per_s, burst, duration_s = 20, 20, 6.0
    b = procs.backend("b1")
    ports = []
    for i in range(2):
        port = free_port()
        store = {"store": "redis", "redis_url": redis_server.url, "key_prefix": redis_server.prefix}
        rule = {"name": "all", "key": "global", "rate": f"{rate_per_s}/s", "burst": burst}
        cfg = write_config(tmp_path / f"lb{i}.toml", [b],
                           {"listen": {"http": f"127.0.0.1:{port}"}, "ratelimit": store},
                           {"ratelimit.rules": [rule]})
        start_lb(procs, cfg, port)
        ports.append(port)
    served = [0, 0]
    lock = threading.Lock()
    first: list[float] = []
    last: list[float] = []
    stop_at = time.monotonic() + duration_s + 0.5

    def hammer(idx: int) -> None:
        c = Conn(ports[idx])
        try:
            while True:
                t = time.monotonic()
                if t >= stop_at:
                    return
                status = c.get("/")[0]
                with lock:
                    first.append(t) if not first else None
                    last.append(t)
                    if status == 200:
                        served[idx] += 1
        finally:
            c.close()

    threads = [threading.Thread(target=hammer, args=(i % 2,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    elapsed = max(last) - min(first)
    expected = 1 + burst + rate_per_s * elapsed
    total = sum(served)
    assert served[0] > 0 and served[1] > 0, "both balancers must have served requests"
    assert abs(total - expected) / expected < 0.05, (served, expected)


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "status"), [("open", 200), ("closed", 503)])
def test_unreachable_redis_fails_open_or_closed_and_logs(procs: Processes, tmp_path: Path,
                                                         mode: str, status: int) -> None:
    b = procs.backend("b1")
    port = free_port()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    cfg = write_config(tmp_path / "lb.toml", [b], {
        "listen": {"http": f"127.0.0.1:{port}"},
        "ratelimit": {"store": "redis", "redis_url": dead, "on_store_error": mode}},
        {"ratelimit.rules": [{"name": "per-ip", "rate": "1/h"}]})
    proc = start_lb(procs, cfg, port)
    c = Conn(port)
    assert [c.get("/")[0] for _ in range(3)] == [status] * 3
    c.close()
    proc.terminate()
    out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert f"on_store_error = {mode}" in out


@pytest.mark.slow
def test_redis_password_never_reaches_the_log(procs: Processes, tmp_path: Path) -> None:
    b = procs.backend("b1")
    port, dead = free_port(), free_port()
    secret = "hunter2-s3cret"
    cfg = write_config(tmp_path / "lb.toml", [b], {
        "listen": {"http": f"127.0.0.1:{port}"},
        "ratelimit": {"store": "redis", "redis_url": f"redis://app:{secret}@127.0.0.1:{dead}/0",
                      "on_store_error": "open"}},
        {"ratelimit.rules": [{"name": "per-ip", "rate": "1/h"}]})
    proc = start_lb(procs, cfg, port)
    c = Conn(port)
    assert [c.get("/")[0] for _ in range(3)] == [200] * 3
    c.close()
    proc.terminate()
    out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert "on_store_error = open" in out, out
    assert secret not in out
    assert f"redis://app:***@127.0.0.1:{dead}/0" in out


# -- slowloris and per-client connection caps -------------------------------------------------------


@pytest.mark.slow
def test_slowloris_is_cut_off_while_normal_clients_are_served(procs: Processes, tmp_path: Path) -> None:
    b = procs.backend("b1")
    port = free_port()
    cfg = write_config(tmp_path / "lb.toml", [b], {
        "listen": {"http": f"127.0.0.1:{port}"},
        "timeouts": {"client_header": "2s", "client_body": "2s"},
        "limits": {"max_connections_per_client": 40}})
    start_lb(procs, cfg, port)
    # 60 slow connections from the attacker: 40 allowed in, each dribbling header bytes.
    slow: list[socket.socket] = []
    for _ in range(60):
        s = socket.socket()
        s.settimeout(10)
        s.bind((ATTACKER, 0))
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        except OSError:
            s.close()
            continue
        slow.append(s)
    started = time.monotonic()
    served = 0
    while time.monotonic() - started < 3.5:
        for s in slow:
            try:
                s.send(b"X-a: b\r\n")   # data must not extend the header deadline
            except OSError:
                pass
        c = Conn(port, USER)
        status, _, body = c.get("/")
        c.close()
        assert status == 200 and body == b"hello from b1\n"
        served += 1
        time.sleep(0.3)
    assert served >= 5
    # By now (> client_header) every slow connection has been closed by the balancer.
    closed = 0
    for s in slow:
        s.settimeout(5)
        try:
            data = s.recv(65536)
            while data:
                data = s.recv(65536)
            closed += 1
        except (ConnectionResetError, BrokenPipeError):
            closed += 1
        except TimeoutError:
            pass
        finally:
            s.close()
    assert closed == len(slow)


@pytest.mark.slow
def test_connection_cap_per_client_address(procs: Processes, tmp_path: Path) -> None:
    b = procs.backend("b1")
    port = free_port()
    cfg = write_config(tmp_path / "lb.toml", [b], {
        "listen": {"http": f"127.0.0.1:{port}"}, "limits": {"max_connections_per_client": 5}})
    start_lb(procs, cfg, port)
    held = []
    for _ in range(5):
        c = Conn(port, ATTACKER)
        assert c.get("/")[0] == 200
        held.append(c)
    extra = socket.socket()
    extra.bind((ATTACKER, 0))
    extra.settimeout(5)
    extra.connect(("127.0.0.1", port))
    try:
        extra.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        refused = extra.recv(100) == b""
    except (ConnectionResetError, BrokenPipeError):
        refused = True
    extra.close()
    assert refused, "the sixth connection from one address must be refused"
    assert Conn(port, USER).get("/")[0] == 200
    for c in held:
        c.close()


# -- HTTPS at the edge ----------------------------------------------------------------------------


@pytest.mark.slow
def test_https_tls12_plus_hsts_forwarded_proto_and_redirect(procs: Processes, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "taxiway", "cert", "dev", "--dir", str(tmp_path / "tls")],
                   env=taxiway_env(), check=True, capture_output=True, timeout=60)
    b = procs.backend("b1")
    http_port, https_port = free_port(), free_port()
    cfg = write_config(tmp_path / "lb.toml", [b], {
        "listen": {"http": f"127.0.0.1:{http_port}", "https": f"127.0.0.1:{https_port}",
                   "redirect_to_https": True},
        "listen.tls": {"cert": str(tmp_path / "tls" / "cert.pem"), "key": str(tmp_path / "tls" / "key.pem")},
    })
    proc = procs.taxiway("lb", "--config", str(cfg))
    wait_for_port(https_port, proc=proc)
    wait_for_port(http_port, proc=proc)

    ctx = ssl.create_default_context(cafile=str(tmp_path / "tls" / "ca.pem"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    conn = http.client.HTTPSConnection("localhost", https_port, context=ctx, timeout=15)
    conn.request("GET", "/headers", headers={"X-Forwarded-Proto": "http"})   # a forged scheme
    r = conn.getresponse()
    pairs = [(k.lower(), v) for k, v in json.loads(r.read())]
    assert r.status == 200
    assert [v for k, v in pairs if k == "x-forwarded-proto"] == ["https"]
    assert r.getheader("Strict-Transport-Security", "").startswith("max-age=")
    assert r.getheader("X-Content-Type-Options") == "nosniff"
    conn.close()

    old = ssl.create_default_context(cafile=str(tmp_path / "tls" / "ca.pem"))
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1_1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    # uvloop's TLS closes the connection instead of sending a protocol_version alert: both are refusals.
    with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|UNEXPECTED_EOF"), \
            socket.create_connection(("127.0.0.1", https_port), timeout=10) as raw, \
            old.wrap_socket(raw, server_hostname="localhost"):
        pass

    plain = http.client.HTTPConnection("127.0.0.1", http_port, timeout=15)
    plain.request("GET", "/x?y=1", headers={"Host": "localhost"})
    r = plain.getresponse()
    assert r.status == 308
    assert r.getheader("Location") == f"https://localhost:{https_port}/x?y=1"
    plain.close()


@pytest.mark.slow
def test_slow_request_bodies_are_cut_off_while_normal_clients_are_served(procs: Processes,
                                                                         tmp_path: Path) -> None:
    b = procs.backend("b1")
    port = free_port()
    cfg = write_config(tmp_path / "lb.toml", [b], {
        "listen": {"http": f"127.0.0.1:{port}"}, "timeouts": {"client_body": "1s"}})
    start_lb(procs, cfg, port)
    slow: list[socket.socket] = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(ATTACKER, 0))
        s.sendall(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"a" * 10)
        slow.append(s)
    c = Conn(port, USER)
    assert c.get("/")[0] == 200   # served while the slow bodies stall
    c.close()
    # Each slow upload then stops sending for longer than client_body: the balancer cuts it off.
    closed = 0
    for s in slow:
        s.settimeout(10)
        try:
            data = s.recv(65536)
            while data:
                data = s.recv(65536)
            closed += 1
        except (ConnectionResetError, BrokenPipeError):
            closed += 1
        except TimeoutError:
            pass
        finally:
            s.close()
    assert closed == len(slow)
    c = Conn(port, USER)
    assert c.get("/")[0] == 200
    c.close()
