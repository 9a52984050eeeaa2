"""Small things a new user meets in the first hour, each as the user meets it: pasting what
`taxiway cert dev` prints, reading `/status` events and byte counters, the access log line of
taxiway's own 503, and the live view agreeing with `/status` about a server failing its checks."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from taxiway.autoscale.live import shown_state
from taxiway.balancing.model import Server
from taxiway.proxy.http1 import ERROR_BODIES
from tests.conftest import run_taxiway
from tests.proxy_support import (
    Client,
    InProcess,
    Origin,
    make_config,
    ok_response,
    refused_port,
    wait_until,
)


def taxiway(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_taxiway(*args, cwd=cwd)


def test_cert_dev_output_pastes_into_a_config_that_has_a_listen_table(tmp_path: Path) -> None:
    made = taxiway("cert", "dev", "--dir", "tls", "--hosts", "localhost,127.0.0.1", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    out = made.stdout
    table = out[out.index("[listen.tls]"):].split("\n\n")[0]
    assert "[listen]" not in out.replace("[listen] table", "")   # no second [listen] to paste
    https = next(line.strip() for line in out.splitlines() if line.strip().startswith("https ="))
    cfg = tmp_path / "lb.toml"
    cfg.write_text(f'[listen]\nhttp = "127.0.0.1:0"\n{https}\n\n[[servers]]\nurl = "http://127.0.0.1:9"\n\n'
                   f"{table}\n")
    checked = taxiway("check", "-c", str(cfg), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "ok" in checked.stdout


def test_status_events_say_what_happened_and_bytes_count_like_the_access_log() -> None:
    origin = Origin(lambda req: ok_response(b"hello world"))
    lb = InProcess(make_config([origin.port]))
    try:
        c = Client(lb.port)
        c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a" * 100)
        assert c.read_response().status == 200
        c.close()
        assert wait_until(lambda: lb.bal.connections == 0)
        events = lb.run(lambda: list(lb.bal.events))
        started = next(e for e in events if e["kind"] == "started")
        assert "None" not in started["detail"] and f"http port {lb.port}" in started["detail"]
        added = [e for e in events if e["kind"] == "added"]
        assert added and all(f"127.0.0.1:{origin.port}" in e["detail"] for e in added)
        srv = lb.bal.pool.servers[0]
        # HAProxy's bin/bout and the access log's bytes_in/bytes: in = request body, out = response body.
        assert (srv.bytes_in, srv.bytes_out) == (100, len(b"hello world"))
        lb.run(lambda: lb.bal.pool.drain(srv.name))
        drained = lb.run(lambda: [e for e in lb.bal.events if e["kind"] == "draining"])
        assert drained and "no new requests" in drained[-1]["detail"]
    finally:
        lb.stop()
        origin.close()


def test_taxiways_own_503_is_logged_with_its_body_bytes(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    port_cfg = make_config([refused_port()], access_log={"enabled": True, "path": str(log)},
                           balancer={"retries": 0}, limits={"upstream_queue": 0})
    with InProcess(port_cfg) as lb:
        c = Client(lb.port)
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        resp = c.read_response()
        c.close()
        assert resp.status in (502, 503)
        assert wait_until(lambda: log.exists() and log.read_text().strip() != "", timeout_s=5)
        line = json.loads(log.read_text().splitlines()[-1])
        assert line["status"] == resp.status
        assert line["bytes"] == len(resp.body) == len(ERROR_BODIES[resp.status]) > 0


def test_live_view_shows_the_balancers_state_not_the_processes() -> None:
    now = time.monotonic()
    rows = [
        # (ready, healthy, draining, ejected, process state) -> shown
        ((True, True, False, False, "ready"), "up"),
        ((True, False, False, False, "ready"), "down"),      # running, failing its checks
        ((True, True, False, True, "ready"), "ejected"),
        ((False, True, False, False, "starting"), "starting"),
        ((True, True, True, False, "draining"), "draining"),
        ((True, True, True, False, "stopping"), "stopping"),
        ((True, True, False, False, None), "up"),            # a static server
    ]
    for (ready, healthy, draining, ejected, proc), shown in rows:
        s = Server("app-1", "127.0.0.1", 1, ready=ready, healthy=healthy, draining=draining,
                   ejected_until=now + 30 if ejected else 0.0)
        assert shown_state(s, proc, now) == shown, (ready, healthy, draining, ejected, proc)
