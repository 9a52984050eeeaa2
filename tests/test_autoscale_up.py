"""`taxiway up` as a user runs it: real balancer, real app-server processes, real signals."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Processes, free_port, taxiway_env

BACKEND = f"{sys.executable} -m taxiway backend --port {{port}} --name {{name}}"


def write_config(tmp_path: Path, *, min_: int = 1, max_: int = 4, delay_ms: int = 20, extra: str = "",
                 autoscale: str = "") -> Path:
    cfg = tmp_path / "taxiway.toml"
    cfg.write_text(f"""
[listen]
http = "127.0.0.1:{free_port()}"
[admin]
listen = "127.0.0.1:{free_port()}"
[access_log]
enabled = false
[health]
interval = "1s"
[pool]
command = "{BACKEND} --delay-ms {delay_ms}"
min = {min_}
max = {max_}
ready_timeout = "30s"
stop_grace = "5s"
drain_timeout = "20s"
[autoscale]
{autoscale}
{extra}
""")
    return cfg


class Up:
    """One `taxiway up` process with its output in a file (a pipe nobody reads would block it)."""

    def __init__(self, procs: Processes, cfg: Path, env: dict[str, str] | None = None) -> None:
        self.out = cfg.parent / "up.out"
        self.fh = open(self.out, "wb")  # noqa: SIM115
        self.proc = procs.start(sys.executable, "-m", "taxiway", "up", "--config", str(cfg),
                                env=taxiway_env() | (env or {}), stdout=self.fh.fileno())
        self.url = ""
        self.status_url = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = self.output()
            m = re.search(r"connect to (http://\S+?);.*?(http://\S+/status)", text)
            if m:
                self.url, self.status_url = m.group(1), m.group(2)
                break
            assert self.proc.poll() is None, f"taxiway up exited early:\n{text}"
            time.sleep(0.1)
        assert self.url, f"no connect line:\n{self.output()}"

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        return httpx.get(self.status_url, timeout=10).json()

    def wait_ready(self, n: int, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            st = self.status()["autoscale"]
            if st["ready"] >= n:
                return st
            time.sleep(0.2)
        raise AssertionError(f"fewer than {n} ready:\n{self.output()}")

    def child_pids(self) -> list[int]:
        return [s["pid"] for s in self.status()["autoscale"]["servers"] if s["pid"]]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_dead(pids: list[int], timeout_s: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def test_up_serves_reports_and_stops_cleanly_on_ctrl_c(procs: Processes, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, min_=2)
    up = Up(procs, cfg)
    up.wait_ready(2)
    names = {httpx.get(up.url + "/", timeout=10).headers["x-backend"] for _ in range(20)}
    assert len(names) == 2 and all(n.startswith("app-") for n in names)
    st = up.status()
    auto = st["autoscale"]
    assert (auto["min"], auto["max"], auto["desired"], auto["metric"]) == (2, 4, 2, "inflight")
    assert {s["name"] for s in auto["servers"]} == names
    assert auto["summary"].startswith("2 ready / 2 desired (min 2, max 4")
    assert all(abs(d["at"] - time.time()) < 120 for d in auto["decisions"])   # wall-clock times
    assert {s["name"] for s in st["servers"]} == names
    pids = up.child_pids()
    assert len(pids) == 2 and all(alive(p) for p in pids)
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=60) == 0
    assert wait_dead(pids) == []
    text = up.output()
    assert "ready app-" in text and "taxiway up: stopped" in text


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_no_orphans_when_taxiway_is_killed(procs: Processes, tmp_path: Path, sig: signal.Signals) -> None:
    """SIGKILL cannot be handled: the children die through PR_SET_PDEATHSIG."""
    up = Up(procs, write_config(tmp_path, min_=3, max_=3))
    up.wait_ready(3)
    pids = up.child_pids()
    assert len(pids) == 3
    # The children are in their own process groups: killing taxiway's group does not reach them.
    assert all(os.getpgid(p) != os.getpgid(up.proc.pid) for p in pids)
    os.kill(up.proc.pid, sig)
    up.proc.wait(timeout=60)
    assert wait_dead(pids) == [], f"orphans left:\n{up.output()}"


def test_static_servers_stand_beside_the_pool(procs: Processes, tmp_path: Path) -> None:
    static_port = procs.backend("static-1")
    up = Up(procs, write_config(tmp_path, min_=1, extra=f"""
