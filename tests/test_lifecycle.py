"""Zero failed requests through a deployment's life, under load, as a user runs it: `taxiway up`
with real app-server processes and a closed loop of clients that counts every non-2xx answer
and every connection error.

Events covered here: the balancer starting with load already waiting (the app takes time to
boot); a pool that scales to zero when idle and back for the next request; scaling 1 -> N -> 1
under load; an app server killed with SIGKILL (zero failed idempotent requests: the load is
GETs). Each test asserts the count a user would see: zero failed requests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .conftest import Processes, free_port, taxiway_env

# benchmarks/lifecycle/run.py sets this: each test appends what it measured (one JSON line per
# event) for the table in BENCHMARKS.md; the assertions are the same either way.
RESULTS = os.environ.get("TAXIWAY_LIFECYCLE_RESULTS")


def record(event: str, loads: list[Load], cold_s: float | None = None) -> None:
    """Append one event's counts to the results file, when one is asked for."""
    if not RESULTS:
        return
    row = {"event": event, "requests": sum(ld.ok + ld.failed() for ld in loads),
           "failed": sum(ld.failed() for ld in loads),
           "longest_s": round(max(ld.longest_s for ld in loads), 3),
           "cold_start_s": None if cold_s is None else round(cold_s, 3)}
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")


BACKEND = f"{sys.executable} -m taxiway backend --port {{port}} --name {{name}}"


class Load:
    """`users` clients, each sending GET / in a loop on its own keep-alive connection, until
    `stop()`: every answer's status and time, every connection error."""

    def __init__(self, url: str, users: int = 8) -> None:
        self.url = url
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self.longest_s = 0.0
        self.ok = 0
        self.versions: dict[str, int] = {}   # answers per app version (X-Backend "v1-app-...")
        self.last_version = ""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._user, daemon=True) for _ in range(users)]
        for t in self._threads:
            t.start()

    def _user(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    resp = client.get(self.url + "/")
                    status = resp.status_code
                    version = resp.headers.get("x-backend", "").partition("-")[0]
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.errors.append(repr(exc))
                    continue
                took = time.monotonic() - t0
                with self._lock:
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    self.ok += 200 <= status < 300
                    self.versions[version] = self.versions.get(version, 0) + 1
                    self.last_version = version
                    self.longest_s = max(self.longest_s, took)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=40)

    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300) + len(self.errors)


class Deployment:
    """One `taxiway up`: its URL, its /status, its output."""

    def __init__(self, url: str, admin: str, out: Path) -> None:
        self.url, self.admin, self.out = url, admin, out

    def status(self) -> dict[str, Any]:
        return httpx.get(self.admin + "/status", timeout=10).json()

    def output(self) -> str:
        return self.out.read_text(errors="replace")


def start_up(procs: Processes, tmp_path: Path, pool: str, extra: str = "") -> Deployment:
    """`taxiway up` with `pool` (the [pool] keys) and `extra` sections, returned as soon as its
    listener is open (not when it says `connect to`)."""
    cfg = tmp_path / "taxiway.toml"
    admin = f"127.0.0.1:{free_port()}"
    defaults = "\n".join(f"{k} = {v}" for k, v in (("ready_timeout", '"30s"'), ("stop_grace", '"5s"'),
                                                    ("drain_timeout", '"20s"')) if f"{k} =" not in pool)
    cfg.write_text(f"""
[listen]
http = "127.0.0.1:{free_port()}"
[admin]
listen = "{admin}"
[access_log]
enabled = false
[health]
interval = "1s"
[pool]
{pool}
{defaults}
{extra}
""")
    out = tmp_path / "up.out"
    fh = open(out, "wb")  # noqa: SIM115
    proc = procs.start(sys.executable, "-m", "taxiway", "up", "--config", str(cfg), env=taxiway_env(),
                       stdout=fh.fileno())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = re.search(r"listening on (http://\S+?);", out.read_text(errors="replace"))
        if m:
            return Deployment(m.group(1), f"http://{admin}", out)
        assert proc.poll() is None, out.read_text(errors="replace")
        time.sleep(0.02)
    raise AssertionError(f"no listening line:\n{out.read_text(errors='replace')}")


