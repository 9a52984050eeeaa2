"""The three session designs, proven end to end (issue 5, "The three session designs, proven").

The flights app runs as 3 gunicorn servers (one worker process each, so "server" = "process")
behind `taxiway lb` (round robin). A user logs in through the balancer, then makes 20 requests;
after the 10th, one server is killed with SIGKILL, like a crashed machine.

| sessions            | affinity | expected                                              |
|---------------------|----------|-------------------------------------------------------|
| per-process memory  | none     | logged out (the problem this test shows)              |
| per-process memory  | cookie   | logged in until their server dies, then logged out    |
| database (SQLite/PG)| none     | logged in throughout, even when a server dies         |
| Redis               | none     | logged in throughout                                  |
| signed cookie       | none     | logged in throughout; a tampered cookie is rejected   |
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import Processes, free_port, taxiway_env, wait_for_port
from tests.flights_support import (
    DEMO_PASSWORD,
    AppGroup,
    AppServer,
    app_group,
    csrf_token,
    login,
    manage,
    whoami,
)

pytestmark = pytest.mark.slow

AFFINITY_SECRET = "sessions-test-only-affinity-key-0123456789"
REQUESTS = 20
KILL_AFTER = 10
USER = "user1"


@dataclass
class Deployment:
    group: AppGroup
    lb_port: int
    lb: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    def server_named(self, served_by: str) -> AppServer:
        """The server whose name starts the X-Served-By-App value ("127.0.0.1:PORT pid N")."""
        return next(s for s in self.group.servers if served_by.split()[0] == s.name)


Deploy = Callable[..., Deployment]


def start_lb(procs: Processes, tmp: Path, servers: list[AppServer], affinity: str
             ) -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    text = (f'[listen]\nhttp = "127.0.0.1:{port}"\n[admin]\nlisten = ""\n[access_log]\nenabled = false\n'
            '[balancer]\nstrategy = "round-robin"\nseed = 7\nretries = 2\n'
            '[health]\npath = "/healthz"\ninterval = "250ms"\ntimeout = "2s"\nfall = 1\nrise = 1\n'
            '[outlier]\nenabled = false\n'
            '[headers]\ntrusted_proxies = []\n')
    if affinity == "cookie":
        text += '[affinity]\nmode = "cookie"\nsecret = "${TAXIWAY_AFFINITY_SECRET}"\n'
    for s in servers:
        text += f'[[servers]]\nurl = "{s.url}"\n'
    cfg = tmp / "lb.toml"
    cfg.write_text(text)
    env = taxiway_env()
    env["TAXIWAY_AFFINITY_SECRET"] = AFFINITY_SECRET  # from the environment, never the file
    proc = procs.taxiway("lb", "--config", str(cfg), env=env)
    wait_for_port(port, proc=proc)
    return port, proc


@pytest.fixture
def deploy(procs: Processes, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Deploy]:
    """deploy(sessions, affinity) -> Deployment: 3 app servers sharing one database + the balancer."""
    groups: list[AppGroup] = []
    contexts: list[contextlib.AbstractContextManager[AppGroup]] = []

    def make(sessions: str, affinity: str = "none", database: str = "sqlite") -> Deployment:
        env = {"TAXIWAY_SESSIONS": sessions, "FLIGHTS_TRUST_FORWARDED": "1"}
        if database == "postgres":
            env["DATABASE_URL"] = request.getfixturevalue("postgres_db")
        if sessions == "redis":
            redis = request.getfixturevalue("redis_server")
            env.update(REDIS_URL=redis.url, FLIGHTS_CACHE_PREFIX=redis.prefix.rstrip(":"))
        ctx = app_group(**env)
        group = ctx.__enter__()
        contexts.append(ctx)
        groups.append(group)
        if database == "postgres":
            for args in (("prepare",), ("seed", "--flights", "50", "--users", "2", "--bookings", "0")):
                res = manage(group.env, *args)
                assert res.returncode == 0, res.stdout + res.stderr
        group.start(3, workers=1)
        port, proc = start_lb(procs, tmp_path, group.servers, affinity)
        return Deployment(group, port, proc)

    try:
        yield make
    finally:
        for ctx in contexts:
            ctx.__exit__(None, None, None)


@dataclass
class Journey:
    login_server: str
    seen: list[tuple[str | None, str]]   # (user or None, served-by) per request, in order
    killed: AppServer

    def users(self, part: slice = slice(None)) -> list[str | None]:
        return [u for u, _ in self.seen[part]]

    def servers(self, part: slice = slice(None)) -> set[str]:
        return {s.split()[0] for _, s in self.seen[part]}


def journey(dep: Deployment, client: httpx.Client, kill: str = "login") -> Journey:
    """Log in through the balancer, make 20 requests, kill a server after the 10th.

    kill="login": the server that handled the login POST (the user's server, for affinity)."""
    r = login(client, USER, DEMO_PASSWORD)
    assert r.status_code == 302, r.text
    login_server = r.headers["X-Served-By-App"]
    seen: list[tuple[str | None, str]] = []
    victim = dep.server_named(login_server)
    for i in range(REQUESTS):
        if i == KILL_AFTER:
            victim.kill()
        seen.append(whoami(client))
    return Journey(login_server.split()[0], seen, victim)


def test_memory_sessions_without_affinity_log_the_user_out(deploy: Deploy) -> None:
    dep = deploy("cache")
    with httpx.Client(base_url=dep.url, timeout=30) as c:
        j = journey(dep, c)
    # Round robin sends most requests to servers that never saw the login: the user is logged out
    # (and that server's answer deletes the session cookie it does not know).
    assert None in j.users(slice(0, KILL_AFTER))
    assert len(j.servers(slice(0, KILL_AFTER))) >= 2


def test_memory_sessions_with_cookie_affinity_last_until_the_server_dies(deploy: Deploy) -> None:
    dep = deploy("cache", affinity="cookie")
    with httpx.Client(base_url=dep.url, timeout=30) as c:
        j = journey(dep, c)
        assert "taxiway_srv" in c.cookies
    before, after = slice(0, KILL_AFTER), slice(KILL_AFTER, None)
    assert j.users(before) == [USER] * KILL_AFTER          # sticky: always their own server
    assert j.servers(before) == {j.login_server}
    assert j.killed.name not in j.servers(after)           # moved elsewhere when it died...
    assert set(j.users(after)) == {None}                   # ...where nobody knows their session


@pytest.mark.parametrize(("sessions", "database"), [
    pytest.param("db", "sqlite", id="database-sqlite"),
    pytest.param("db", "postgres", id="database-postgres", marks=pytest.mark.postgres),
    pytest.param("redis", "sqlite", id="redis", marks=pytest.mark.redis),
    pytest.param("signed_cookies", "sqlite", id="signed-cookie"),
])
def test_shared_sessions_survive_a_server_dying(deploy: Deploy, sessions: str, database: str) -> None:
    dep = deploy(sessions, database=database)
    with httpx.Client(base_url=dep.url, timeout=30) as c:
        j = journey(dep, c)
    assert j.users() == [USER] * REQUESTS                   # logged in on every request...
    assert len(j.servers(slice(0, KILL_AFTER))) >= 2        # ...although several servers answered
    assert j.killed.name in j.servers(slice(0, KILL_AFTER))
    assert j.killed.name not in j.servers(slice(KILL_AFTER + 1, None))   # and survivors carried on


def _tamper(value: str) -> str:
    """Change the user id inside a signed-cookie session payload, keeping its signature."""
    payload, _, rest = value.partition(":")
    compressed = payload.startswith(".")
    raw = payload.lstrip(".")
    data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    if compressed:
        data = zlib.decompress(data)
    forged = data.replace(b'"_auth_user_id":"', b'"_auth_user_id":"9')
    assert forged != data
    return base64.urlsafe_b64encode(forged).rstrip(b"=").decode() + ":" + rest


def test_signed_cookie_sessions_reject_tampering_and_show_the_stolen_cookie_limit(deploy: Deploy) -> None:
    dep = deploy("signed_cookies")
    with httpx.Client(base_url=dep.url, timeout=30) as c:
        assert login(c, USER, DEMO_PASSWORD).status_code == 302
        cookie = c.cookies["sessionid"]
        assert whoami(c)[0] == USER

        # 1. Tampered payload (claims another user id), original signature: rejected.
        with httpx.Client(base_url=dep.url, timeout=30) as forger:
            forger.cookies.set("sessionid", _tamper(cookie))
            assert whoami(forger)[0] is None
        # 2. Right shape, signature from another key: rejected.
        with httpx.Client(base_url=dep.url, timeout=30) as forger:
            payload, _, rest = cookie.partition(":")
            ts, _, sig = rest.rpartition(":")
            forger.cookies.set("sessionid", f"{payload}:{ts}:{'A' * len(sig)}")
            assert whoami(forger)[0] is None

        # 3. The limit: a stolen cookie works anywhere, on every server, and logging out does not
        #    revoke it (no server-side state to delete); only its age limit (8 h here) ends it.
        with httpx.Client(base_url=dep.url, timeout=30) as thief:
            thief.cookies.set("sessionid", cookie)
            assert {whoami(thief)[0] for _ in range(3)} == {USER}
            c.post("/logout/", data={"csrfmiddlewaretoken": csrf_token(c.get("/").text)})
            assert whoami(c)[0] is None
            assert whoami(thief)[0] == USER


def test_database_sessions_are_revoked_by_logout_everywhere(deploy: Deploy) -> None:
    """The contrast with signed cookies: server-side state can be deleted, so a copied cookie dies
    with the logout on every server."""
    dep = deploy("db")
    with httpx.Client(base_url=dep.url, timeout=30) as c:
        assert login(c, USER, DEMO_PASSWORD).status_code == 302
        cookie = c.cookies["sessionid"]
        with httpx.Client(base_url=dep.url, timeout=30) as thief:
            thief.cookies.set("sessionid", cookie)
            assert whoami(thief)[0] == USER
            c.post("/logout/", data={"csrfmiddlewaretoken": csrf_token(c.get("/").text)})
            assert {whoami(thief)[0] for _ in range(3)} == {None}
