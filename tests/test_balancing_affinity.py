"""Sticky-cookie affinity: round trip, attributes, and forged/tampered/unknown values ignored."""

from __future__ import annotations

import base64
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxiway.balancing.affinity import CookieAffinity, ip_affinity, record_sticky, sticky_server
from taxiway.balancing.model import Server
from taxiway.errors import ConfigError

SECRET = b"test-only-secret-0123456789abcdef"
NAME = "http://127.0.0.1:9001"


def cookie_pair(aff: CookieAffinity, server: str) -> bytes:
    """The `name=value` part a browser sends back from a Set-Cookie header."""
    return aff.set_cookie_header(server, secure=False).split(b";", 1)[0]


def test_round_trip_among_other_cookies() -> None:
    aff = CookieAffinity(SECRET)
    pair = cookie_pair(aff, NAME)
    assert aff.server_from(pair) == NAME
    assert aff.server_from(b"sessionid=abc; " + pair + b"; csrftoken=xyz") == NAME
    assert aff.server_from(b"csrftoken=xyz;" + pair) == NAME


@pytest.mark.parametrize(("secure", "expected"), [
    pytest.param(False, [b"Path=/", b"HttpOnly", b"SameSite=Lax"], id="http"),
    pytest.param(True, [b"Path=/", b"HttpOnly", b"SameSite=Lax", b"Secure"], id="https"),
])
def test_set_cookie_attributes(secure: bool, expected: list[bytes]) -> None:
    header = CookieAffinity(SECRET, cookie_name="lb").set_cookie_header(NAME, secure=secure)
    first, *attrs = header.split(b"; ")
    assert first.startswith(b"lb=")
    assert attrs == expected
    # Only cookie-safe characters in the value (RFC 6265 cookie-octet, no quoting needed).
    assert all(c.isalnum() or c in "-_." for c in first[3:].decode())


def _tamper_name(pair: bytes) -> bytes:
    name, value = pair.split(b"=", 1)
    sig = value.split(b".")[1]
    other = base64.urlsafe_b64encode(b"http://127.0.0.1:9002").rstrip(b"=")
    return name + b"=" + other + b"." + sig


def _flip_sig(pair: bytes) -> bytes:
    last = pair[-1:]
    return pair[:-1] + (b"A" if last != b"A" else b"B")


@pytest.mark.parametrize("mangle", [
    pytest.param(lambda p: None, id="no-header"),
    pytest.param(lambda p: b"", id="empty-header"),
    pytest.param(lambda p: b"other=1", id="no-cookie-of-ours"),
    pytest.param(lambda p: b"taxiway_srv=" + base64.urlsafe_b64encode(NAME.encode()), id="unsigned-name"),
    pytest.param(_tamper_name, id="name-swapped-signature-kept"),
    pytest.param(_flip_sig, id="signature-flipped"),
    pytest.param(lambda p: p.split(b".")[0] + b".", id="empty-signature"),
    pytest.param(lambda p: b"taxiway_srv=.abc", id="empty-name"),
    pytest.param(lambda p: b"taxiway_srv=%%%.***", id="not-base64"),
    pytest.param(lambda p: b"taxiway_srv=" + b"\xff\xfe.\x00", id="binary-garbage"),
    pytest.param(lambda p: p[:14] + b"*" + p[14:], id="junk-inside-the-name"),
    pytest.param(lambda p: p + b"+", id="junk-after-the-signature"),
    pytest.param(lambda p: cookie_pair(CookieAffinity(b"another-secret-0123456789"), NAME),
                 id="signed-with-another-key"),
    pytest.param(lambda p: p.replace(b"taxiway_srv=", b"taxiway_srv2="), id="other-cookie-name"),
])
def test_forged_or_tampered_cookies_are_ignored(mangle) -> None:
    aff = CookieAffinity(SECRET)
    assert aff.server_from(mangle(cookie_pair(aff, NAME))) is None


def test_unknown_server_is_ignored_when_the_pool_is_given() -> None:
    aff = CookieAffinity(SECRET)
    pair = cookie_pair(aff, "removed-server")
    assert aff.server_from(pair) == "removed-server"
    assert aff.server_from(pair, known={"a", "b"}) is None
    assert aff.server_from(pair, known={"removed-server"}) == "removed-server"


def test_a_bad_cookie_does_not_hide_a_good_one() -> None:
    aff = CookieAffinity(SECRET)
    assert aff.server_from(b"taxiway_srv=junk.junk; " + cookie_pair(aff, NAME)) == NAME


@settings(max_examples=200, deadline=None)
@given(name=st.text(min_size=1, max_size=60))
def test_any_server_name_round_trips(name: str) -> None:
    aff = CookieAffinity(SECRET)
    assert aff.server_from(cookie_pair(aff, name)) == name


@settings(max_examples=300, deadline=None)
@given(header=st.binary(max_size=120))
def test_random_bytes_never_verify_or_raise(header: bytes) -> None:
    assert CookieAffinity(SECRET).server_from(header) is None


@pytest.mark.parametrize(("secret", "cookie", "key"), [
    pytest.param(b"short", "taxiway_srv", "affinity.secret", id="short-secret"),
    pytest.param(SECRET, "bad name;", "affinity.cookie_name", id="cookie-name-with-separator"),
    pytest.param(SECRET, "", "affinity.cookie_name", id="empty-cookie-name"),
])
def test_bad_settings_are_config_errors(secret: bytes, cookie: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        CookieAffinity(secret, cookie_name=cookie)
    assert err.value.key == key


def test_sticky_server_only_among_candidates() -> None:
    a, b = Server("a", "h", 1), Server("b", "h", 2)
    assert sticky_server("b", [a, b]) is b
    assert sticky_server("b", [a]) is None       # down, draining or already tried
    assert sticky_server(None, [a, b]) is None


def test_ip_affinity_keeps_clients_put_even_under_load() -> None:
    pool = [Server(f"s{i}", "h", i) for i in range(3)]
    strategy = ip_affinity(random.Random(0))
    assert strategy.key_kind == "client_ip"
    home = strategy.pick(pool, "192.0.2.10", 0.0)
    assert home is not None
    home.inflight = 500                     # no bounded loads: sessions must not move
    assert strategy.pick(pool, "192.0.2.10", 0.0) is home


def test_sticky_client_counts_follow_cookies_issued_and_moved() -> None:
    a, b = Server("a", "h", 1), Server("b", "h", 2)
    for _ in range(3):
        record_sticky(None, a)          # three new clients land on a
    record_sticky(a, b)                 # a goes down: one of them is moved to b
    record_sticky(b, b)                 # re-issuing the same server changes nothing
    assert (a.sticky_clients, b.sticky_clients) == (2, 1)
    a.sticky_clients = 0
    record_sticky(a, b)                 # never below zero (counts reset on reload)
    assert (a.sticky_clients, b.sticky_clients) == (0, 2)
