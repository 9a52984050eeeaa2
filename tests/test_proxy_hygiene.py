"""Request and response hygiene (issue 11, B-D): one reading of the target and Host, no spoofable
client claims, bounded heads on both sides, a body that must keep moving, and the odd corners
of HTTP/1.1 (hop-by-hop fields, 1xx and 101, transfer codings, versions, request ids). Each test
performs the attack through a real balancer against a real origin on loopback."""

from __future__ import annotations

import itertools
import json
import socket
import time
from pathlib import Path

import pytest

from taxiway.proxy.accesslog import redact_target
from taxiway.proxy.http1 import RequestRefused, check_host, check_target
from tests.proxy_support import (
    Client,
    InProcess,
    Origin,
    OriginRequest,
    make_config,
    ok_response,
    wait_until,
)


def echo(req: OriginRequest) -> bytes:
    """Answer with the path the origin saw and the X-Request-Id it got."""
    rid = req.header("x-request-id") or ""
    return ok_response(req.target, f"X-Echo-Id: {rid}\r\n")


@pytest.fixture
def origin():
    o = Origin(echo)
    yield o
    o.close()


@pytest.fixture
def lb(origin):
    b = InProcess(make_config([origin.port]))
    yield b
    b.stop()


def raw(port: int, data: bytes) -> tuple[Client, bytes]:
    c = Client(port)
    c.send(data)
    return c, c.read_all()


# -- B3/B4: the target has one reading ------------------------------------------------------

AMBIGUOUS = [
    pytest.param(b"/api/bookings#x", id="fragment"),
    pytest.param(b"/admin#", id="empty-fragment"),
    pytest.param(b"/?q=1#frag", id="fragment-after-query"),
    pytest.param(b"/api\\x", id="backslash"),
    pytest.param(b"/%5capi", id="escaped-backslash"),
    pytest.param(b"/%5Capi", id="escaped-backslash-upper"),
    pytest.param(b"/api%00", id="nul"),
    pytest.param(b"/api%0a", id="newline"),
    pytest.param(b"/api%7F", id="del"),
    pytest.param(b"/%2561pi", id="double-escape"),
    pytest.param(b"/api%zz", id="bad-escape"),
    pytest.param(b"/api%2", id="short-escape"),
]

UNAMBIGUOUS = [
    pytest.param(b"/files/my%20doc", id="space"),
    pytest.param(b"/100%25", id="escaped-percent-alone"),
    pytest.param(b"/a%2Fb", id="escaped-slash"),
    pytest.param(b"/search?q=%00%5c%2561", id="query-left-alone"),
    pytest.param(b"/caf%C3%A9", id="utf8"),
]


@pytest.mark.parametrize("target", AMBIGUOUS)
def test_check_target_refuses_what_apps_read_differently(target: bytes) -> None:
    with pytest.raises(RequestRefused) as exc:
        check_target(target)
    assert exc.value.status == 400


@pytest.mark.parametrize("target", UNAMBIGUOUS)
def test_check_target_passes_ordinary_escapes(target: bytes) -> None:
    check_target(target)


