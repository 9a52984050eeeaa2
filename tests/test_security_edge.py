"""EdgeGuard decisions on real RequestHead objects: API keys (401/403), rate limits (429), store errors."""

from __future__ import annotations

import asyncio
import inspect
import logging
from pathlib import Path
from typing import Any

import pytest

from taxiway.config import parse_config
from taxiway.proxy.http1 import RequestHead
from taxiway.security.apikeys import KeyFile
from taxiway.security.edge import EdgeGuard, Rejection, client_bucket, normalize_path, prefix_matches
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
    [("/api/x", "/api/x"), ("//api//x", "/api/x"), ("/public/../api/x", "/api/x"), ("/%61pi/x", "/api/x"),
     ("/./api/", "/api/"), ("/..", "/"), ("/", "/")],
)
def test_normalize_path(raw: str, normal: str) -> None:
    assert normalize_path(raw) == normal


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


@pytest.mark.parametrize("path", ["//api/flights", "/%61pi/flights", "/public/../api/flights",
                                  "/API/../api/x"])
def test_path_tricks_do_not_bypass_the_key(keyed: tuple[EdgeGuard, dict[str, str]], path: str) -> None:
    g, _ = keyed
    rej = g.check(head(path))
    assert isinstance(rej, Rejection) and rej.status == 401


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
