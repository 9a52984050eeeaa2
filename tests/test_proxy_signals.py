"""`taxiway lb` as a process: SIGTERM drains, SIGHUP reloads, workers, TLS, guards."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import free_port, wait_for_port
from tests.proxy_support import Client, http_get, make_config, start_lb, wait_until


def test_sigterm_finishes_in_flight_then_exits_0(procs, tmp_path):
    b1 = procs.backend("b1")
    port, proc, _ = start_lb(procs, tmp_path, [b1])
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(http_get(port, "/delay/1500").status))
    t.start()
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(OSError):          # no longer accepting
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    t.join(10)
    assert result == [200]                # the request in flight was finished
    assert proc.wait(10) == 0


def test_sigterm_deadline_cuts_long_requests(procs, tmp_path):
    b1 = procs.backend("b1")
    port, proc, _ = start_lb(procs, tmp_path, [b1], timeouts={"shutdown": "500ms"})
    c = Client(port)
    c.send(b"GET /delay/10000 HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(0.3)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - start < 5
    assert c.is_closed(1)


def test_sighup_adds_reweights_and_removes_servers_without_dropping_connections(procs, tmp_path):
    b1, b2 = procs.backend("b1"), procs.backend("b2")
    port, proc, path = start_lb(procs, tmp_path, [b1], balancer={"strategy": "round-robin"})
    c = Client(port)                       # a keep-alive connection that must survive reloads
    assert c.get("/").header("X-Backend") == "b1"
    path.write_text(make_config([b1, b2], port, balancer={"strategy": "round-robin"}))
    proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: c.get("/").header("X-Backend") == "b2")
    seen = {c.get("/").header("X-Backend") for _ in range(6)}
    assert seen == {"b1", "b2"}
    # Remove b1: it drains and leaves; the same client connection goes on working.
    path.write_text(make_config([b2], port, balancer={"strategy": "round-robin"}))
    proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: {c.get("/").header("X-Backend") for _ in range(6)} == {"b2"})
    # A broken file is logged and the running config kept.
    path.write_text("[balancer]\nstrategy = 'fastest'\n")
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert c.get("/").header("X-Backend") == "b2"
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    out = proc.stdout.read().decode()
    assert "reload failed" in out and "balancer.strategy" in out


def test_reload_in_process_reweights():
    from tests.proxy_support import InProcess

    with InProcess(make_config([free_port(), free_port()])) as lb:
        s1, s2 = lb.bal.pool.servers
        from taxiway.config import parse_config

        text = make_config([]) + f'[[servers]]\nurl = "http://{s1.address}"\nweight = 5\n'
        lb.run(lambda: lb.bal.reload(parse_config(__import__("tomllib").loads(text))))
        assert s1.weight == 5 and s2.draining
        assert any(e["kind"] == "changed" for e in lb.bal.events)
        assert wait_until(lambda: s2.name not in lb.bal.pool)   # idle: removed at the next tick


def test_workers_share_the_port_with_so_reuseport(procs, tmp_path):
    b1 = procs.backend("b1")
    port, proc, _ = start_lb(procs, tmp_path, [b1], balancer={"workers": 2})
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(out) == 2
    statuses = [http_get(port, "/").status for _ in range(20)]
    assert statuses == [200] * 20

    # Both workers accept: hold 24 keep-alive connections open and count each worker's sockets.
    # (The kernel spreads SO_REUSEPORT connections by a hash of the 4-tuple; all 24 on one worker
    # has a chance of 2 in 2^24.)
    def sockets(pid: str) -> int:
        n = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
            except FileNotFoundError:   # closed while we looked
                pass
        return n

    before = {pid: sockets(pid) for pid in out}
    clients: list[Client] = []
    gained: dict[str, int] = {}
    deadline = time.monotonic() + 15          # a worker still starting has not bound the port yet
    while time.monotonic() < deadline:
        batch = [Client(port) for _ in range(24)]
        assert all(c.get("/").status == 200 for c in batch)
        clients += batch
        gained = {pid: sockets(pid) - before[pid] for pid in out}
        if all(g >= 1 for g in gained.values()):
            break
    assert all(g >= 1 for g in gained.values()), gained
    for c in clients:
        c.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


@pytest.fixture
def tls_files(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    with open(cert_path, "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return str(cert_path), str(key_path), ctx


def test_https_listener_hsts_forwarded_proto_and_redirect(procs, tmp_path, tls_files):
    cert, key, client_ctx = tls_files
    b1 = procs.backend("b1")
    https_port, http_port = free_port(), free_port()
    text = make_config([b1], http_port,
                       listen={"https": f"127.0.0.1:{https_port}", "redirect_to_https": True})
    text += f'[listen.tls]\ncert = "{cert}"\nkey = "{key}"\nhsts_max_age = "1d"\n'
    path = tmp_path / "tls.toml"
    path.write_text(text)
    proc = procs.taxiway("lb", "--config", str(path))
    wait_for_port(https_port, proc=proc)
    wait_for_port(http_port, proc=proc)
    raw = socket.create_connection(("127.0.0.1", https_port), timeout=10)
    s = client_ctx.wrap_socket(raw, server_hostname="localhost")
    s.sendall(b"GET /headers HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Strict-Transport-Security: max-age=86400" in head
    h = {k.lower(): v for k, v in json.loads(body)}
    assert h["x-forwarded-proto"] == "https"
    r = http_get(http_port, "/a?b=1")
    assert r.status == 308
    assert r.header("Location") == f"https://test:{https_port}/a?b=1"
    assert r.header("Strict-Transport-Security") is None    # never on plain HTTP


def test_rate_limit_guard_answers_429(procs, tmp_path):
    pytest.importorskip("taxiway.security.edge")
    b1 = procs.backend("b1")
    text = make_config([b1], free_port())
    text += '[[ratelimit.rules]]\nname = "api"\nrate = "2/m"\npath_prefix = "/api"\n'
    path = tmp_path / "rl.toml"
    path.write_text(text)
    lport = int(text.split("127.0.0.1:")[1].split('"')[0])
    proc = procs.taxiway("lb", "--config", str(path))
    wait_for_port(lport, proc=proc)
    c = Client(lport)
    answers = [c.get("/api/x") for _ in range(4)]
    assert answers[0].status == 200 and answers[-1].status == 429
    assert answers[-1].header("Retry-After")
    assert c.get("/other").status == 200          # other paths are not limited


def test_bad_config_is_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[timeouts]\nconnect = 'soon'\n")
    from tests.conftest import taxiway_env

    r = subprocess.run([sys.executable, "-m", "taxiway", "lb", "--config", str(path)],
                       capture_output=True, text=True, env=taxiway_env(), timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "timeouts.connect" in r.stderr
