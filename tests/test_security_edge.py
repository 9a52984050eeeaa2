"""EdgeGuard decisions on real RequestHead objects: API keys (401/403), rate limits (429), store errors."""

from __future__ import annotations

import asyncio
import inspect
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxiway.config import parse_config
from taxiway.proxy.http1 import RequestHead
from taxiway.security.apikeys import KeyFile
from taxiway.security.edge import (
    EdgeGuard,
    client_bucket,
    method_set,
    needs_normalizing,
    normalize_path,
    prefix_matches,
)
from taxiway.security.rejection import Rejection
from tests.conftest import free_port
from tests.services import RedisTarget


def head(path: str = "/", method: str = "GET", ip: str = "10.0.0.1", **headers: str) -> RequestHead:
    hs = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return RequestHead(method, path.encode(), hs, ip, "http", "1.1")


def guard_for(tmp_path: Path, toml: dict[str, Any]) -> EdgeGuard:
    toml.setdefault("apikeys", {}).setdefault("file", str(tmp_path / "keys.json"))
    g = EdgeGuard.from_config(parse_config(toml, env={}))
    assert g is not None
    return g


def test_no_rules_no_routes_means_no_guard() -> None:
    assert EdgeGuard.from_config(parse_config({}, env={})) is None


@pytest.mark.parametrize(
    ("raw", "normal"),
    [pytest.param("/api/x", "/api/x", id="plain"),
     pytest.param("//api//x", "/api/x", id="empty-segments"),
     pytest.param("/public/../api/x", "/api/x", id="dot-dot"),
     pytest.param("/%61pi/x", "/api/x", id="percent-encoded-letter"),
     pytest.param("/./api/", "/api/", id="dot-keeps-trailing-slash"),
     pytest.param("/..", "/", id="dot-dot-above-root"),
     pytest.param("/", "/", id="root"),
     pytest.param("", "/", id="empty"),
     # Case: IIS, case-insensitive Spring routes and macOS/Windows file systems read /API as /api.
     pytest.param("/API/x", "/api/x", id="upper-case"),
     pytest.param("/%41PI/x", "/api/x", id="encoded-upper-case"),
     # Matrix parameters (Tomcat/Spring drop everything from ";" to the end of the segment).
     pytest.param("/api;jsessionid=1/x", "/api/x", id="matrix-param"),
     pytest.param("/api;", "/api", id="bare-semicolon"),
     pytest.param("/public/..;/api/x", "/api/x", id="dot-dot-with-matrix-param"),
     pytest.param("/public/.;x/api", "/public/api", id="dot-with-matrix-param"),
     pytest.param("/api%3bx/y", "/api/y", id="encoded-semicolon"),
     # Trailing dots and blanks (Windows/IIS map "api." and "api " to "api").
     pytest.param("/api.", "/api", id="trailing-dot"),
     pytest.param("/api%20", "/api", id="trailing-space"),
     pytest.param("/api%09/x", "/api/x", id="trailing-tab"),
     pytest.param("/api. . /x", "/api/x", id="trailing-dots-and-spaces"),
     pytest.param("/api/.../x", "/api/x", id="only-dots-is-dropped"),
     pytest.param("/public/..%20/api", "/api", id="dot-dot-with-trailing-space"),
     pytest.param("/static/app.js", "/static/app.js", id="inner-dot-kept"),
     pytest.param("/a%2fb", "/a/b", id="encoded-slash"),
     # Decoded until nothing decodes (the proxy refuses %25XX; this keeps the function idempotent).
     pytest.param("/%2561pi", "/api", id="double-encoded"),
     pytest.param("/%zz/%", "/%zz/%", id="stray-percent"),
     pytest.param("/%ff", "/\ufffd", id="invalid-utf8"),
     ],
)
def test_normalize_path(raw: str, normal: str) -> None:
    assert normalize_path(raw) == normal


@given(st.text())
@settings(max_examples=500)
def test_normalize_path_never_fails_and_is_idempotent(path: str) -> None:
    out = normalize_path(path)
    assert out.startswith("/")
    assert normalize_path(out) == out


