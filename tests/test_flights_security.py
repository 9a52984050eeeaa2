"""Attacks against the flights app, performed for real over HTTP (issue 6, "In the flights app").

Each test is an attack a user of the app could mount, and asserts what they would observe:
injection strings are data, script payloads come back inert, cross-site POSTs are refused, password
guessing hits a limit, and the app will not start with an insecure configuration.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.flights_support import FLIGHTS_DIR as APP_DIR
from tests.flights_support import (
    AppGroup,
    AppServer,
    app_group,
    base_env,
    csrf_token,
    gunicorn_args,
    login,
    manage,
    prepared_dir,
    register,
    whoami,
)

pytestmark = pytest.mark.slow

PASSWORD = "sturdy-password-" + uuid.uuid4().hex[:8]
SQLI = ["' OR 1=1 --", "' OR '1'='1", "x'; DROP TABLE airline_domesticflight; --",
        "\" OR \"\"=\"", "') UNION SELECT username, password, 1, 1, 1, 1, 1, 1, 1, 1 FROM auth_user --",
        "%' --", "\\'; SELECT 1; --"]
XSS = '<script>alert("xss")</script>'
XSS_IMG = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def group() -> Iterator[AppGroup]:
    with app_group(FLIGHTS_LOGIN_LIMIT="5") as g:
        g.start(1, workers=2)
        yield g


@pytest.fixture(scope="module")
def server(group: AppGroup) -> AppServer:
    return group.servers[0]


@pytest.fixture
def client(server: AppServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def new_user(client: httpx.Client, display_name: str = "") -> str:
    name = "u" + uuid.uuid4().hex[:10]
    r = register(client, name, PASSWORD, display_name)
    assert r.status_code == 302, r.text
    return name


def flight_count(group: AppGroup) -> int:
    db = sqlite3.connect(group.db_path, timeout=20)
    try:
        return db.execute("SELECT count(*) FROM airline_domesticflight").fetchone()[0]
    finally:
        db.close()


# --- SQL injection -------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", SQLI)
def test_sql_injection_in_search_is_just_text(client: httpx.Client, group: AppGroup, payload: str) -> None:
    before = flight_count(group)
    page = client.get("/", params={"q": payload})
    assert page.status_code == 200
    assert "No flights match." in page.text  # the payload matched nothing, it did not widen the query
    api = client.get("/api/flights", params={"q": payload, "sort": payload, "kind": payload})
    assert api.status_code == 200 and api.json()["results"] == []
    assert "argon2" not in api.text and "argon2" not in page.text  # no password hashes leaked by UNION
    assert flight_count(group) == before  # nothing dropped


@pytest.mark.parametrize("payload", SQLI)
def test_sql_injection_in_login_does_not_authenticate(server: AppServer, payload: str) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        victim = new_user(c)
        c.post("/logout/", data={"csrfmiddlewaretoken": csrf_token(c.get("/").text)})
        for username, password in ((payload, payload), (victim + payload, "x"), (victim, payload)):
            r = login(c, username, password)
            assert r.status_code in (401, 429), r.status_code
            assert whoami(c)[0] is None


# --- XSS -----------------------------------------------------------------------------------------


def test_reflected_xss_in_search_comes_back_escaped(client: httpx.Client) -> None:
    page = client.get("/", params={"q": XSS})
    assert page.status_code == 200
    assert XSS not in page.text
    assert "&lt;script&gt;alert(&quot;xss&quot;)&lt;/script&gt;" in page.text
    page = client.get("/login/", params={"next": '"><script>alert(1)</script>'})
    assert "<script>alert(1)" not in page.text


def test_stored_xss_in_names_comes_back_escaped(client: httpx.Client) -> None:
    new_user(client, display_name=XSS_IMG)
    ref = client.get("/api/flights", params={"kind": "domestic"}).json()["results"][1]["ref"]
    token = csrf_token(client.get(f"/flights/{ref}/").text)
    r = client.post(f"/flights/{ref}/book", data={"full_name": XSS, "csrfmiddlewaretoken": token})
    assert r.status_code == 302
    page = client.get("/bookings/")
    assert XSS not in page.text and XSS_IMG not in page.text
    assert "&lt;script&gt;alert(&quot;xss&quot;)&lt;/script&gt;" in page.text  # the passenger name
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text                   # the display name


def test_csp_forbids_inline_scripts_and_pages_have_none(client: httpx.Client) -> None:
    new_user(client)
    for url in ("/", "/login/", "/register/", "/flights/D1/", "/bookings/"):
        r = client.get(url)
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        scripts = re.findall(r"<script([^>]*)>", r.text)
        assert scripts and all("src=" in attrs for attrs in scripts), url
        assert not re.search(r"\son[a-z]+=", r.text), f"inline event handler in {url}"


# --- CSRF and methods ----------------------------------------------------------------------------


def test_cross_site_post_without_token_is_refused(client: httpx.Client) -> None:
    new_user(client)
    ref = client.get("/api/flights").json()["results"][0]["ref"]
    before = client.get(f"/api/flights/{ref}").json()["seats_left"]
    # What a form on evil.example would send: the victim's cookies ride along, but no token.
    forged = client.post(f"/flights/{ref}/book", data={"full_name": "Mallory"},
                         headers={"Origin": "https://evil.example", "Referer": "https://evil.example/x"})
    assert forged.status_code == 403
    no_token = client.post(f"/flights/{ref}/book", data={"full_name": "Mallory"})
    assert no_token.status_code == 403
    # Even a valid token does not help a request that says it comes from another site.
    token = csrf_token(client.get(f"/flights/{ref}/").text)
    cross = client.post(f"/flights/{ref}/book", data={"full_name": "Mallory", "csrfmiddlewaretoken": token},
                        headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert client.post("/logout/").status_code == 403 and whoami(client)[0] is not None
    assert client.get(f"/api/flights/{ref}").json()["seats_left"] == before
    assert "Mallory" not in client.get("/bookings/").text


# --- passwords and login limit -------------------------------------------------------------------


def test_passwords_are_stored_as_argon2id(client: httpx.Client, group: AppGroup) -> None:
    name = new_user(client)
    db = sqlite3.connect(group.db_path, timeout=20)
    try:
        (stored,) = db.execute("SELECT password FROM auth_user WHERE username = ?", (name,)).fetchone()
    finally:
        db.close()
    assert stored.startswith("argon2$argon2id$") and PASSWORD not in stored


def test_login_brute_force_hits_the_limit(server: AppServer) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        victim = new_user(c)
        bystander = new_user(c)
        c.post("/logout/", data={"csrfmiddlewaretoken": csrf_token(c.get("/").text)})
        statuses = [login(c, victim, f"guess-{i}").status_code for i in range(5)]
        assert statuses == [401] * 5
        blocked = login(c, victim, f"guess-{uuid.uuid4().hex}")
        assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
        # Locked means locked: even the right password is refused now (no oracle for the attacker)...
        assert login(c, victim, PASSWORD).status_code == 429 and whoami(c)[0] is None
        # ...while other accounts from the same address still work.
        assert login(c, bystander, PASSWORD).status_code == 302 and whoami(c)[0] == bystander


def test_successful_login_resets_the_failure_count(server: AppServer) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        name = new_user(c)
        c.post("/logout/", data={"csrfmiddlewaretoken": csrf_token(c.get("/").text)})
        for _ in range(3):
            assert login(c, name, "wrong-password").status_code == 401
        assert login(c, name, PASSWORD).status_code == 302
        c.post("/logout/", data={"csrfmiddlewaretoken": csrf_token(c.get("/").text)})
        for _ in range(3):
            assert login(c, name, "wrong-password").status_code == 401  # a fresh window of 5


def test_login_redirect_is_not_an_open_redirect(server: AppServer) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        name = new_user(c)
        c.post("/logout/", data={"csrfmiddlewaretoken": csrf_token(c.get("/").text)})
        page = c.get("/login/")
        r = c.post("/login/", data={"username": name, "password": PASSWORD, "next": "https://evil.example/",
                                    "csrfmiddlewaretoken": csrf_token(page.text)})
        assert r.status_code == 302 and r.headers["location"] == "/"


# --- secrets and production mode -----------------------------------------------------------------


def refused(env: dict[str, str], tmp: Path) -> tuple[int | None, str, bool]:
    """Start gunicorn with `env`; return (exit status, output, whether anything ever listened)."""
    port = free_port()
    log = tmp / f"refuse-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(gunicorn_args(port, 1), cwd=APP_DIR, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    listened = False
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        listened = True
    except httpx.HTTPError:
        pass
    return status, log.read_text(errors="replace"), listened


@pytest.mark.parametrize(("extra", "drop_key", "why"), [
    pytest.param({"TAXIWAY_ENV": "production"}, True, "DJANGO_SECRET_KEY is not set", id="production-no-key"),
    pytest.param({}, True, "DJANGO_SECRET_KEY is not set", id="no-key-no-debug"),
    pytest.param({"TAXIWAY_ENV": "production", "DJANGO_DEBUG": "1"}, False, "DJANGO_DEBUG is on",
                 id="production-with-debug"),
    pytest.param({"TAXIWAY_ENV": "production", "DJANGO_SECRET_KEY": "short"}, False,
                 "DJANGO_SECRET_KEY is shorter than 32", id="production-short-key"),
])
def test_app_refuses_to_start_insecurely(extra: dict[str, str], drop_key: bool, why: str) -> None:
    workdir = prepared_dir()
    env = base_env(workdir, **extra)
    if drop_key:
        del env["DJANGO_SECRET_KEY"]
    status, output, listened = refused(env, workdir)
    assert status not in (0, None), output
    assert f"flights: refusing to start: {why}" in output
    assert not listened
    # manage.py says the same in one line, without a traceback.
    res = manage(env, "check")
    assert res.returncode == 4 and "Traceback" not in res.stderr
    refusal = next(line for line in output.splitlines() if "refusing" in line)
    assert res.stderr.strip().splitlines() == [refusal]


@pytest.mark.parametrize(("extra", "why"), [
    pytest.param({"TAXIWAY_SESSIONS": "redis"}, "TAXIWAY_SESSIONS=redis needs REDIS_URL", id="redis-no-url"),
    pytest.param({"TAXIWAY_SESSIONS": "files"}, "TAXIWAY_SESSIONS must be db, cache, redis or signed_cookies",
                 id="unknown-sessions"),
    pytest.param({"FLIGHTS_CACHES": "view,everything"}, "FLIGHTS_CACHES must be all, none or a list",
                 id="unknown-cache"),
    pytest.param({"FLIGHTS_LOGIN_LIMIT": "lots"}, "FLIGHTS_LOGIN_LIMIT must be a whole number",
                 id="bad-limit"),
    pytest.param({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL must start with postgres:// or sqlite:///",
                 id="unknown-database"),
])
def test_bad_settings_get_one_line(extra: dict[str, str], why: str) -> None:
    res = manage(base_env(prepared_dir(), **extra), "check")
    assert res.returncode == 4
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]  # one line, no traceback
    assert res.stderr.startswith(f"flights: refusing to start: {why}")


def test_production_mode_with_a_key_starts() -> None:
    with app_group(TAXIWAY_ENV="production", FLIGHTS_ALLOW_HTTP="1") as g:
        (s,) = g.start(1, workers=1)
        r = httpx.get(s.url + "/", timeout=30)
        assert r.status_code == 200 and "Traceback" not in r.text
        assert httpx.get(s.url + "/nope", timeout=30).status_code == 404
        assert "Page not found at" not in httpx.get(s.url + "/nope", timeout=30).text  # no debug page
