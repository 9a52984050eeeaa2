"""`taxiway up` with the repository's taxiway.toml (the demo): the flights app on an autoscaled gunicorn pool.

Issue 5's "done when": the balancer serves the app on several servers, sticky sessions off and
database sessions on, so a logged-in user stays logged in whichever server answers. The example
config is used as shipped, with only its two ports and the pool's working directory rewritten.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.flights_support import DEMO_PASSWORD, FLIGHTS_DIR, base_env, login, prepared_dir

pytestmark = pytest.mark.slow


def example_config(tmp: Path, port: int, admin_port: int) -> Path:
    text = (FLIGHTS_DIR.parent.parent / "taxiway.toml").read_text()
    text = text.replace('http = "127.0.0.1:8080"', f'http = "127.0.0.1:{port}"')
    text = text.replace('listen = "127.0.0.1:9901"', f'listen = "127.0.0.1:{admin_port}"')
    text = text.replace('cwd = "examples/flights"', f'cwd = "{FLIGHTS_DIR}"')
    assert str(port) in text and str(admin_port) in text
    path = tmp / "taxiway.toml"
    path.write_text(text)
    return path


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_taxiway_up_serves_the_flights_app_on_several_servers_with_db_sessions(tmp_path: Path) -> None:
    workdir = prepared_dir()
    env = base_env(workdir)  # DJANGO_SECRET_KEY etc. reach the pool through the environment
    port, admin = free_port(), free_port()
    cfg = example_config(tmp_path, port, admin)
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "taxiway", "up", "--config", str(cfg)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    worker_pids: set[int] = set()
    try:
        url = f"http://127.0.0.1:{port}"
        servers: set[str] = set()
        deadline = time.monotonic() + 120
        while len(servers) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                r = httpx.get(url + "/healthz", timeout=5)
                if r.status_code == 200:
                    servers.add(r.headers["X-Served-By-App"].split()[0])
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert len(servers) >= 2, f"pool min is 2; saw {servers}\n{log.read_text()[-3000:]}"
        assert all(re.fullmatch(r"app-\d+", s) for s in servers)  # names given by taxiway up

        with httpx.Client(base_url=url, timeout=30) as c:
            assert login(c, "user1", DEMO_PASSWORD).status_code == 302
            assert "taxiway_srv" not in c.cookies        # no sticky cookie: affinity is off
            seen = []
            for _ in range(12):
                r = c.get("/api/me")
                seen.append((r.json()["user"], r.headers["X-Served-By-App"].split()[0]))
                worker_pids.add(int(r.headers["X-Served-By-App"].rsplit(" ", 1)[1]))
        assert {u for u, _ in seen} == {"user1"}             # logged in on every request...
        assert len({s for _, s in seen}) >= 2                 # ...served by more than one server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + 20
    while any(pid_alive(p) for p in worker_pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(pid_alive(p) for p in worker_pids), "gunicorn workers outlived taxiway up"