@given(st.text().map(lambda s: "/" + s))
@settings(max_examples=500)
def test_fast_path_gate_only_skips_paths_normalisation_keeps(path: str) -> None:
    """check() skips normalize_path when needs_normalizing() says no: that must never change a match."""
    if not needs_normalizing(path):
        assert normalize_path(path) == path


@given(st.text(alphabet="/.;%2065aAbB\t ", max_size=24))
@settings(max_examples=500)
def test_normalize_path_idempotent_on_path_like_text(path: str) -> None:
    out = normalize_path(path)
    assert out.startswith("/") and normalize_path(out) == out


@pytest.mark.parametrize(
    ("path", "expected"),
    [pytest.param("/api/v1/flights", False, id="plain"),
     pytest.param("/", False, id="root"),
     pytest.param("/123/456", False, id="no-letters"),
     pytest.param("/api/x.json", True, id="dot"),
     pytest.param("/API", True, id="upper"),
     pytest.param("/caf\u00c9", True, id="non-ascii-upper"),
     pytest.param("/api;x", True, id="semicolon"),
     pytest.param("/api%20", True, id="percent"),
     pytest.param("/api ", True, id="space"),
     pytest.param("/api\t", True, id="tab"),
     pytest.param("//api", True, id="double-slash")],
)
def test_needs_normalizing_gate(path: str, expected: bool) -> None:
    assert needs_normalizing(path) is expected
    if not expected:
        assert normalize_path(path) == path, "the fast path must only skip paths normalisation keeps"


@pytest.mark.parametrize(
    ("methods", "expected"),
    [pytest.param([], frozenset(), id="all"),
     pytest.param(["GET"], frozenset({"GET", "HEAD"}), id="get-implies-head"),
     pytest.param(["get", "POST"], frozenset({"GET", "HEAD", "POST"}), id="upper-cased"),
     pytest.param(["POST"], frozenset({"POST"}), id="post-only"),
     pytest.param(["HEAD"], frozenset({"HEAD"}), id="head-does-not-imply-get")],
)
def test_method_set(methods: list[str], expected: frozenset[str]) -> None:
    assert method_set(methods) == expected


@pytest.mark.parametrize(
    ("prefix", "path", "expected"),
    [("/api", "/api", True), ("/api", "/api/v1", True), ("/api", "/apix", False), ("/api/", "/api/v1", True),
     ("/", "/anything", True), ("/api", "/", False)],
)
def test_prefix_matches_whole_segments(prefix: str, path: str, expected: bool) -> None:
    assert prefix_matches(prefix, path) is expected


# -- API keys ------------------------------------------------------------------------------------


@pytest.fixture
def keyed(tmp_path: Path) -> tuple[EdgeGuard, dict[str, str]]:
    kf = KeyFile(tmp_path / "keys.json")
    reader, _ = kf.create("reader", ["flights:read"], None)
    writer, _ = kf.create("writer", ["flights:read", "flights:write"], None)
    old, _ = kf.create("old", ["flights:read"], None)
    kf.revoke("old")
    g = guard_for(tmp_path, {"apikeys": {"routes": [
        {"path_prefix": "/api", "scopes": ["flights:read"]},
        {"path_prefix": "/api/bookings", "methods": ["POST", "DELETE"], "scopes": ["flights:write"]},
    ]}})
    return g, {"reader": reader, "writer": writer, "old": old}


def test_public_paths_need_no_key(keyed: tuple[EdgeGuard, dict[str, str]]) -> None:
    g, _ = keyed
    assert g.check(head("/")) is None
    assert g.check(head("/apix")) is None


def test_missing_key_is_401_with_www_authenticate(keyed: tuple[EdgeGuard, dict[str, str]]) -> None:
    g, _ = keyed
    rej = g.check(head("/api/flights"))
    assert isinstance(rej, Rejection) and rej.status == 401
    assert dict(rej.headers)[b"WWW-Authenticate"].startswith(b"Bearer")
    assert rej.reason == "apikey missing"


