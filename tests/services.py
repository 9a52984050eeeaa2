"""Shared test infrastructure: find, start or install Redis and PostgreSQL for the tests.

Why this exists: CI machines differ. A developer laptop has both servers running, a fresh Debian CI
box has neither, and a container may run tests as root. Each service is found in this order, and the
first that works is used for the whole test session:

1. An explicit address in the environment: `TAXIWAY_TEST_REDIS_URL`, `TAXIWAY_TEST_POSTGRES_DSN`.
2. A server already answering on 127.0.0.1 at its usual port (6379, 5432 as user postgres).
3. A private server started on a free port in a temporary directory from the binaries on this
   machine (`redis-server`; `initdb` + `postgres`, also looked up in /usr/lib/postgresql/*/bin).
   It is stopped when the test process exits.
4. When running as root with apt-get and binaries are missing: `apt-get install` them, then 3.
   (Set `TAXIWAY_TEST_NO_INSTALL=1` to forbid this.)
5. Otherwise the test is skipped with a reason that says what was tried.

Isolation, so tests can share a developer's running servers without harming them or each other:
- Redis: every test gets a unique key prefix (`redis_server.prefix`); its keys are deleted after.
- PostgreSQL: every test gets a uniquely named database (`postgres_db`), dropped after.

Helpers for code outside fixtures (benchmarks, scripts): `redis_url()` and `postgres_dsn()` return
the address or raise `ServiceUnavailable`.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

START_TIMEOUT_S = 30.0
APT_TIMEOUT_S = 900.0


class ServiceUnavailable(RuntimeError):
    """No server could be found, started or installed; the message says what was tried."""


_lock = threading.Lock()
_cache: dict[str, str | ServiceUnavailable] = {}
_children: list[subprocess.Popen[bytes]] = []
_tempdirs: list[str] = []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop_children() -> None:
    """Called at interpreter exit: stop every private server we started, then remove its files."""
    for proc in _children:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    for proc in _children:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    for d in _tempdirs:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_stop_children)


def _spawn(args: list[str], log: Path, user: str | None = None) -> subprocess.Popen[bytes]:
    if user is not None:
        args = ["runuser", "-u", user, "--", *args]
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    _children.append(proc)
    return proc


def _wait_until(check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise ServiceUnavailable(f"{what} exited with status {proc.returncode}: {tail.strip()}")
        if check():
            return
        time.sleep(0.1)
    raise ServiceUnavailable(f"{what} did not answer within {START_TIMEOUT_S:.0f}s")


def _apt_install(package: str) -> str | None:
    """Install `package` with apt-get when we are root and allowed to; return why not otherwise."""
    if os.environ.get("TAXIWAY_TEST_NO_INSTALL"):
        return "TAXIWAY_TEST_NO_INSTALL is set"
    if os.geteuid() != 0:
        return "not root, cannot apt-get install"
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=APT_TIMEOUT_S,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        res = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
                             env=env, timeout=APT_TIMEOUT_S, capture_output=True, text=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"apt-get install {package} failed: {exc}"
    if res.returncode != 0:
        return f"apt-get install {package} failed: {res.stderr.strip()[-300:]}"
    return None


def _cached(name: str, find: Callable[[], str]) -> str:
    """Find a service once per process; remember failures too so every test skips quickly."""
    with _lock:
        if name not in _cache:
            try:
                _cache[name] = find()
            except ServiceUnavailable as exc:
                _cache[name] = exc
        value = _cache[name]
    if isinstance(value, ServiceUnavailable):
        raise value
    return value


# --------------------------------------------------------------------------------------------
# Redis


def redis_ping(url: str, timeout_s: float = 1.0) -> bool:
    """True when a Redis server answers PING at `url` without needing a password."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379),
                                      timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _start_private_redis() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable("redis-server is not installed")
    tmp = tempfile.mkdtemp(prefix="taxiway-redis-")
    _tempdirs.append(tmp)
    port = _free_port()
    log = Path(tmp) / "redis.log"
    proc = _spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--save", "",
                   "--appendonly", "no", "--daemonize", "no"], log)
    url = f"redis://127.0.0.1:{port}/0"
    _wait_until(lambda: redis_ping(url, 0.3), proc, log, f"private redis-server on port {port}")
    return url


def _find_redis() -> str:
    tried: list[str] = []
    explicit = os.environ.get("TAXIWAY_TEST_REDIS_URL")
    if explicit:
        if redis_ping(explicit):
            return explicit
        tried.append(f"TAXIWAY_TEST_REDIS_URL={explicit} does not answer")
    default = "redis://127.0.0.1:6379/0"
    if redis_ping(default):
        return default
    tried.append("nothing answers on 127.0.0.1:6379")
    if shutil.which("redis-server") is None:
        why = _apt_install("redis-server")
        if why:
            tried.append(why)
    try:
        return _start_private_redis()
    except ServiceUnavailable as exc:
        tried.append(str(exc))
    raise ServiceUnavailable("no Redis for the tests: " + "; ".join(tried))