def test_load_waiting_at_start_gets_answers_not_503(procs: Processes, tmp_path: Path) -> None:
    """The app takes 1.5 s to boot; clients send from the moment the listener opens. Every
    request waits for the first server (the upstream queue, `timeouts.queue`) and is answered."""
    up = start_up(procs, tmp_path, f'command = "{BACKEND} --boot-ms 1500"\nmin = 1\nmax = 1')
    load = Load(up.url)
    deadline = time.monotonic() + 30
    while load.ok < 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    load.stop()
    assert load.ok >= 200, (load.statuses, load.errors[:3], up.output())
    assert load.failed() == 0, (load.statuses, load.errors[:3])
    # The first requests really arrived before any server was ready: they waited for the boot,
    # and /status says how long such a wait took.
    assert load.longest_s >= 1.0, load.longest_s
    cold = up.status()["cold_start"]
    record("start with load waiting (app boots 1.5 s)", [load], cold["max_s"])
    assert cold["requests"] >= 1 and cold["failed"] == 0 and 1.0 <= cold["max_s"] < 30, cold


def test_scale_to_zero_and_back_without_a_failed_request(procs: Processes, tmp_path: Path) -> None:
    """`pool.min = 0`: the first request starts a server and waits for it (a cold start); after
    `autoscale.scale_to_zero_after` of idleness the last server stops; the next request starts
    one again. Not one request fails on the way."""
    up = start_up(procs, tmp_path, f'command = "{BACKEND} --boot-ms 500"\nmin = 0\nmax = 2',
                  '[autoscale]\nperiod = "200ms"\nscale_down_window = "1s"\nscale_to_zero_after = "2s"')
    assert up.status()["autoscale"]["current"] == 0
    loads: list[Load] = []
    colds: list[float] = []
    for round_ in range(2):
        t0 = time.monotonic()
        r = httpx.get(up.url + "/", timeout=30)
        cold_s = time.monotonic() - t0
        colds.append(cold_s)
        assert r.status_code == 200, (r.status_code, r.text, up.output())
        assert cold_s >= 0.5, cold_s   # it waited for the boot
        load = Load(up.url, users=4)
        loads.append(load)
        time.sleep(2.0)
        load.stop()
        assert load.ok > 50 and load.failed() == 0, (load.statuses, load.errors[:3])
        deadline = time.monotonic() + 30   # idle: back to zero servers
        while up.status()["autoscale"]["servers"] and time.monotonic() < deadline:
            time.sleep(0.2)
        auto = up.status()["autoscale"]
        assert auto["servers"] == [] and auto["desired"] == 0, (round_, auto["summary"], up.output())
    cold = up.status()["cold_start"]
    record("scale to zero and back, twice (app boots 0.5 s)", loads, max(colds))
    assert cold["requests"] >= 2 and cold["failed"] == 0, cold
    out = up.output()   # (the waiting request is the demand that started a server from zero)
    assert "on 0 -> recommends 1" in out and "held by zero_grace" in out, out


def test_scaling_up_and_back_down_under_load_fails_nothing(procs: Processes, tmp_path: Path) -> None:
    """1 -> N -> 1 with load on all the way: new servers join as they get ready, removed ones
    leave the rotation first and finish what they hold."""
    up = start_up(procs, tmp_path, f'command = "{BACKEND} --delay-ms 20"\nmin = 1\nmax = 3',
                  '[autoscale]\ntarget = 2\nperiod = "200ms"\nscale_down_window = "1s"\n'
                  'panic_window = "500ms"')
    light = Load(up.url, users=2)
    heavy = Load(up.url, users=10)
    deadline = time.monotonic() + 30
    while up.status()["autoscale"]["ready"] < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    peak = up.status()["autoscale"]["ready"]
    heavy.stop()
    deadline = time.monotonic() + 30
    while up.status()["autoscale"]["current"] > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)   # (the last drain finishing, with the light load still on)
    light.stop()
    record("scale 1 -> 3 -> 1 under load", [heavy, light])
    assert peak == 3, up.output()
    assert up.status()["autoscale"]["current"] == 1, up.output()
    for load in (heavy, light):
        assert load.ok > 100 and load.failed() == 0, (load.statuses, load.errors[:3])