@pytest.mark.parametrize("path", [
    pytest.param("//api/flights", id="double-slash"),
    pytest.param("/%61pi/flights", id="percent-encoded"),
    pytest.param("/public/../api/flights", id="dot-dot"),
    pytest.param("/API/../api/x", id="upper-then-dot-dot"),
    pytest.param("/API/flights", id="upper-case"),
    pytest.param("/Api", id="mixed-case-bare"),
    pytest.param("/api;x/flights", id="matrix-param"),
    pytest.param("/api;jsessionid=abc", id="matrix-param-bare"),
    pytest.param("/public/..;/api/flights", id="tomcat-dot-dot-semicolon"),
    pytest.param("/api%20", id="trailing-space"),
    pytest.param("/api%20/flights", id="trailing-space-segment"),
    pytest.param("/api.", id="trailing-dot"),
    pytest.param("/api./flights", id="trailing-dot-segment"),
    pytest.param("/api..%20./flights", id="trailing-dots-and-space"),
])
def test_path_tricks_do_not_bypass_the_key(keyed: tuple[EdgeGuard, dict[str, str]], path: str) -> None:
    g, _ = keyed
    rej = g.check(head(path))
    assert isinstance(rej, Rejection) and rej.status == 401


@pytest.mark.parametrize("prefix", [
    pytest.param("/API", id="upper-case"),
    pytest.param("/api.", id="trailing-dot"),
    pytest.param("/api;v=1", id="matrix-param"),
    pytest.param("/%61pi/", id="encoded-with-slash"),
])
def test_route_prefixes_are_normalised_like_paths(tmp_path: Path, prefix: str) -> None:
    g = guard_for(tmp_path, {"apikeys": {"routes": [{"path_prefix": prefix}]}})
    for path in ("/api", "/api/x", "/API/x", "/api;y/x"):
        rej = g.check(head(path))
        assert isinstance(rej, Rejection) and rej.status == 401, (prefix, path)
    assert g.check(head("/apix")) is None


@pytest.mark.parametrize(("method", "status"), [
    pytest.param("GET", 401, id="get"),
    pytest.param("HEAD", 401, id="head-is-get"),
    pytest.param("POST", None, id="post-not-covered"),
])
def test_get_route_also_guards_head(tmp_path: Path, method: str, status: int | None) -> None:
    g = guard_for(tmp_path, {"apikeys": {"routes": [{"path_prefix": "/api", "methods": ["GET"]}]}})
    rej = g.check(head("/api/flights", method))
    assert (rej.status if isinstance(rej, Rejection) else None) == status


def test_get_rate_limit_rule_counts_head(tmp_path: Path) -> None:
    g = guard_for(tmp_path, {"ratelimit": {"rules": [
        {"name": "reads", "rate": "1/h", "path_prefix": "/api", "methods": ["GET"]}]}})
    assert g.check(head("/api/x", "HEAD")) is None
    rej = g.check(head("/api/x", "GET"))
    assert isinstance(rej, Rejection) and rej.status == 429, "HEAD used up GET's allowance"
    rej = g.check(head("/API/x", "HEAD"))
    assert isinstance(rej, Rejection) and rej.status == 429


def test_bearer_and_x_api_key_are_accepted(keyed: tuple[EdgeGuard, dict[str, str]]) -> None:
    g, k = keyed
    assert g.check(head("/api/flights", authorization=f"Bearer {k['reader']}")) is None
    assert g.check(head("/api/flights", authorization=f"bearer  {k['reader']}")) is None
    assert g.check(head("/api/flights", x_api_key=k["reader"])) is None