[[servers]]
url = "http://127.0.0.1:{static_port}"
name = "static-1"
"""))
    up.wait_ready(1)
    seen = {httpx.get(up.url + "/", timeout=10).headers["x-backend"] for _ in range(30)}
    assert "static-1" in seen and any(n.startswith("app-") for n in seen)
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(timeout=60) == 0


def test_config_without_pool_is_one_line(procs: Processes, tmp_path: Path) -> None:
    cfg = tmp_path / "lb.toml"
    cfg.write_text('[[servers]]\nurl = "http://127.0.0.1:9"\n')
    r = subprocess.run([sys.executable, "-m", "taxiway", "up", "--config", str(cfg)], env=taxiway_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "needs a [pool] section" in r.stderr
    r = subprocess.run([sys.executable, "-m", "taxiway", "up", "--config", str(tmp_path / "missing.toml")],
                       env=taxiway_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "missing.toml" in r.stderr


# -- the key test: load rises and falls, nothing fails -------------------------------------------


async def _load(url: str, phases: list[tuple[int, float]], results: dict[str, int],
                errors: list[str]) -> None:
    """Closed-loop users: phase = (concurrent users, seconds). Every non-200 or error is a failure."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def user(stop_at: float) -> None:
            while time.monotonic() < stop_at:
                try:
                    r = await client.get("/")
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if r.status_code == 200:
                    results["ok"] += 1
                else:
                    errors.append(f"status {r.status_code}: {r.text[:100]}")

        for users, seconds in phases:
            stop_at = time.monotonic() + seconds
            await asyncio.gather(*(user(stop_at) for _ in range(users)))


@pytest.mark.slow
def test_load_rises_and_falls_with_zero_failed_requests(procs: Processes, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, min_=1, max_=4, delay_ms=50, autoscale="""
metric = "inflight"
target = 2
period = "0.5s"
scale_down_window = "2s"
max_scale_down = 1
panic_window = "1s"
""")
    up = Up(procs, cfg)
    up.wait_ready(1)
    counts: list[tuple[float, int, int]] = []
    results = {"ok": 0}
    errors: list[str] = []

    async def watch(done: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while not done.is_set():
                auto = (await client.get(up.status_url)).json()["autoscale"]
                counts.append((time.monotonic(), auto["ready"], len(auto["servers"])))
                await asyncio.sleep(0.25)

    async def main() -> None:
        done = asyncio.Event()
        watcher = asyncio.create_task(watch(done))
        await _load(up.url, [(1, 4), (8, 12), (1, 14), (7, 12), (1, 14)], results, errors)
        done.set()
        await watcher

    asyncio.run(main())
    ready = [r for _, r, _ in counts]
    print("ready servers every 0.25 s:", ready)   # shown with -s / on failure
    # The pool grew, shrank, grew and shrank again: count direction changes of the ready series.
    peaks = [i for i in range(1, len(ready)) if ready[i] >= 3]
    assert peaks, f"never scaled up: {ready}\n{up.output()}"
    swings = _swings(ready)
    assert swings >= 4, f"expected up/down/up/down, got {swings} swings: {ready}"
    assert errors == [], f"{len(errors)} failed requests of {results['ok'] + len(errors)}: {errors[:5]}"
    assert results["ok"] > 500
    st = up.status()
    assert st["counters"].get("upstream_failures", 0) == 0, json.dumps(st["counters"])
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=60) == 0


def _swings(series: list[int]) -> int:
    """Number of direction changes (up->down, down->up), counting the first move."""
    swings, direction = 0, 0
    for a, b in itertools.pairwise(series):
        d = (b > a) - (b < a)
        if d and d != direction:
            swings += 1
            direction = d
    return swings


def test_live_view_on_a_terminal(procs: Processes, tmp_path: Path) -> None:
    """stdout is a TTY: the compact live view (servers, in-flight, req/s, last scaling event)."""
    import pty
    import select

    cfg = write_config(tmp_path, min_=2)
    master, slave = pty.openpty()
    env = taxiway_env() | {"COLUMNS": "160", "LINES": "40", "TERM": "xterm"}
    proc = procs.start(sys.executable, "-m", "taxiway", "up", "--config", str(cfg), env=env, stdout=slave)
    os.close(slave)
    seen = b""
    text = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ("2 ready / 2 desired" in text and "last scaling" in text
                                               and re.search(r"app-\d+\s+ready", text)):
        if select.select([master], [], [], 0.5)[0]:
            try:
                seen += os.read(master, 65536)
            except OSError:
                break
            text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace"))
    assert "2 ready / 2 desired" in text, text[-2000:]
    for column in ("server", "state", "in-flight", "req/s", "last scaling"):
        assert column in text
    assert re.search(r"app-\d+\s+up", text)   # the balancer's state, as in /status
    proc.send_signal(signal.SIGINT)
    while proc.poll() is None and time.monotonic() < deadline + 60:
        if select.select([master], [], [], 0.5)[0]:
            try:
                os.read(master, 65536)
            except OSError:
                pass
    os.close(master)
    assert proc.wait(timeout=30) == 0


