"""Zero failed requests through a deployment's life, under load, as a user runs it: `taxiway up`
(or `taxiway lb`) with real app-server processes, and `taxiway bench` in a closed loop (up to a
few dozen users) counting every non-2xx answer and every connection error.

Events covered here: the balancer starting with load already waiting (the app takes time to
boot); a pool that scales to zero when idle and back for the next request; scaling 1 -> N -> 1
under load; an app server killed with SIGKILL (zero failed idempotent requests: the load is
GETs); a rolling deploy, and a version that never gets ready; an upgrade of taxiway itself
(`taxiway upgrade`), one that fails, and one of `balancer.workers = 2` worker by worker. Each
test asserts the count a user would see: zero failed requests."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from .conftest import Processes, free_port, taxiway_env, wait_for_port

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
    """`taxiway bench` in a closed loop: `users` users, each sending GET / on its own keep-alive
    connection, from now until `stop()`. That sends SIGINT, and bench stops and writes what it
    measured, as on Ctrl-C. Its JSON has every answer's status, every connection error, the
    longest request and which app server answered (X-Backend, "v1-app-PORT": the version)."""

    def __init__(self, procs: Processes, url: str, users: int = 24, *extra: str) -> None:
        fd, name = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        self.json = Path(name)
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []      # "kind: count", e.g. "connection_reset: 2"
        self.versions: dict[str, int] = {}
        self.ok = 0
        self.longest_s = 0.0
        self.in_flight = 0
        self.proc = procs.taxiway("bench", "-c", str(users), "-d", "900s", "--timeout", "30s",
                                  "--served-by-header", "X-Backend", "--json", str(self.json), "-q",
                                  *extra, url + "/")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        text = self.json.read_text() if self.json.exists() else ""
        self.json.unlink(missing_ok=True)
        assert text, f"taxiway bench wrote no JSON (exit {self.proc.returncode}):\n{out.decode()}"
        data = json.loads(text)
        self.statuses = {int(k): int(v) for k, v in data["statuses"].items()}
        self.errors = [f"{kind}: {n}" for kind, n in data["errors_by_kind"].items()
                       if not kind.startswith("http_")]   # (statuses count those)
        self.ok = sum(n for st, n in self.statuses.items() if 200 <= st < 300)
        self.longest_s = float(data["service_time_ms"]["max"]) / 1000
        self.in_flight = int(data["in_flight"])
        for server, n in data["served_by"].items():
            version = server.partition("-")[0]
            self.versions[version] = self.versions.get(version, 0) + int(n)

    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300) + \
            sum(int(e.rpartition(": ")[2]) for e in self.errors)


class Deployment:
    """One `taxiway up`: its URL, its /status, its output."""

    def __init__(self, url: str, admin: str, out: Path) -> None:
        self.url, self.admin, self.out = url, admin, out

    def status(self) -> dict[str, Any]:
        return httpx.get(self.admin + "/status", timeout=10).json()

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_ready(self, n: int, timeout_s: float = 30.0) -> int:
        """Wait up to `timeout_s` until `n` app servers are ready; returns how many are."""
        deadline = time.monotonic() + timeout_s
        while (ready := self.status()["autoscale"]["ready"]) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        return int(ready)


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
    load = Load(procs, up.url)
    deadline = time.monotonic() + 30
    while up.status()["counters"].get("responses_2xx", 0) < 200 and time.monotonic() < deadline:
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
        load = Load(procs, up.url, users=8)
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
    light = Load(procs, up.url, users=2)
    heavy = Load(procs, up.url, users=24)
    peak = up.wait_ready(3)
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
    up.wait_ready(2)
    load = Load(procs, up.url, users=24)
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
    up.wait_ready(2)
    v1 = up.status()["autoscale"]["version"]
    load = Load(procs, up.url, users=24)
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
    assert httpx.get(up.url + "/", timeout=10).headers["x-backend"].startswith("v2-")

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
    assert "v3" not in load.versions and load.versions.get("v1", 0) > 0 and load.versions.get("v2", 0) > 0, \
        load.versions
    assert httpx.get(up.url + "/", timeout=10).headers["x-backend"].startswith("v2-")
    assert load.failed() == 0, (load.statuses, load.errors[:3])
    assert roll_s < 30, roll_s


def _upgrade(admin: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "taxiway", "upgrade", "--admin",
                           admin.removeprefix("http://"), *extra],
                          env=taxiway_env(), capture_output=True, text=True, timeout=180)


def _gone(pid: int) -> bool:
    """No process `pid`, or only its zombie (a parent that has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_gone(pids: list[int], timeout_s: float = 30.0) -> list[int]:
    """The pids of `pids` still running after up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if not _gone(p)]


def test_a_balancer_upgrade_under_load_fails_nothing(procs: Processes, tmp_path: Path) -> None:
    """`taxiway upgrade`, twice, of a `taxiway up` with two app servers under load: each time a
    new process takes the listening sockets, starts and readies two app servers of its own, then
    the old one stops accepting, finishes what it holds, stops its app servers and exits. No
    connection is refused or reset, no request fails."""
    up = start_up(procs, tmp_path, f"{_versioned('v1')}\nmin = 2\nmax = 3", "[autoscale]\nenabled = false")
    up.wait_ready(2)
    load = Load(procs, up.url, users=24)
    time.sleep(1.0)
    seen = {up.status()["pid"]}
    for _ in range(2):
        before = up.status()
        old_apps = [s["pid"] for s in before["autoscale"]["servers"]]
        out = _upgrade(up.admin)
        assert out.returncode == 0 and f"sent SIGUSR2 to pid {before['pid']}" in out.stdout, \
            out.stdout + out.stderr + up.output()
        assert "done: pid" in out.stdout, out.stdout + out.stderr
        after = up.status()
        assert after["pid"] not in seen, (after["pid"], seen)
        seen.add(after["pid"])
        assert after["autoscale"]["ready"] == 2, after["autoscale"]["summary"]
        assert not set(old_apps) & {s["pid"] for s in after["autoscale"]["servers"]}
        # The old balancer and its app servers are gone; the load went on through it all.
        assert _wait_gone([before["pid"], *old_apps]) == [], up.output()
        time.sleep(0.5)
        assert up.status()["counters"].get("responses_2xx", 0) > 50   # (the new process serves)
    load.stop()
    record("balancer upgrade under load (taxiway up, twice)", [load])
    assert load.failed() == 0, (load.statuses, load.errors[:3], up.output()[-3000:])
    events = [e["kind"] for e in up.status()["events"]]
    assert "upgrade_failed" not in events
    assert "took over from the previous process with 2 app server(s)" in up.output()


def test_a_failed_upgrade_leaves_the_running_balancer_serving(procs: Processes, tmp_path: Path) -> None:
    """A successor that cannot take over costs nothing: one whose app servers never get ready
    (pool.ready_timeout passes), one whose config does not load. Each time `taxiway upgrade` says
    why and fails (status 2), the running process goes on serving, and no request fails."""
    pool = "min = 1\nmax = 1\nready_timeout = \"3s\""
    up = start_up(procs, tmp_path, f"{_versioned('v1')}\n{pool}", "[autoscale]\nenabled = false")
    cfg = tmp_path / "taxiway.toml"
    up.wait_ready(1)
    pid = up.status()["pid"]
    load = Load(procs, up.url, users=4)
    time.sleep(0.5)
    good = cfg.read_text()
    cfg.write_text(good.replace(_versioned("v1"), _versioned("v1", "--fail-healthz")))
    out = _upgrade(up.admin)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"upgrade failed; pid {pid} still serves" in out.stderr, out.stderr
    assert "app servers ready within pool.ready_timeout" in out.stderr, out.stderr
    cfg.write_text(good.replace("min = 1\n", "min = \"many\"\n"))
    out = _upgrade(up.admin)
    assert out.returncode == 2 and "exited with status 2 before it was ready" in out.stderr, \
        out.stdout + out.stderr
    time.sleep(0.5)
    load.stop()
    assert up.status()["pid"] == pid and up.status()["autoscale"]["ready"] == 1
    assert load.ok > 100 and load.failed() == 0, (load.statuses, load.errors[:3])
    assert "pool.min" in up.output()   # (the failed successor said what is wrong with the file)


def test_workers_are_upgraded_one_by_one_under_load(procs: Processes, tmp_path: Path) -> None:
    """`taxiway lb` with `balancer.workers = 2` under load: the new parent starts its worker 0 on
    the same SO_REUSEPORT socket as the old worker 0, which drains once the new one accepts; then
    worker 1. No request fails, the old parent and workers exit, two new workers serve."""
    ports = [procs.backend(f"b{i}", None, "--delay-ms", "5") for i in (1, 2)]
    cfg = tmp_path / "taxiway.toml"
    port, admin = free_port(), free_port()
    cfg.write_text(f"""
[listen]
http = "127.0.0.1:{port}"
[admin]
listen = "127.0.0.1:{admin}"
[access_log]
enabled = false
[balancer]
workers = 2
""" + "".join(f'[[servers]]\nurl = "http://127.0.0.1:{p}"\n' for p in ports))
    out = tmp_path / "lb.out"
    with open(out, "wb") as fh:
        procs.taxiway("lb", "--config", str(cfg), stdout=fh.fileno())
    wait_for_port(admin)
    url, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
    parent = httpx.get(admin_url + "/status", timeout=10).json()["pid"]
    old_workers = _children(parent)
    assert len(old_workers) == 2, old_workers
    load = Load(procs, url, users=24)
    time.sleep(1.0)
    res = _upgrade(admin_url)
    assert res.returncode == 0 and f"sent SIGUSR2 to pid {parent}" in res.stdout, res.stdout + res.stderr
    assert _wait_gone([parent, *old_workers]) == [], out.read_text()
    new_parent = httpx.get(admin_url + "/status", timeout=10).json()["pid"]
    time.sleep(1.0)
    load.stop()
    record("balancer upgrade, workers = 2, one by one", [load])
    assert new_parent != parent and len(_children(new_parent)) == 2
    text = out.read_text()
    first = text.find("worker 0 of the new taxiway accepts")
    assert 0 <= first < text.find("worker 1 of the new taxiway accepts"), text
    assert load.ok > 200 and load.failed() == 0, (load.statuses, load.errors[:3], text[-3000:])


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_an_upgrade_keeps_https_and_http_listeners_without_a_failed_request(procs: Processes,
                                                                             tmp_path: Path) -> None:
    """`taxiway lb` with an HTTPS and an HTTP listener, load on both: after `taxiway upgrade` the
    new process answers on both (the TLS listener's socket was handed over too), and no request
    on either failed."""
    from taxiway.security.certcmd import make_dev_certs

    certs = make_dev_certs(tmp_path / "certs", "localhost,127.0.0.1")
    backend = procs.backend("b1", None, "--delay-ms", "5")
    http, https, admin = free_port(), free_port(), free_port()
    cfg = tmp_path / "taxiway.toml"
    cfg.write_text(f"""
[listen]
http = "127.0.0.1:{http}"
https = "127.0.0.1:{https}"
[listen.tls]
cert = "{certs['cert']}"
key = "{certs['key']}"
[admin]
listen = "127.0.0.1:{admin}"
[access_log]
enabled = false
[[servers]]
url = "http://127.0.0.1:{backend}"
""")
    out = tmp_path / "lb.out"
    with open(out, "wb") as fh:
        procs.taxiway("lb", "--config", str(cfg), stdout=fh.fileno())
    wait_for_port(admin)
    admin_url = f"http://127.0.0.1:{admin}"
    old = httpx.get(admin_url + "/status", timeout=10).json()["pid"]
    plain = Load(procs, f"http://127.0.0.1:{http}", 12)
    tls = Load(procs, f"https://127.0.0.1:{https}", 12, "--insecure")
    time.sleep(1.0)
    res = _upgrade(admin_url)
    assert res.returncode == 0 and "done: pid" in res.stdout, res.stdout + res.stderr + out.read_text()
    assert _wait_gone([old]) == [], out.read_text()
    time.sleep(1.0)
    plain.stop()
    tls.stop()
    record("balancer upgrade, HTTP and HTTPS listeners", [plain, tls])
    assert httpx.get(admin_url + "/status", timeout=10).json()["pid"] != old
    r = httpx.get(f"https://127.0.0.1:{https}/", verify=ssl.create_default_context(cafile=str(certs["ca"])),
                  timeout=10)
    assert r.status_code == 200
    for load in (plain, tls):
        assert load.ok > 100 and load.failed() == 0, (load.statuses, load.errors[:3], out.read_text()[-3000:])


def test_the_harness_counts_failed_requests(procs: Processes, tmp_path: Path) -> None:
    """What the other tests assert to be zero does count failures: a balancer with no server
    answers every request with 503, and the load reports each one."""
    port = free_port()
    cfg = tmp_path / "taxiway.toml"
    cfg.write_text(f'[listen]\nhttp = "127.0.0.1:{port}"\n[admin]\nlisten = ""\n[timeouts]\nqueue = "10ms"\n')
    procs.taxiway("lb", "--config", str(cfg))
    wait_for_port(port)
    load = Load(procs, f"http://127.0.0.1:{port}", 2)
    time.sleep(1.5)
    load.stop()
    assert load.ok == 0 and load.statuses.get(503, 0) > 10, (load.statuses, load.errors)
    assert load.failed() == sum(load.statuses.values()) > 10