@pytest.mark.parametrize(
    ("which", "reason"),
    [pytest.param("wrong", "apikey invalid", id="wrong"),
     pytest.param("old", "apikey 'old' revoked", id="revoked")],
)
def test_wrong_and_revoked_keys_are_401_and_never_logged(keyed: tuple[EdgeGuard, dict[str, str]],
                                                         which: str, reason: str) -> None:
    g, k = keyed
    presented = k["reader"][:-3] + "xyz" if which == "wrong" else k[which]
    rej = g.check(head("/api/flights", authorization=f"Bearer {presented}"))
    assert isinstance(rej, Rejection) and rej.status == 401
    assert rej.reason == reason
    assert presented not in rej.reason and presented.encode() not in rej.body
    assert b"invalid_token" in dict(rej.headers)[b"WWW-Authenticate"]


def test_missing_scope_is_403_naming_the_key(keyed: tuple[EdgeGuard, dict[str, str]]) -> None:
    g, k = keyed
    rej = g.check(head("/api/bookings", "POST", authorization=f"Bearer {k['reader']}"))
    assert isinstance(rej, Rejection) and rej.status == 403
    assert rej.reason == "apikey 'reader' lacks scope flights:write"
    assert b"insufficient_scope" in dict(rej.headers)[b"WWW-Authenticate"]
    assert g.check(head("/api/bookings", "POST", authorization=f"Bearer {k['writer']}")) is None
    # GET on the same path falls back to the /api route (read scope).
    assert g.check(head("/api/bookings", "GET", authorization=f"Bearer {k['reader']}")) is None


def test_expired_key_is_401(tmp_path: Path) -> None:
    kf = KeyFile(tmp_path / "keys.json")
    key, _ = kf.create("short", [], 0.001, now=1.0)
    g = guard_for(tmp_path, {"apikeys": {"routes": [{"path_prefix": "/api"}]}})
    rej = g.check(head("/api", x_api_key=key))
    assert isinstance(rej, Rejection) and rej.status == 401 and rej.reason == "apikey 'short' expired"


# -- rate limits (memory store) -------------------------------------------------------------------


def test_flood_from_one_address_gets_429_while_another_is_served(tmp_path: Path) -> None:
    g = guard_for(tmp_path, {"ratelimit": {"rules": [{"name": "per-ip", "rate": "1/h", "burst": 4}]}})
    results = [g.check(head(ip="10.0.0.1")) for _ in range(10)]
    assert results[:5] == [None] * 5
    rej = results[5]
    assert isinstance(rej, Rejection) and rej.status == 429
    hs = dict(rej.headers)
    assert int(hs[b"Retry-After"]) > 3000
    assert hs[b"RateLimit-Limit"] == b"1" and hs[b"RateLimit-Remaining"] == b"0"
    assert int(hs[b"RateLimit-Reset"]) == int(hs[b"Retry-After"])
    assert rej.reason == "ratelimit per-ip"
    assert g.check(head(ip="10.0.0.2")) is None


def test_route_and_method_scoping(tmp_path: Path) -> None:
    g = guard_for(tmp_path, {"ratelimit": {"rules": [
        {"name": "login", "rate": "1/h", "path_prefix": "/login", "methods": ["POST"]}]}})
    assert g.check(head("/login", "POST")) is None
    assert isinstance(g.check(head("/login", "POST")), Rejection)
    assert g.check(head("/login", "GET")) is None
    assert g.check(head("/other", "POST")) is None


def test_global_rule_counts_everyone_together(tmp_path: Path) -> None:
    rule = {"name": "all", "rate": "1/h", "key": "global", "burst": 1}
    g = guard_for(tmp_path, {"ratelimit": {"rules": [rule]}})
    assert g.check(head(ip="1.1.1.1")) is None
    assert g.check(head(ip="2.2.2.2")) is None
    assert isinstance(g.check(head(ip="3.3.3.3")), Rejection)


def test_api_key_rule_counts_per_key_and_anonymous_per_address(tmp_path: Path) -> None:
    kf = KeyFile(tmp_path / "keys.json")
    a, _ = kf.create("a", [], None)
    b, _ = kf.create("b", [], None)
    g = guard_for(tmp_path, {"ratelimit": {"rules": [{"name": "per-key", "rate": "1/h", "key": "api_key"}]}})
    assert g.check(head(ip="1.1.1.1", x_api_key=a)) is None
    assert isinstance(g.check(head(ip="2.2.2.2", x_api_key=a)), Rejection)   # same key, other address
    assert g.check(head(ip="1.1.1.1", x_api_key=b)) is None
    assert g.check(head(ip="3.3.3.3")) is None
    # Made-up keys do not buy a fresh allowance: they count against the address.
    made_up = "tw_00000000_madeupmadeupmadeupmadeup"
    assert isinstance(g.check(head(ip="3.3.3.3", x_api_key=made_up)), Rejection)