@pytest.mark.slow
def test_sticky_clients_move_when_their_server_is_scaled_away(procs: Processes, tmp_path: Path) -> None:
    """Cookie affinity pins clients to pool servers; scale-down drains those servers and the
    clients' next requests succeed on the server that is left (with a new cookie)."""
    cfg = write_config(tmp_path, min_=1, max_=3, delay_ms=50, autoscale="""
target = 1
period = "0.5s"
scale_down_window = "1s"
panic_window = "1s"
""", extra="""
[affinity]
mode = "cookie"
secret = "${TAXIWAY_AFFINITY_SECRET}"
""")
    up = Up(procs, cfg, env={"TAXIWAY_AFFINITY_SECRET": "test-only-affinity-secret-0123456789"})
    up.wait_ready(1)
    stop = time.monotonic() + 60
    pinned: dict[str, httpx.Client] = {}

    async def pressure(until: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=up.url, timeout=30) as client:
            async def one() -> None:
                while not until.is_set():
                    r = await client.get("/")
                    assert r.status_code == 200
                    client.cookies.clear()     # unpinned load: spread over every server
            await asyncio.gather(*(one() for _ in range(6)))

    async def main() -> None:
        until = asyncio.Event()
        task = asyncio.create_task(pressure(until))
        while time.monotonic() < stop and len(pinned) < 3:
            await asyncio.sleep(0.2)
            c = httpx.Client(base_url=up.url, timeout=30)
            name = c.get("/").headers["x-backend"]
            if name not in pinned:
                pinned[name] = c
            else:
                c.close()
        until.set()
        await task

    asyncio.run(main())
    assert len(pinned) >= 2, f"pool never grew: {up.status()['autoscale']}"
    for name, c in pinned.items():     # pinned: the same server answers again
        assert c.get("/").headers["x-backend"] == name
    up.wait_ready(1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(up.status()["autoscale"]["servers"]) > 1:
        time.sleep(0.25)
    remaining = {s["name"] for s in up.status()["autoscale"]["servers"]}
    assert len(remaining) == 1, remaining
    moved = 0
    for name, c in pinned.items():
        r = c.get("/")
        assert r.status_code == 200
        assert r.headers["x-backend"] in remaining
        if name not in remaining:
            moved += 1
            assert "taxiway_srv" in r.headers.get("set-cookie", "")
        c.close()
    assert moved >= 1
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=60) == 0


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is `pgid` (a forking app server's master and workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().split(") ", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                out.append(int(entry))
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_forking_app_server_leaves_no_workers_behind(procs: Processes, tmp_path: Path,
                                                     sig: signal.Signals) -> None:
    """gunicorn (master + 2 workers per server): every process of every group goes away."""
    (tmp_path / "wsgi.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Length', '2')])\n"
        "    return [b'ok']\n")
    cfg = write_config(tmp_path, min_=2, max_=2)
    text = cfg.read_text().replace(
        f'command = "{BACKEND} --delay-ms 20"',
        'command = "{python} -m gunicorn -w 2 -b 127.0.0.1:{port} --log-level warning wsgi:app"')
    cfg.write_text(text)
    up = Up(procs, cfg)
    up.wait_ready(2)
    assert httpx.get(up.url + "/", timeout=10).text == "ok"
    masters = up.child_pids()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(len(group_members(m)) for m in masters) < 6:
        time.sleep(0.2)
    members = [p for m in masters for p in group_members(m)]
    assert len(members) == 6, members            # 2 masters + 4 workers, each server its own group
    os.kill(up.proc.pid, sig)
    up.proc.wait(timeout=60)
    assert wait_dead(members, timeout_s=30) == [], f"left behind:\n{up.output()}"


def test_sighup_reloads_pool_bounds_and_keeps_serving(procs: Processes, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, min_=1, max_=1)
    up = Up(procs, cfg)
    up.wait_ready(1)
    cfg.write_text(cfg.read_text().replace("min = 1\nmax = 1", "min = 3\nmax = 3"))
    up.proc.send_signal(signal.SIGHUP)
    up.wait_ready(3)
    assert (up.status()["autoscale"]["min"], up.status()["autoscale"]["max"]) == (3, 3)
    cfg.write_text(cfg.read_text().replace("min = 3\nmax = 3", "min = 1\nmax = 2"))
    up.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(up.status()["autoscale"]["servers"]) != 1:
        assert httpx.get(up.url + "/", timeout=10).status_code == 200
        time.sleep(0.1)
    assert len(up.status()["autoscale"]["servers"]) == 1
    # A broken file is reported and changes nothing.
    good = cfg.read_text()
    cfg.write_text(good.replace("min = 1\nmax = 2", "min = 5\nmax = 2"))
    up.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "reload failed" not in up.output():
        time.sleep(0.1)
    assert "reload failed" in up.output() and "pool.min/max" in up.output()
    assert up.status()["autoscale"]["max"] == 2
    assert httpx.get(up.url + "/", timeout=10).status_code == 200
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=60) == 0



def test_connect_is_printed_once_a_server_answers(procs: Processes, tmp_path: Path) -> None:
    """A user who opens the printed address at once gets the app, not a 503 from an empty pool:
    the line comes after the first server is ready, and says how long that took."""
    up = Up(procs, write_config(tmp_path, min_=1))
    assert httpx.get(up.url + "/", timeout=10).status_code == 200
    out = up.output()
    assert re.search(r"ready after \d+\.\ds: connect to http://", out), out
    # (Printed as the server joins the rotation: after it started, in the same instant it is ready.)
    assert out.index("started app-") < out.index("connect to"), out