def test_an_app_server_killed_under_load_fails_no_idempotent_request(procs: Processes,
                                                                     tmp_path: Path) -> None:
    """SIGKILL one of two servers while GETs are in flight: what it held is retried on the
    other, new requests go there too, and a replacement starts."""
    up = start_up(procs, tmp_path, f'command = "{BACKEND} --delay-ms 20"\nmin = 2\nmax = 2')
    deadline = time.monotonic() + 30
    while up.status()["autoscale"]["ready"] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    load = Load(up.url, users=8)
    time.sleep(1.0)
    victim = up.status()["autoscale"]["servers"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        auto = up.status()["autoscale"]
        if auto["ready"] == 2 and victim["name"] not in {s["name"] for s in auto["servers"]}:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    load.stop()
    record("an app server killed with SIGKILL (GETs)", [load])
    st = up.status()
    assert load.ok > 200 and load.failed() == 0, (load.statuses, load.errors[:3], st["counters"],
                                                  st["events"][-20:])
    assert up.status()["autoscale"]["ready"] == 2   # the replacement took over


def _versioned(tag: str, extra: str = "") -> str:
    """A pool command whose answers say which version served them (X-Backend: v1-app-PORT)."""
    return (f'command = "{sys.executable} -m taxiway backend --port {{port}} --name {tag}-{{name}} '
            f'--delay-ms 20 {extra}"')


def _reload(cfg: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "taxiway", "reload", "--config", str(cfg)],
                         env=taxiway_env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "sent SIGHUP" in out.stdout, out.stdout + out.stderr


def test_a_rolling_deploy_and_a_version_that_never_gets_ready_fail_nothing(procs: Processes,
                                                                          tmp_path: Path) -> None:
    """`taxiway reload` after changing `[pool] command`: the pool rolls from v1 to v2 server by
    server (max_surge 1) under load, and answers switch to v2. Then a v3 that never passes its
    readiness check: the rollout stops, v2 keeps serving. Not one request fails."""
    pool = "min = 2\nmax = 2\nready_timeout = \"3s\""
    up = start_up(procs, tmp_path, f"{_versioned('v1')}\n{pool}", "[autoscale]\nenabled = false")
    cfg = tmp_path / "taxiway.toml"
    deadline = time.monotonic() + 30
    while up.status()["autoscale"]["ready"] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    v1 = up.status()["autoscale"]["version"]
    load = Load(up.url, users=8)
    time.sleep(1.0)
    cfg.write_text(cfg.read_text().replace(_versioned("v1"), _versioned("v2")))
    t0 = time.monotonic()
    _reload(cfg)
    rollout: dict[str, Any] = {}
    while time.monotonic() < t0 + 60:
        rollout = up.status()["autoscale"]["rollout"] or {}
        if rollout.get("state") == "done":
            break
        time.sleep(0.2)
    roll_s = time.monotonic() - t0
    auto = up.status()["autoscale"]
    assert rollout.get("state") == "done", (rollout, up.output())
    assert rollout["from"] == v1 and auto["version"] == rollout["to"] != v1
    assert [s["version"] for s in auto["servers"]] == [rollout["to"]] * 2, auto["servers"]
    time.sleep(1.0)
    assert load.last_version == "v2" and load.versions.get("v1", 0) > 0, load.versions

    cfg.write_text(cfg.read_text().replace(_versioned("v2"), _versioned("v3", "--fail-healthz")))
    _reload(cfg)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rollout = up.status()["autoscale"]["rollout"] or {}
        if rollout.get("state") == "failed":
            break
        time.sleep(0.2)
    assert rollout.get("state") == "failed" and "did not become ready" in rollout["reason"], rollout
    time.sleep(1.0)
    load.stop()
    record("a rolling deploy v1 -> v2, then a v3 that never gets ready", [load])
    auto = up.status()["autoscale"]
    assert auto["ready"] == 2 and auto["version"] == rollout["from"], auto["summary"]
    assert "v3" not in load.versions and load.last_version == "v2", load.versions
    assert load.failed() == 0, (load.statuses, load.errors[:3])
    assert roll_s < 30, roll_s