def test_memory_store_answers_synchronously(tmp_path: Path) -> None:
    g = guard_for(tmp_path, {"ratelimit": {"rules": [{"name": "r", "rate": "10/s"}]}})
    assert not inspect.isawaitable(g.check(head()))


# -- Redis store ----------------------------------------------------------------------------------


@pytest.mark.redis
def test_redis_guard_limits_and_is_async(tmp_path: Path, redis_server: RedisTarget) -> None:
    g = guard_for(tmp_path, {"ratelimit": {"store": "redis", "redis_url": redis_server.url,
                                           "key_prefix": redis_server.prefix,
                                           "rules": [{"name": "per-ip", "rate": "1/h", "burst": 2}]}})

    async def go() -> list[Rejection | None]:
        out = []
        for _ in range(4):
            res = g.check(head())
            assert inspect.isawaitable(res)
            out.append(await res)
        await g.close()
        return out

    out = asyncio.run(go())
    assert out[:3] == [None] * 3
    assert isinstance(out[3], Rejection) and out[3].status == 429


@pytest.mark.parametrize(("mode", "status"), [("open", None), ("closed", 503)])
def test_unreachable_redis_applies_on_store_error_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                          mode: str, status: int | None) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    g = guard_for(tmp_path, {"ratelimit": {"store": "redis", "redis_url": dead, "on_store_error": mode,
                                           "rules": [{"name": "per-ip", "rate": "1/h"}]}})

    async def go() -> list[Rejection | None]:
        out = [await g.check(head()) for _ in range(3)]  # type: ignore[misc]
        await g.close()
        return out

    with caplog.at_level(logging.WARNING, logger="taxiway.security"):
        out = asyncio.run(go())
    for res in out:
        assert (res.status if res else None) == status
    warnings = [r for r in caplog.records if "on_store_error" in r.getMessage()]
    assert len(warnings) == 1, "logged once per interval, not once per request"
    assert f"on_store_error = {mode}" in warnings[0].getMessage()
    assert g.counters["ratelimit_store_error"] == 3


@pytest.mark.parametrize(
    ("ip", "bucket"),
    [("10.1.2.3", "10.1.2.3"), ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
     ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"), ("::ffff:10.1.2.3", "10.1.2.3"),
     ("unknown", "unknown")],
)
def test_client_bucket(ip: str, bucket: str) -> None:
    assert client_bucket(ip) == bucket


def test_ipv6_addresses_in_one_64_share_a_limit(tmp_path: Path) -> None:
    g = guard_for(tmp_path, {"ratelimit": {"rules": [{"name": "per-ip", "rate": "1/h", "burst": 1}]}})
    assert g.check(head(ip="2001:db8::1")) is None
    assert g.check(head(ip="2001:db8::2")) is None
    assert isinstance(g.check(head(ip="2001:db8::ffff:3")), Rejection)   # same /64: limited
    assert g.check(head(ip="2001:db8:0:1::1")) is None                   # next /64: its own


def test_refusals_are_logged_by_name_and_summarised(keyed: tuple[EdgeGuard, dict[str, str]],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    g, k = keyed
    with caplog.at_level(logging.INFO, logger="taxiway.security"):
        for _ in range(50):
            g.check(head("/api/flights", x_api_key=k["old"]))
    lines = [r.getMessage() for r in caplog.records if "refused at the edge" in r.getMessage()]
    assert lines == ["refused at the edge: apikey 'old' revoked x1"]   # the rest wait for the summary
    assert all(k["old"] not in r.getMessage() for r in caplog.records)