@pytest.mark.parametrize("target", AMBIGUOUS)
def test_ambiguous_targets_get_400_and_never_reach_the_app(lb, origin, target: bytes) -> None:
    c, out = raw(lb.port, b"POST " + target + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    c.close()
    assert out.startswith(b"HTTP/1.1 400 "), out[:100]
    assert origin.got == []
    assert lb.bal.fold_counters()["error_400"] == 1


def test_ambiguous_target_fed_byte_by_byte(lb, origin) -> None:
    c = Client(lb.port)
    for b in b"GET /admin#x HTTP/1.1\r\nHost: t\r\n\r\n":
        c.send(bytes([b]))
    assert c.read_all().startswith(b"HTTP/1.1 400 ")
    assert origin.got == []


@pytest.mark.parametrize("target", UNAMBIGUOUS)
def test_ordinary_escapes_reach_the_app_as_sent(lb, origin, target: bytes) -> None:
    c = Client(lb.port)
    r = c.get(target.decode())
    assert r.status == 200 and bytes(r.body) == target


def test_fragment_cannot_walk_past_api_key_route(origin, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text('{"keys": []}')
    cfg = make_config([origin.port], apikeys={"file": str(keys)}).replace(
        "[[servers]]", '[[apikeys.routes]]\npath_prefix = "/admin"\nscopes = ["admin"]\n[[servers]]', 1)
    with InProcess(cfg) as b:
        for target in (b"/admin", b"/admin#", b"/admin#x", b"/ADMIN"):
            c, out = raw(b.port, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            c.close()
            assert out.split(b" ")[1] in (b"400", b"401"), (target, out[:80])
        assert origin.got == []


# -- B6: Host -------------------------------------------------------------------------------

BAD_HOSTS = [
    pytest.param(b'x", for=6.6.6.6;proto=https;host="y', id="forwarded-injection"),
    pytest.param(b"a, b", id="list"),
    pytest.param(b"evil.example#", id="fragment"),
    pytest.param(b"evil.example/x", id="slash"),
    pytest.param(b"a b", id="space"),
    pytest.param(b"host:port", id="port-not-digits"),
    pytest.param(b"[::1", id="open-bracket"),
    pytest.param(b"a;b=c", id="semicolon"),
]


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_invalid_host_gets_400(lb, origin, host: bytes) -> None:
    with pytest.raises(RequestRefused):
        check_host(host)
    # twice on one connection path: the first request's Host is cached per connection, so an
    # attacker must not get a bad Host past the cache by sending a good one first
    c = Client(lb.port)
    assert c.get("/first").status == 200
    c.send(b"GET /second HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert c.read_response().status == 400
    assert origin.paths() == [b"/first"]


@pytest.mark.parametrize("host", [b"example.com", b"example.com:8080", b"127.0.0.1:80", b"[::1]:8443",
                                  b"xn--caf-dma.example", b"under_score.local", b""])
def test_valid_hosts_pass(host: bytes) -> None:
    check_host(host)


def test_host_with_forwarding_fields_is_checked_on_the_slow_path_too(lb, origin) -> None:
    c, out = raw(lb.port, b'GET / HTTP/1.1\r\nHost: a", for=1.2.3.4\r\nX-Forwarded-For: 9.9.9.9\r\n\r\n')
    c.close()
    assert out.startswith(b"HTTP/1.1 400 ")
    assert origin.got == []


# -- B7: spoofable client claims --------------------------------------------------------------

CLAIMS = {"X-Real-IP": "6.6.6.6", "True-Client-IP": "6.6.6.6", "X-Forwarded-Port": "443",
          "X-Forwarded-Prefix": "/admin", "X-Original-URL": "/admin", "X-HTTP-Method-Override": "DELETE",
          "CF-Connecting-IP": "6.6.6.6"}


def test_client_claims_are_dropped_from_untrusted_clients(lb, origin) -> None:
    c = Client(lb.port)
    assert c.get("/", dict(CLAIMS, **{"X-Kept": "yes"})).status == 200
    req = origin.got[0]
    for name in CLAIMS:
        assert req.header(name) is None, name
    assert req.header("X-Kept") == "yes"


def test_client_claims_pass_from_a_trusted_proxy(origin) -> None:
    with InProcess(make_config([origin.port], headers={"trusted_proxies": ["127.0.0.1/32"]})) as b:
        assert Client(b.port).get("/", CLAIMS).status == 200
        req = origin.got[0]
        for name, value in CLAIMS.items():
            assert req.header(name) == value, name


def test_request_trailers_cannot_carry_forwarding_fields_or_keys(lb, origin) -> None:
    c = Client(lb.port)
    c.send(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n0\r\nX-Forwarded-For: 10.9.9.9\r\nForwarded: for=10.9.9.9\r\n"
           b"X-Request-Id: forged\r\nX-API-Key: tw_00000000_aaaaaaaaaaaaaaaaaaaaaaaa\r\n"
           b"X-Real-IP: 10.9.9.9\r\nX-Checksum: 42\r\n\r\n")
    assert c.read_response().status == 200
    req = origin.got[0]
    assert bytes(req.body) == b"abc"
    names = {n.lower() for n, _ in req.trailers}
    assert names == {b"x-checksum"}
    assert "10.9.9.9" not in req.all("x-forwarded-for")


# -- C8: a head that never ends ------------------------------------------------------------


def flood_until_answered(port: int, start: bytes, piece: int, limit_s: float = 8.0) -> tuple[bytes, float]:
    """Send `start`, then a field value of `a`s in writes of `piece` bytes that never ends, until
    the balancer answers (or `limit_s` passes); returns the first answer bytes and the wait."""
    c = Client(port)
    c.send(start)
    got = b""
    t0 = time.monotonic()
    c.sock.settimeout(0.0)
    while time.monotonic() - t0 < limit_s and not got:
        try:
            c.sock.send(b"a" * piece)
        except BlockingIOError:
            time.sleep(0.001)
        except (BrokenPipeError, ConnectionResetError):
            break
        try:
            got = c.sock.recv(65536)
        except BlockingIOError:
            pass
    c.sock.settimeout(5.0)
    if not got:
        got = c.read_all()
    waited_s = time.monotonic() - t0
    c.close()
    return got, waited_s


@pytest.mark.parametrize("piece", [1, 16 * 1024], ids=["byte-by-byte", "16k-writes"])
def test_endless_header_line_gets_431_at_the_limit(lb, origin, piece: int) -> None:
    """Before: the size was checked when a field ended, so this got a 408 after 10 s (or stalled
    the loop). Now the 431 comes while the attacker is still sending."""
    got, waited_s = flood_until_answered(lb.port, b"GET / HTTP/1.1\r\nHost: t\r\nX-Long: ", piece)
    assert got.startswith(b"HTTP/1.1 431 "), got[:80]
    assert waited_s < 5
    assert lb.bal.fold_counters()["error_431"] == 1
    assert origin.got == []
    # and the balancer still serves others
    assert Client(lb.port).get("/after").status == 200


# -- C9: an upstream head that never ends -----------------------------------------------------


def big_head(n_bytes: int) -> bytes:
    lines = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 90) for i in range(n_bytes // 100))
    return b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 2\r\n\r\nok"


@pytest.mark.parametrize(("size", "status"), [(40 * 1024, 200), (100 * 1024, 502), (50 * 1024 * 1024, 502)],
                         ids=["40k-ok", "100k-refused", "50m-refused"])
def test_response_head_is_bounded(size: int, status: int) -> None:
    head = big_head(size)

    def respond(req: OriginRequest) -> bytes:
        return head

    o = Origin(respond)
    b = InProcess(make_config([o.port], timeouts={"upstream_response": "30s"}))
    try:
        t0 = time.monotonic()
        r = Client(b.port, timeout_s=30).get("/")
        assert r.status == status
        assert time.monotonic() - t0 < 10
    finally:
        b.stop()
        o.close()


def test_response_head_bound_is_configurable() -> None:
    o = Origin(lambda req: big_head(20 * 1024))
    b = InProcess(make_config([o.port], limits={"max_response_header_bytes": "8k"}))
    try:
        assert Client(b.port).get("/").status == 502
    finally:
        b.stop()
        o.close()


# -- C10: a body that stalls -------------------------------------------------------------------


def test_stalled_response_body_is_cut_after_upstream_read() -> None:
    def stall(req: OriginRequest) -> bytes | None:
        if req.target == b"/stall":
            sock_send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            time.sleep(6)
            return None
        return ok_response(b"fine")

    holder: dict[str, socket.socket] = {}

    def sock_send(data: bytes) -> None:
        holder["conn"].sendall(data)

    class StallOrigin(Origin):
        def _handle(self, conn: socket.socket) -> None:
            holder["conn"] = conn
            super()._handle(conn)

    o = StallOrigin(stall)
    b = InProcess(make_config([o.port], timeouts={"upstream_read": "1s"}))
    try:
        c = Client(b.port, timeout_s=10)
        c.send(b"GET /stall HTTP/1.1\r\nHost: t\r\n\r\n")
        t0 = time.monotonic()
        out = c.read_all()
        waited = time.monotonic() - t0
        assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"partial")   # cut, not completed
        assert 0.9 < waited < 4.5
        assert b.bal.fold_counters()["upstream_read_timeout"] == 1
    finally:
        b.stop()
        o.close()


def test_slow_but_moving_body_is_not_cut() -> None:
    holder: dict[str, socket.socket] = {}

    def drip(req: OriginRequest) -> bytes | None:
        conn = holder["conn"]
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
        for ch in b"abcdef":
            time.sleep(0.5)
            conn.sendall(bytes([ch]))
        return b""

    class DripOrigin(Origin):
        def _handle(self, conn: socket.socket) -> None:
            holder["conn"] = conn
            super()._handle(conn)

    o = DripOrigin(drip)
    b = InProcess(make_config([o.port], timeouts={"upstream_read": "1s"}))
    try:
        r = Client(b.port, timeout_s=10).get("/")
        assert r.status == 200 and bytes(r.body) == b"abcdef" and r.complete
    finally:
        b.stop()
        o.close()


# -- D15: response hop-by-hop, statuses, codings, versions, request ids -------------------------


def test_fields_named_in_connection_and_proxy_authenticate_are_removed() -> None:
    o = Origin(lambda req: ok_response(b"ok", "Connection: X-Internal, keep-alive\r\nX-Internal: secret\r\n"
                                              "Proxy-Authenticate: Basic realm=x\r\nX-Public: 1\r\n"))
    b = InProcess(make_config([o.port]))
    try:
        r = Client(b.port).get("/")
        assert r.status == 200
        assert r.header("X-Internal") is None and r.header("Proxy-Authenticate") is None
        assert r.header("X-Public") == "1"
    finally:
        b.stop()
        o.close()


@pytest.mark.parametrize("status", [b"099", b"000", b"600", b"999"])
def test_status_outside_100_599_is_a_502_and_the_connection_is_retired(status: bytes) -> None:
    o = Origin(lambda req: b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 0\r\n\r\n"
               if req.target == b"/odd" else ok_response(b"fine"))
    b = InProcess(make_config([o.port]))
    try:
        c = Client(b.port)
        assert c.get("/odd").status == 502
        assert Client(b.port).get("/next").status == 200
        assert o.accepted == 2
    finally:
        b.stop()
        o.close()


def test_unrequested_101_is_a_502() -> None:
    o = Origin(lambda req: b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                           b"Upgrade: x\r\n\r\nraw")
    b = InProcess(make_config([o.port]))
    try:
        c = Client(b.port)
        assert c.get("/").status == 502
    finally:
        b.stop()
        o.close()


GZIP_CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                b"4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n")


def test_transfer_codings_before_chunked_reach_the_client() -> None:
    o = Origin(lambda req: GZIP_CHUNKED)
    b = InProcess(make_config([o.port]))
    try:
        c = Client(b.port)
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        out = b""
        while not out.endswith(b"0\r\n\r\n"):
            out += c.sock.recv(65536)
        assert b"\r\nTransfer-Encoding: gzip, chunked\r\n" in out
        assert out.endswith(b"\r\n\r\n4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n")
        # an HTTP/1.0 client cannot be sent a transfer coding: 502, not a mislabelled body
        c2 = Client(b.port)
        c2.send(b"GET / HTTP/1.0\r\n\r\n")
        assert c2.read_all().startswith(b"HTTP/1.1 502 ")
    finally:
        b.stop()
        o.close()


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9"])
def test_other_http_versions_get_505(lb, origin, version: bytes) -> None:
    c, out = raw(lb.port, b"GET / " + version + b"\r\nHost: t\r\n\r\n")
    c.close()
    assert out.startswith(b"HTTP/1.1 505 "), out[:60]
    assert origin.got == []


@pytest.mark.parametrize(("sent", "kept"), [
    (b"abc-123", True), (b"0af7651916cd43dd8448eb211c80319c", True),
    (b"a\tb", False), (b"\xff\xfe", False), (b"x" * 200, False), (b'a"b', False),
])
def test_client_request_id_is_kept_only_when_it_is_a_plain_token(lb, origin, sent: bytes, kept: bool) -> None:
    c = Client(lb.port)
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-Id: " + sent + b"\r\n\r\n")
    r = c.read_response()
    assert r.status == 200
    got = origin.got[0].header("x-request-id")
    assert got is not None
    assert (got.encode("latin-1") == sent) is kept


# -- D16: absolute form, on both builds (the second test pass runs the sources) ----------------


@pytest.mark.parametrize(("target", "path", "host"), [
    (b"http://b.example/s", b"/s", "b.example"),
    (b"http://b.example", b"/", "b.example"),
    (b"http://b.example:8080/s?q=1", b"/s?q=1", "b.example:8080"),
])
def test_absolute_form_is_forwarded_in_origin_form(lb, origin, target: bytes, path: bytes, host: str) -> None:
    c = Client(lb.port)
    c.send(b"GET " + target + b" HTTP/1.1\r\nHost: other.example\r\n\r\n")
    assert c.read_response().status == 200
    req = origin.got[0]
    assert req.target == path
    assert req.all("host") == [host]


# -- D17: trusted proxies --------------------------------------------------------------------


def test_trusted_proxy_scheme_and_client_address_are_used(origin, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    cfg = make_config([origin.port], headers={"trusted_proxies": ["127.0.0.1/32"]},
                      access_log={"enabled": True, "path": str(log)})
    cfg += (
        '[[ratelimit.rules]]\nname = "per-ip"\nrate = "1/m"\nburst = 0\nkey = "ip"\n')
    with InProcess(cfg) as b:
        c = Client(b.port)
        h = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7", "X-Forwarded-Proto": "https"}
        assert c.get("/a", h).status == 200
        assert origin.got[0].header("x-forwarded-proto") == "https"
        assert origin.got[0].header("x-forwarded-for") == "198.51.100.1, 203.0.113.7, 127.0.0.1"
        # the limit counts 203.0.113.7 (right-most untrusted), not the proxy's own address
        assert c.get("/b", h).status == 429
        assert c.get("/c", {"X-Forwarded-For": "203.0.113.8"}).status == 200
        b.run(b.bal.access_log.flush)
        clients = [json.loads(line)["client"] for line in log.read_text().splitlines()]
        assert clients == ["203.0.113.7", "203.0.113.7", "203.0.113.8"]


def test_untrusted_client_cannot_choose_its_address_for_limits(origin) -> None:
    cfg = make_config([origin.port]) + (
        '[[ratelimit.rules]]\nname = "per-ip"\nrate = "1/m"\nburst = 0\nkey = "ip"\n')
    with InProcess(cfg) as b:
        c = Client(b.port)
        assert c.get("/a", {"X-Forwarded-For": "203.0.113.1"}).status == 200
        assert c.get("/b", {"X-Forwarded-For": "203.0.113.2"}).status == 429
        assert origin.got[0].header("x-forwarded-proto") == "http"


# -- D13: secrets in a query are not logged ----------------------------------------------------

KEY = "tw_0123abcd_" + "S" * 32   # secret-scan: allow (a made-up key)


@pytest.mark.parametrize(("target", "logged"), [
    (b"/api?api_key=" + KEY.encode(), b"/api?api_key=***"),
    (b"/api?x=1&token=abc&y=2", b"/api?x=1&token=***&y=2"),
    (b"/api?password=hunter2", b"/api?password=***"),
    (b"/p/" + KEY.encode(), b"/p/tw_***"),
    (b"/plain?q=1", b"/plain?q=1"),
])
def test_redact_target(target: bytes, logged: bytes) -> None:
    assert redact_target(target) == logged


def test_query_key_never_reaches_the_access_log(origin, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    with InProcess(make_config([origin.port], access_log={"enabled": True, "path": str(log)})) as b:
        assert Client(b.port).get("/api?api_key=" + KEY).status == 200
        b.run(b.bal.access_log.flush)
        assert wait_until(lambda: log.stat().st_size > 0)
        text = log.read_text()
        assert KEY not in text and "S" * 32 not in text
        assert "api_key=***" in text


# -- what the fuzzers found (tests/fuzz) ----------------------------------------------------------


def test_http10_request_without_host_reaches_the_app_with_one_empty_host(lb, origin) -> None:
    c, out = raw(lb.port, b"GET /old HTTP/1.0\r\n\r\n")
    c.close()
    assert out.startswith(b"HTTP/1.1 200 ")
    assert origin.got[0].all("host") == [""]


def test_connection_cannot_take_host_away(lb, origin) -> None:
    c = Client(lb.port)
    assert c.get("/", {"Connection": "host, x-drop", "X-Drop": "1"}).status == 200
    assert origin.got[0].all("host") == ["test"]
    assert origin.got[0].header("x-drop") is None


def test_body_delimited_by_close_reaches_an_http11_client_whole() -> None:
    class CloseDelimited(Origin):
        def _handle(self, conn: socket.socket) -> None:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")

    o = CloseDelimited(lambda req: None)
    b = InProcess(make_config([o.port]))
    try:
        r = Client(b.port, timeout_s=5).get("/eof")
        assert r.complete and r.status == 200 and bytes(r.body) == b"until the end"
    finally:
        b.stop()
        o.close()


@pytest.mark.parametrize("request_bytes", [
    pytest.param(b"POST /ws HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", id="chunked-body"),
    pytest.param(b"POST /ws HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
                 b"Content-Length: 3\r\n\r\nabc", id="length-body"),
    pytest.param(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: \r\n\r\n",
                 id="empty-upgrade"),
])
def test_upgrades_two_parsers_could_read_differently_get_400(lb, origin, request_bytes: bytes) -> None:
    c, out = raw(lb.port, request_bytes)
    c.close()
    assert out.startswith(b"HTTP/1.1 400 "), out[:80]
    assert origin.got == []


def test_upgrade_fields_are_one_list(lb, origin) -> None:
    """llhttp upgrades on any Upgrade field; the forwarded request must say upgrade too (it was
    sent as a plain request with the last, empty value, and answered twice)."""
    c, out = raw(lb.port, b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
                          b"Upgrade:\r\n\r\n")
    c.close()
    assert out.count(b"HTTP/1.1 ") == 1 and out.startswith(b"HTTP/1.1 200 ")
    assert origin.got[0].upgrade and origin.got[0].header("upgrade") == "websocket"


def test_taxiways_own_answers_to_head_carry_no_body(origin) -> None:
    from tests.proxy_support import refused_port

    with InProcess(make_config([refused_port()], balancer={"retries": 0})) as b:
        c = Client(b.port)
        r = c.get("/", method="HEAD")            # the server is down: 502, kept connection
        assert r.status == 502 and int(r.header("Content-Length") or 0) > 0
        c.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
        second = c.read_response(head=True)       # starts right after the first head
        assert second.status == 502               # not the first one's body read as a status line
        c2, out = raw(b.port, b"HEAD / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        c2.close()
        assert out.startswith(b"HTTP/1.1 400 ") and out.endswith(b"\r\n\r\n")


def test_asterisk_form_only_for_options(lb, origin) -> None:
    c, out = raw(lb.port, b"GET * HTTP/1.1\r\nHost: t\r\n\r\n")
    c.close()
    assert out.startswith(b"HTTP/1.1 400 ")
    c = Client(lb.port)
    c.send(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n")
    assert c.read_response().status == 200
    assert [r.target for r in origin.got] == [b"*"]


def test_backslash_in_the_query_is_the_apps_data(lb, origin) -> None:
    assert Client(lb.port).get("/ok?path=a\\b").status == 200
    assert origin.got[0].target == b"/ok?path=a\\b"


# -- what the review found --------------------------------------------------------------------


def test_endless_trailer_field_gets_431(lb, origin) -> None:
    """The trailer section (and long chunk lines) are bounded like a head: before, a trailer
    field that never ended grew by concatenation and stalled the event loop."""
    got, waited_s = flood_until_answered(
        lb.port, b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\nX-T: ",
        16 * 1024)
    assert got.startswith(b"HTTP/1.1 431 "), got[:80]
    assert waited_s < 5


def test_endless_response_trailer_is_cut() -> None:
    class Trailing(Origin):
        def _handle(self, conn: socket.socket) -> None:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: ")
            try:
                for _ in range(400):
                    conn.sendall(b"a" * 65536)
            except OSError:
                pass

    o = Trailing(lambda req: None)
    b = InProcess(make_config([o.port]))
    try:
        c = Client(b.port, timeout_s=10)
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        t0 = time.monotonic()
        c.read_all()                              # cut: the response had started
        assert time.monotonic() - t0 < 5
        assert b.bal.fold_counters()["upstream_aborted"] == 1
    finally:
        b.stop()
        o.close()


def test_pipelined_burst_split_mid_head_is_answered_whole(lb, origin) -> None:
    """Before: a read that began inside one head and ended inside a later one counted whole for
    the later head, so a long pipelined burst got a false 431."""
    reqs = b"".join(b"GET /p%03d HTTP/1.1\r\nHost: t\r\nX-Pad: %s\r\n\r\n" % (i, b"x" * 150)
                    for i in range(200))
    c = Client(lb.port, timeout_s=20)
    cut = [0, 37, 40_000, 40_019, len(reqs)]   # reads ending mid-head
    for a, z in itertools.pairwise(cut):
        c.send(reqs[a:z])
        time.sleep(0.05)
    answers = [c.read_response() for _ in range(200)]
    assert [bytes(r.body) for r in answers] == [b"/p%03d" % i for i in range(200)]


def test_upgrade_answered_at_once_gets_one_answer() -> None:
    """An Upgrade request answered in the read that parsed it (no server: 503; a redirect or an
    edge refusal alike) gets that answer only: no 400 after it."""
    with InProcess(make_config([])) as b:
        c, out = raw(b.port, b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\n"
                             b"Upgrade: websocket\r\n\r\n")
        c.close()
        assert out.count(b"HTTP/1.1 ") == 1 and out.startswith(b"HTTP/1.1 503 "), out
        assert b.bal.fold_counters()["error_400"] == 0


def test_proxy_connection_is_read_as_llhttp_reads_it(lb, origin) -> None:
    c, out = raw(lb.port, b"GET /a HTTP/1.1\r\nHost: t\r\nProxy-Connection: close\r\n\r\n")
    c.close()
    assert out.count(b"HTTP/1.1 ") == 1 and b"\r\nConnection: close\r\n" in out
    c, out = raw(lb.port, b"GET /ws HTTP/1.1\r\nHost: t\r\nProxy-Connection: upgrade\r\n"
                          b"Upgrade: websocket\r\n\r\n")
    c.close()
    assert out.count(b"HTTP/1.1 ") == 1, out
    assert origin.got[-1].upgrade


def test_upstream_reset_mid_close_delimited_body_is_a_cut() -> None:
    class Resets(Origin):
        def _handle(self, conn: socket.socket) -> None:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial-bo")
            time.sleep(0.2)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()                           # RST, not FIN

    o = Resets(lambda req: None)
    b = InProcess(make_config([o.port]))
    try:
        r = Client(b.port).get("/")
        assert r.status == 200 and not r.complete   # the client sees the cut, not a whole body
    finally:
        b.stop()
        o.close()


@pytest.mark.parametrize("prefix", [b"\r\n", b"\r\n\r\n"])
def test_crlf_before_a_response_head(prefix: bytes) -> None:
    o = Origin(lambda req: prefix + ok_response(b"hi", "Set-Cookie: a=b\r\n"))
    b = InProcess(make_config([o.port]))
    try:
        c = Client(b.port)
        for _ in range(2):
            r = c.get("/")
            assert r.status == 200 and bytes(r.body) == b"hi" and r.header("Set-Cookie") == "a=b"
            assert all(not n.startswith(b"HTTP/") for n, _ in r.headers)
    finally:
        b.stop()
        o.close()


def test_absolute_form_with_an_ipv6_literal(lb, origin) -> None:
    c = Client(lb.port)
    c.send(b"GET http://[::1]:8080/x HTTP/1.1\r\nHost: other\r\n\r\n")
    assert c.read_response().status == 200
    assert origin.got[0].all("host") == ["[::1]:8080"]


def test_renamed_request_id_cannot_ride_in_a_trailer(origin) -> None:
    with InProcess(make_config([origin.port], headers={"request_id": "X-Correlation-Id"})) as b:
        c = Client(b.port)
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"1\r\na\r\n0\r\nX-Correlation-Id: forged\r\nX-Ok: 1\r\n\r\n")
        assert c.read_response().status == 200
        assert {n.lower() for n, _ in origin.got[0].trailers} == {b"x-ok"}