def redis_url() -> str:
    """The URL of a usable Redis server (found, started or installed). Raises ServiceUnavailable."""
    return _cached("redis", _find_redis)


@dataclass(frozen=True)
class RedisTarget:
    """A Redis server plus a key prefix owned by one test."""

    url: str
    prefix: str


def _delete_prefix(url: str, prefix: str) -> None:
    import redis  # imported here: services.py must load even where redis-py is missing

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


@pytest.fixture
def redis_server() -> Iterator[RedisTarget]:
    """A Redis server and a unique key prefix; keys under the prefix are deleted afterwards."""
    try:
        url = redis_url()
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))
    prefix = f"taxiway-test:{uuid.uuid4().hex[:12]}:"
    yield RedisTarget(url, prefix)
    _delete_prefix(url, prefix)


# --------------------------------------------------------------------------------------------
# PostgreSQL


def _pg_connect_ok(dsn: str) -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _pg_binaries() -> tuple[str, str] | None:
    for d in [None, *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        initdb = shutil.which("initdb", path=d)
        postgres = shutil.which("postgres", path=d)
        if initdb and postgres:
            return initdb, postgres
    return None


def _start_private_postgres() -> str:
    bins = _pg_binaries()
    if bins is None:
        raise ServiceUnavailable("initdb/postgres are not installed")
    initdb, postgres = bins
    # initdb refuses to run as root: run the server as an unprivileged user in that case.
    user: str | None = None
    tmp = tempfile.mkdtemp(prefix="taxiway-pg-")
    _tempdirs.append(tmp)
    if os.geteuid() == 0:
        for candidate in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                pw = pwd.getpwnam(candidate)
                user = candidate
                os.chown(tmp, pw.pw_uid, pw.pw_gid)
                break
        if user is None or shutil.which("runuser") is None:
            raise ServiceUnavailable("running as root and no unprivileged user/runuser for initdb")
    data = Path(tmp) / "data"
    log = Path(tmp) / "postgres.log"
    init_args = [initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]
    if user is not None:
        init_args = ["runuser", "-u", user, "--", *init_args]
    res = subprocess.run(init_args, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise ServiceUnavailable(f"initdb failed: {res.stderr.strip()[-500:]}")
    if user is not None:
        # runuser's child creates the log; make sure it may.
        log.touch()
        pw = pwd.getpwnam(user)
        os.chown(log, pw.pw_uid, pw.pw_gid)
    port = _free_port()
    proc = _spawn([postgres, "-D", str(data), "-p", str(port), "-k", tmp,
                   "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                   "-c", "synchronous_commit=off", "-c", "full_page_writes=off"], log, user)
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    _wait_until(lambda: _pg_connect_ok(dsn), proc, log, f"private postgres on port {port}")
    return dsn


def _find_postgres() -> str:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ServiceUnavailable("psycopg is not installed (pip install -e '.[test]')") from None
    tried: list[str] = []
    explicit = os.environ.get("TAXIWAY_TEST_POSTGRES_DSN")
    if explicit:
        if _pg_connect_ok(explicit):
            return explicit
        tried.append(f"TAXIWAY_TEST_POSTGRES_DSN={explicit} does not answer")
    default = "postgresql://postgres@127.0.0.1:5432/postgres"
    if _pg_connect_ok(default):
        return default
    tried.append("nothing answers on 127.0.0.1:5432 as user postgres without a password")
    if _pg_binaries() is None:
        why = _apt_install("postgresql")
        if why:
            tried.append(why)
    try:
        return _start_private_postgres()
    except ServiceUnavailable as exc:
        tried.append(str(exc))
    raise ServiceUnavailable("no PostgreSQL for the tests: " + "; ".join(tried))


def postgres_dsn() -> str:
    """DSN of a usable PostgreSQL server's `postgres` database, as a superuser. Raises
    ServiceUnavailable. Tests should use the `postgres_db` fixture (a database of their own)."""
    return _cached("postgres", _find_postgres)


def with_dbname(dsn: str, dbname: str) -> str:
    """The same server DSN pointing at another database."""
    parts = urlsplit(dsn)
    return parts._replace(path="/" + dbname).geturl()


@contextlib.contextmanager
def temporary_database(admin_dsn: str, prefix: str = "taxiway_test") -> Iterator[str]:
    """Create a uniquely named database, yield its DSN, drop it (closing stray sessions) after."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_dbname(admin_dsn, name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_server() -> str:
    """The admin DSN of a PostgreSQL server (skips the test when none can be had)."""
    try:
        return postgres_dsn()
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def postgres_db(postgres_server: str) -> Iterator[str]:
    """DSN of a fresh, uniquely named database, dropped after the test."""
    with temporary_database(postgres_server) as dsn:
        yield dsn
