"""Real-process harness for the flights app tests: a prepared SQLite database and gunicorn servers.

Why a template database: `prepare` (migrate + cache table + collectstatic) and `seed` take a few
seconds; they run once per test process into a template directory, and each server group gets its
own copy, so tests never share state they could corrupt.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import ROOT, free_port, taxiway_env

FLIGHTS_DIR = ROOT / "examples" / "flights"
START_TIMEOUT_S = 60.0
SEED_FLIGHTS = 400
DEMO_PASSWORD = "demo-" + secrets.token_urlsafe(12)   # random per test run, never in the repo
_CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
_tempdirs: list[str] = []


def _cleanup() -> None:
    for d in _tempdirs:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


def base_env(workdir: Path, **extra: str) -> dict[str, str]:
    """Environment for manage.py/gunicorn: a private SQLite file and static dir under `workdir`."""
    env = taxiway_env()
    for k in list(env):
        if k.startswith(("DJANGO_", "FLIGHTS_", "TAXIWAY_")) or k in {"DATABASE_URL", "REDIS_URL"}:
            del env[k]
    env.update({
        "DJANGO_SECRET_KEY": "test-" + secrets.token_urlsafe(32),
        "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
        "FLIGHTS_STATIC_ROOT": str(workdir / "static"),
        "FLIGHTS_DEMO_PASSWORD": DEMO_PASSWORD,
    })
    env.update(extra)
    return env


def manage(env: dict[str, str], *args: str, timeout_s: float = 180.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=FLIGHTS_DIR, env=env, capture_output=True,
                          text=True, timeout=timeout_s)


@functools.cache
def _template() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="flights-template-"))
    _tempdirs.append(str(tmp))
    env = base_env(tmp)
    for args in (("prepare",), ("seed", "--flights", str(SEED_FLIGHTS), "--users", "5", "--bookings", "200")):
        res = manage(env, *args)
        if res.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return tmp


def prepared_dir() -> Path:
    """A fresh copy of the prepared, seeded template (database + collected static files)."""
    dst = Path(tempfile.mkdtemp(prefix="flights-"))
    _tempdirs.append(str(dst))
    src = _template()
    shutil.copy2(src / "db.sqlite3", dst / "db.sqlite3")
    shutil.copytree(src / "static", dst / "static")
    return dst


@dataclass
class AppServer:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL the whole gunicorn process group: the server dies like a crashed machine."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def gunicorn_args(port: int, workers: int = 2) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "flights.wsgi", "-b", f"127.0.0.1:{port}", "-w", str(workers),
            "--no-control-socket", "--graceful-timeout", "2", "--timeout", "60"]


def spawn_gunicorn(env: dict[str, str], log: Path, port: int | None = None, workers: int = 2) -> AppServer:
    """Start gunicorn (does not wait). Output goes to `log`."""
    port = port or free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(gunicorn_args(port, workers), cwd=FLIGHTS_DIR, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return AppServer(port, proc, log)


def wait_ready(server: AppServer, timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.proc.returncode}:\n{server.output()[-3000:]}")
        try:
            if httpx.get(server.url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"flights app on {server.port} not ready after {timeout_s}s:\n"
                       f"{server.output()[-3000:]}")


@dataclass
class AppGroup:
    """Servers sharing one prepared directory (one database, one cache)."""

    workdir: Path
    env: dict[str, str]
    servers: list[AppServer] = field(default_factory=list)

    def start(self, n: int = 1, workers: int = 2) -> list[AppServer]:
        new = [spawn_gunicorn(self.env, self.workdir / f"gunicorn-{len(self.servers) + i}.log",
                              workers=workers) for i in range(n)]
        self.servers += new
        for s in new:
            wait_ready(s)
        return new

    def stop(self) -> None:
        for s in self.servers:
            s.kill()

    @property
    def db_path(self) -> Path:
        return self.workdir / "db.sqlite3"


@contextlib.contextmanager
def app_group(**env_extra: str) -> Iterator[AppGroup]:
    workdir = prepared_dir()
    group = AppGroup(workdir, base_env(workdir, **env_extra))
    try:
        yield group
    finally:
        group.stop()


def csrf_token(html: str) -> str:
    m = _CSRF_RE.search(html)
    if m is None:
        raise AssertionError("no CSRF token in the page")
    return m.group(1)


def login(client: httpx.Client, username: str, password: str) -> httpx.Response:
    """Log in through the real form (GET for the token, POST with it). Returns the POST's response."""
    page = client.get("/login/")
    return client.post("/login/", data={"username": username, "password": password,
                                        "csrfmiddlewaretoken": csrf_token(page.text)})


def register(client: httpx.Client, username: str, password: str, display_name: str = "") -> httpx.Response:
    page = client.get("/register/")
    return client.post("/register/", data={"username": username, "first_name": display_name,
                                           "password1": password, "password2": password,
                                           "csrfmiddlewaretoken": csrf_token(page.text)})


def whoami(client: httpx.Client) -> tuple[str | None, str]:
    """(logged-in username or None, X-Served-By-App) from the app's /api/me probe."""
    r = client.get("/api/me")
    r.raise_for_status()
    return r.json()["user"], r.headers["X-Served-By-App"]
