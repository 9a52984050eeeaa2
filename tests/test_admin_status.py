"""build_status and the Prometheus collector, on a real Pool of real Server objects (virtual time)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from taxiway.admin.metrics import make_registry, render
from taxiway.admin.status import MAX_EVENTS, RECENT_WINDOW_S, build_status, percentile
from taxiway.balancing.model import Server
from taxiway.config import Config, parse_config
from taxiway.proxy.app import Balancer

from .conftest import Processes, free_port, run_taxiway, taxiway_env, wait_for_port


def unstarted_balancer(cfg: Config | None = None, started_at: float = 1.7e9) -> Balancer:
    """A real `Balancer`, never started: what the admin code reads, with nothing listening. Its
    servers are the config's (none by default)."""
    b = Balancer(cfg or parse_config({}))
    b.started_at = started_at
    return b


def make_balancer() -> Balancer:
    b = unstarted_balancer(started_at=1.7e9 - 42.0)
    b.pool.add(Server("a", "127.0.0.1", 9001, weight=2), now=0.0)
    b.pool.add(Server("b", "127.0.0.1", 9002), now=0.0)
    return b


@pytest.mark.parametrize(("values", "q", "expected"), [
    pytest.param([], 50, None, id="empty"),
    pytest.param([1.0], 95, 1.0, id="single"),
    pytest.param([1.0, 2.0, 3.0, 4.0], 50, 2.0, id="median-nearest-rank"),
    pytest.param([float(i) for i in range(1, 101)], 95, 95.0, id="p95-of-100"),
    pytest.param([float(i) for i in range(1, 101)], 100, 100.0, id="max"),
    pytest.param([float(i) for i in range(1, 101)], 0, 1.0, id="min"),
])
def test_percentile(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


def test_status_reports_servers_states_and_totals() -> None:
    now = 100.0
    b = make_balancer()
    a, s2 = b.pool.get("a"), b.pool.get("b")
    assert a is not None and s2 is not None
    a.inflight, a.requests, a.failures, a.bytes_in, a.bytes_out = 3, 10, 1, 500, 200
    for i in range(10):
        a.process_latency(0.001 * (i + 1), now - 5 + i * 0.1)
    s2.requests = 4
    s2.healthy = False
    b.counters.update({"requests": 14, "responses_2xx": 13, "error_502": 1})
    b.connections = 7
    b.events.append({"at": 1.5e9, "kind": "down", "server": "b", "detail": "GET /healthz: status 503"})

    st = build_status(b, now, now_wall=1.7e9)
    assert st["uptime_s"] == 42.0 and st["started_at"] == 1.7e9 - 42.0
    assert build_status(b, now)["uptime_s"] is None
    assert st["strategy"] == "least-connections"
    assert st["connections"] == 7
    rows = {r["name"]: r for r in st["servers"]}
    assert rows["a"]["state"] == "up" and rows["a"]["available"] is True
    assert rows["b"]["state"] == "down" and rows["b"]["available"] is False
    assert rows["a"]["address"] == "127.0.0.1:9001" and rows["a"]["weight"] == 2
    assert rows["a"]["inflight"] == 3 and rows["a"]["requests"] == 10 and rows["a"]["failures"] == 1
    assert rows["a"]["latency_p50_ms"] == pytest.approx(5.0)
    assert rows["a"]["latency_p95_ms"] == pytest.approx(10.0)
    assert rows["a"]["recent_samples"] == 10
    assert rows["b"]["latency_p50_ms"] is None
    assert st["totals"]["requests"] == 14 and st["totals"]["inflight"] == 3
    assert st["totals"]["available"] == 1 and st["totals"]["by_state"]["down"] == 1
    assert st["counters"] == {"error_502": 1, "requests": 14, "responses_2xx": 13}
    assert st["events"][-1]["server"] == "b" and st["events"][-1]["kind"] == "down"
    assert st["autoscale"] is None


def test_old_latency_samples_leave_the_percentiles() -> None:
    b = make_balancer()
    a = b.pool.get("a")
    assert a is not None
    a.process_latency(0.5, now=10.0)
    assert build_status(b, 10.0 + RECENT_WINDOW_S - 1)["servers"][0]["latency_p95_ms"] == 500.0
    assert build_status(b, 10.0 + RECENT_WINDOW_S + 1)["servers"][0]["latency_p95_ms"] is None


def test_ejected_and_draining_states_and_event_cap() -> None:
    b = make_balancer()
    a, s2 = b.pool.get("a"), b.pool.get("b")
    assert a is not None and s2 is not None
    a.ejected_until, a.ejections = 130.0, 2
    b.pool.drain("b")
    for i in range(MAX_EVENTS + 10):
        b.events.append({"at": float(i), "kind": "x", "server": None, "detail": str(i)})
    st = build_status(b, 100.0)
    rows = {r["name"]: r for r in st["servers"]}
    assert rows["a"]["state"] == "ejected" and rows["a"]["ejected_for_s"] == 30.0
    assert rows["a"]["ejections"] == 2
    assert rows["b"]["state"] == "draining"
    assert len(st["events"]) == MAX_EVENTS and st["events"][-1]["detail"] == str(MAX_EVENTS + 9)


def test_autoscale_section_comes_from_the_balancer() -> None:
    b = make_balancer()
    b.autoscale_status = lambda: {"desired": 3, "reason": "inflight 30 > target 10"}
    assert build_status(b, 100.0)["autoscale"] == {"desired": 3, "reason": "inflight 30 > target 10"}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_read_counters_at_scrape_time() -> None:
    now = [100.0]
    b = make_balancer()
    registry = make_registry(b, clock=lambda: now[0], wall_clock=lambda: 1.7e9)
    first = _samples(render(registry).decode())
    assert first[("taxiway_requests_total", ())] == 0
    assert first[("taxiway_server_up", (("server", "a"),))] == 1

    # Traffic after the registry was built shows up on the next scrape: nothing is cached.
    a = b.pool.get("a")
    assert a is not None
    a.requests, a.inflight, a.bytes_in = 5, 2, 1234
    a.process_latency(0.02, now=99.0)
    b.pool.get("b").healthy = False  # type: ignore[union-attr]
    b.counters.update({"requests": 5, "responses_2xx": 4, "responses_5xx": 1, "error_502": 1, "retries": 2,
                       "health_checks": 9})
    b.connections = 3
    m = _samples(render(registry).decode())
    assert m[("taxiway_requests_total", ())] == 5
    assert m[("taxiway_retries_total", ())] == 2
    assert m[("taxiway_responses_total", (("class", "2xx"),))] == 4
    assert m[("taxiway_responses_total", (("class", "5xx"),))] == 1
    assert m[("taxiway_errors_total", (("status", "502"),))] == 1
    assert m[("taxiway_proxy_events_total", (("event", "health_checks"),))] == 9
    assert m[("taxiway_connections", ())] == 3
    assert m[("taxiway_uptime_seconds", ())] == 42.0
    assert m[("taxiway_server_requests_total", (("server", "a"),))] == 5
    assert m[("taxiway_server_inflight", (("server", "a"),))] == 2
    assert m[("taxiway_server_bytes_in_total", (("server", "a"),))] == 1234
    assert m[("taxiway_server_up", (("server", "b"),))] == 0
    assert m[("taxiway_servers", (("state", "down"),))] == 1
    assert m[("taxiway_servers", (("state", "up"),))] == 1
    assert m[("taxiway_server_latency_seconds", (("quantile", "0.5"), ("server", "a")))] == 0.02
    assert m[("taxiway_server_latency_ewma_seconds", (("server", "a"),))] == 0.02


# -- `taxiway status -c FILE`: the admin address from the file the balancer runs with -------------

def _status(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
    return run_taxiway("status", *args, env=env, cwd=cwd)


def test_status_reads_admin_listen_from_the_config_file(procs: Processes, tmp_path: Path) -> None:
    admin = free_port()
    cfg = tmp_path / "lb.toml"
    # A secret the operator's shell does not hold must not stop `status` from finding the address.
    cfg.write_text(f'[listen]\nhttp = "127.0.0.1:{free_port()}"\n[admin]\nlisten = "0.0.0.0:{admin}"\n'
                   '[affinity]\nmode = "cookie"\nsecret = "${TAXIWAY_AFFINITY_SECRET}"\n'
                   '[[servers]]\nurl = "http://127.0.0.1:9"\nname = "only-one"\n')
    lb = procs.taxiway("lb", "-c", str(cfg), env=taxiway_env() | {"TAXIWAY_AFFINITY_SECRET": "x" * 32})
    wait_for_port(admin, proc=lb)
    env = {k: v for k, v in taxiway_env().items() if k != "TAXIWAY_AFFINITY_SECRET"}
    for flag in ("-c", "--config"):
        r = _status(flag, str(cfg), "--json", env=env)
        assert r.returncode == 0, r.stderr
        assert [s["name"] for s in json.loads(r.stdout)["servers"]] == ["only-one"]
    table = _status("-c", str(cfg), env=env)
    assert table.returncode == 0 and "only-one" in table.stdout
    # In a directory with a taxiway.toml (as `lb` and `up` default to), no flag is needed.
    (tmp_path / "taxiway.toml").write_text(cfg.read_text())
    here = _status("--json", env=env, cwd=tmp_path)
    assert here.returncode == 0, here.stderr
    assert [s["name"] for s in json.loads(here.stdout)["servers"]] == ["only-one"]
    # ... but a mistake elsewhere in a file nobody named does not stop it: it asks the default.
    (tmp_path / "taxiway.toml").write_text(cfg.read_text() + '[balancer]\nworkers = "four"\n')
    fallback = _status("--json", "--timeout", "1", env=env, cwd=tmp_path)
    assert "workers" not in fallback.stderr
    assert fallback.returncode == 0 or "127.0.0.1:9901" in fallback.stderr   # (0: something answers there)
    # --admin still wins over the file.
    other = _status("-c", str(cfg), "--admin", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert other.returncode == 2 and "no taxiway admin API answers" in other.stderr


@pytest.mark.parametrize(("admin", "message"), [
    pytest.param('listen = ""', "{cfg} has no [admin] listen address: the admin API is off", id="admin-off"),
    pytest.param('listen = "${ADMIN_ADDR}"', "{cfg}: admin.listen is ${ADMIN_ADDR}, and ADMIN_ADDR is not "
                 "set here; set it, or give the address with --admin HOST:PORT", id="unset-variable"),
])
def test_status_c_without_an_address_says_why(tmp_path: Path, admin: str, message: str) -> None:
    cfg = tmp_path / "lb.toml"
    cfg.write_text(f"[admin]\n{admin}\n")
    r = _status("-c", str(cfg))
    assert r.returncode == 2
    assert r.stderr == "taxiway: " + message.replace("{cfg}", str(cfg)) + "\n"
