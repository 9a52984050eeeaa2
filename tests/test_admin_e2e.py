"""End to end: `taxiway lb` + two `taxiway backend`s; the admin API and health checks seen from outside."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Processes, free_port, taxiway_env, wait_for_port

pytestmark = pytest.mark.slow


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def status(admin: int) -> dict[str, Any]:
    code, _, body = get(admin, "/status")
    assert code == 200
    return json.loads(body)


def wait_until(cond: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_lb(procs: Processes, tmp_path: Path, backends: dict[str, int]) -> tuple[int, int]:
    http_port, admin_port = free_port(), free_port()
    servers = "".join(f'[[servers]]\nurl = "http://127.0.0.1:{p}"\nname = "{n}"\n'
                      for n, p in backends.items())
    cfg = tmp_path / "lb.toml"
    cfg.write_text(f"""
[listen]
http = "127.0.0.1:{http_port}"
[admin]
listen = "127.0.0.1:{admin_port}"
[balancer]
strategy = "round-robin"
[health]
interval = "100ms"
timeout = "1s"
rise = 2
fall = 2
[access_log]
path = "{tmp_path / 'access.log'}"
{servers}""")
    proc = procs.taxiway("lb", "--config", str(cfg))
    wait_for_port(http_port, proc=proc)
    wait_for_port(admin_port, proc=proc)
    return http_port, admin_port


def served_by(port: int, n: int) -> list[str]:
    out = []
    for _ in range(n):
        code, headers, _ = get(port, "/")
        assert code == 200
        out.append(headers["x-backend"])
    return out


def test_status_and_metrics_reflect_traffic(procs: Processes, tmp_path: Path) -> None:
    b1, b2 = procs.backend("b1"), procs.backend("b2")
    lb, admin = start_lb(procs, tmp_path, {"b1": b1, "b2": b2})
    before = status(admin)
    assert {s["name"]: s["state"] for s in before["servers"]} == {"b1": "up", "b2": "up"}
    assert before["strategy"] == "round-robin" and before["uptime_s"] is not None
    # Which proxy build answers, so an operator can tell a compiled install from a fallback.
    assert before["hot_path"].startswith(("compiled (mypyc)", "python ("))

    seen = served_by(lb, 20)
    assert set(seen) == {"b1", "b2"}
    assert get(lb, "/status/503")[0] == 503

    st = status(admin)
    rows = {s["name"]: s for s in st["servers"]}
    assert st["counters"]["requests"] == 21
    assert rows["b1"]["requests"] + rows["b2"]["requests"] == 21
    assert rows["b1"]["requests"] in (seen.count("b1"), seen.count("b1") + 1)  # +1: the /status/503
    assert rows["b1"]["latency_p50_ms"] is not None and rows["b1"]["latency_p50_ms"] > 0
    assert rows["b1"]["bytes_out"] > 0 and rows["b1"]["bytes_in"] == 0   # response bytes; GETs have none
    assert st["counters"]["responses_2xx"] == 20 and st["counters"]["responses_5xx"] == 1
    assert st["counters"]["health_checks"] > 0

    code, _, body = get(admin, "/metrics")
    assert code == 200
    m = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            m[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert m[("taxiway_requests_total", ())] == 21
    assert m[("taxiway_responses_total", (("class", "5xx"),))] == 1
    assert m[("taxiway_server_requests_total", (("server", "b1"),))] == rows["b1"]["requests"]
    assert m[("taxiway_server_up", (("server", "b2"),))] == 1

    out = subprocess.run([sys.executable, "-m", "taxiway", "status", "--admin", f"127.0.0.1:{admin}"],
                         capture_output=True, text=True, env=taxiway_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"127.0.0.1:{b1}" in out.stdout and f"127.0.0.1:{b2}" in out.stdout


def test_failing_health_check_takes_server_out_and_back(procs: Processes, tmp_path: Path) -> None:
    b1 = procs.backend("b1")
    b2 = free_port()
    procs.backend("b2", b2, "--fail-healthz")
    lb, admin = start_lb(procs, tmp_path, {"b1": b1, "b2": b2})

    def state(name: str) -> str:
        return next(s["state"] for s in status(admin)["servers"] if s["name"] == name)

    wait_until(lambda: state("b2") == "down", "b2 to go DOWN after `fall` failed checks")
    assert state("b1") == "up"
    events = status(admin)["events"]
    assert any(e["server"] == "b2" and e["detail"].startswith("DOWN") and "503" in e["detail"]
               for e in events)
    b2_requests = next(s["requests"] for s in status(admin)["servers"] if s["name"] == "b2")
    assert served_by(lb, 20) == ["b1"] * 20
    assert next(s["requests"] for s in status(admin)["servers"] if s["name"] == "b2") == b2_requests

    # Fix b2 (a healthy process on the same port): it comes back after `rise` good checks.
    procs.procs[1].kill()
    procs.procs[1].wait(10)
    procs.backend("b2", b2)
    wait_until(lambda: state("b2") == "up", "b2 to come back UP after `rise` good checks")
    wait_until(lambda: "b2" in served_by(lb, 4), "requests to reach b2 again")
