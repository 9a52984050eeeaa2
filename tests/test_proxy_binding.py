"""A response always belongs to its request (issue 11, A): bytes after an Upgrade request wait for
the 101, an upstream connection returns to the pool only at a provable message boundary, and a
harness drives many concurrent clients through every abnormal path asserting that each client
only ever receives answers to its own requests."""

from __future__ import annotations

import random
import socket
import threading
import time

import pytest

from tests.proxy_support import Client, InProcess, Origin, OriginRequest, make_config, ok_response

SMUGGLED = (b"GET /smuggled HTTP/1.1\r\nHost: internal.example\r\nX-Forwarded-For: 10.9.9.9\r\n"
            b"Content-Length: 0\r\n\r\n")


def echo_path(req: OriginRequest) -> bytes:
    if req.upgrade or req.target.startswith(b"/ws"):
        return b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\n\r\nno ws\r\n"
    return ok_response(req.target)


def test_bytes_after_a_refused_upgrade_never_reach_the_app_or_another_client() -> None:
    o = Origin(echo_path)
    b = InProcess(make_config([o.port]))
    try:
        for _ in range(5):
            c = Client(b.port)
            c.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                   b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                   + SMUGGLED)
            r = c.read_response()
            assert r.status == 403
            assert c.is_closed()          # a refused upgrade is the connection's last answer
            c.close()
            victim = Client(b.port).get("/victim")
            assert victim.status == 200 and bytes(victim.body) == b"/victim"
        assert b"/smuggled" not in o.paths()
    finally:
        b.stop()
        o.close()


def test_upgrade_fed_byte_by_byte_with_a_request_behind_it() -> None:
    o = Origin(echo_path)
    b = InProcess(make_config([o.port]))
    try:
        c = Client(b.port)
        for ch in b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n":
            c.send(bytes([ch]))
        c.send(SMUGGLED)   # at once: the refusal closes the connection, a later byte would be reset
        assert c.read_response().status == 403
        assert c.is_closed()
        assert o.paths() == [b"/ws"]
    finally:
        b.stop()
        o.close()


def test_accepted_upgrade_gets_the_held_bytes_first() -> None:
    """With a 101, the bytes that followed the request are the new protocol's: in order, once."""
    got = bytearray()

    class Tunnel(Origin):
        def _handle(self, conn: socket.socket) -> None:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            _head, _, rest = data.partition(b"\r\n\r\n")
            got.extend(rest)
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n")
            conn.settimeout(5)
            while len(got) < 6:
                d = conn.recv(65536)
                if not d:
                    return
                got.extend(d)
            conn.sendall(b"echo:" + bytes(got))

    o = Tunnel(lambda req: None)
    b = InProcess(make_config([o.port]))
    try:
        c = Client(b.port)
        c.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\nabc")
        time.sleep(0.3)
        c.send(b"def")
        out = b""
        while b"echo:" not in out or not out.endswith(b"abcdef"):
            d = c.sock.recv(65536)
            assert d, out
            out += d
        assert out.startswith(b"HTTP/1.1 101 ")
        assert bytes(got) == b"abcdef"
    finally:
        b.stop()
        o.close()


OVERRUNS = [
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 302 Found\r\n"
                 b"Location: http://evil.example/\r\nContent-Length: 0\r\n\r\n", id="forged-response"),
    pytest.param("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\u00e9\u00e9".encode(),
                 id="length-in-characters"),
    pytest.param(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 500 X\r\nContent-Length: 0\r\n\r\n",
                 id="204-with-body"),
    pytest.param(b"HTTP/1.1 304 Not Modified\r\n\r\nraw bytes 12", id="304-with-body"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\r\nGARBAGE", id="garbage-after"),
]


@pytest.mark.parametrize("answer", OVERRUNS)
def test_bytes_past_the_end_of_a_response_retire_the_connection(answer: bytes) -> None:
    def respond(req: OriginRequest) -> bytes:
        return answer if req.target == b"/bad" else ok_response(req.target)

    o = Origin(respond)
    b = InProcess(make_config([o.port]))
    try:
        first = Client(b.port).get("/bad")
        assert first.status in (200, 204, 304)
        for _ in range(3):
            victim = Client(b.port).get("/victim")
            assert victim.status == 200 and bytes(victim.body) == b"/victim", victim
        assert o.accepted == 2            # the poisoned connection was not reused
    finally:
        b.stop()
        o.close()


def test_crlf_after_a_response_keeps_the_connection() -> None:
    """llhttp skips CRLFs between messages: they leave nothing unread, so reuse is safe."""
    o = Origin(lambda req: ok_response(b"ok") + b"\r\n")
    b = InProcess(make_config([o.port]))
    try:
        c = Client(b.port)
        assert [c.get("/").status for _ in range(3)] == [200, 200, 200]
        assert o.accepted == 1
    finally:
        b.stop()
        o.close()


# --------------------------------------------------------------------------------------------
# The response-binding harness


class Scripted(Origin):
    """Answers by the mode in the path (`/<mode>/<id>`), echoing the id in `X-Echo-Id` and in the
    body. Modes are the abnormal paths a proxy must survive without mixing up answers."""

    def __init__(self) -> None:
        self.first_seen: set[bytes] = set()
        self.lock = threading.Lock()
        super().__init__(self.answer)

    def _handle(self, conn: socket.socket) -> None:
        self.conn_local.conn = conn
        super()._handle(conn)

    conn_local = threading.local()

    def answer(self, req: OriginRequest) -> bytes | None:
        parts = req.target.split(b"/")
        mode, rid = (parts[1], parts[2]) if len(parts) >= 3 else (b"ok", b"")
        ok = b"HTTP/1.1 200 OK\r\nX-Echo-Id: %s\r\nContent-Length: %d\r\n\r\n%s" % (rid, len(rid), rid)
        if req.upgrade:
            return b"HTTP/1.1 403 Forbidden\r\nX-Echo-Id: %s\r\nContent-Length: %d\r\n\r\n%s" % (
                rid, len(rid), rid)
        if mode == b"ok":
            return ok
        if mode == b"head":
            return b"HTTP/1.1 200 OK\r\nX-Echo-Id: %s\r\nContent-Length: %d\r\n\r\n" % (rid, len(rid))
        if mode == b"overrun":
            return ok + b"HTTP/1.1 200 OK\r\nX-Echo-Id: forged\r\nContent-Length: 6\r\n\r\nforged"
        if mode == b"nobody":
            return (b"HTTP/1.1 204 No Content\r\nX-Echo-Id: %s\r\n\r\n"
                    b"HTTP/1.1 200 OK\r\nX-Echo-Id: forged\r\nContent-Length: 0\r\n\r\n") % rid
        if mode == b"early":
            # answers before reading the body, then closes (the body stays unread)
            return None if not rid else self._send_and_close(
                b"HTTP/1.1 413 Too Large\r\nX-Echo-Id: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (rid, len(rid), rid))
        if mode == b"abort":
            self.conn_local.conn.sendall(
                b"HTTP/1.1 200 OK\r\nX-Echo-Id: %s\r\nContent-Length: 100\r\n\r\npart" % rid)
            return None
        if mode == b"reset":
            return None                      # closes before any answer (a retry may follow)
        if mode == b"info":
            return b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + ok
        if mode == b"chunked":
            return (b"HTTP/1.1 200 OK\r\nX-Echo-Id: %s\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"%x\r\n%s\r\n0\r\n\r\n") % (rid, len(rid), rid)
        if mode == b"slow":
            time.sleep(1.5)                  # past timeouts.upstream_response: 504
            return ok
        return ok

    def _send_and_close(self, data: bytes) -> None:
        self.conn_local.conn.sendall(data)
        return None


MODES = ["ok", "ok", "ok", "head", "overrun", "nobody", "early", "abort", "reset", "info", "chunked", "slow",
         "upgrade", "pipeline"]


def _client_run(port: int, who: int, rounds: int, seed: int, problems: list[str],
                counts: dict[str, int]) -> None:
    """One client: `rounds` requests in random modes on a kept connection (a new one after a
    cut); every answer that carries an id must carry this request's."""
    rng = random.Random(seed)
    c: Client | None = None
    for i in range(rounds):
        mode = rng.choice(MODES)
        rid = f"c{who}r{i}"
        if c is None:
            c = Client(port, timeout_s=10)
        try:
            if mode == "pipeline":
                ids = [rid + "a", rid + "b"]
                c.send(b"".join(b"GET /ok/%s HTTP/1.1\r\nHost: t\r\n\r\n" % x.encode() for x in ids))
                answers = [c.read_response(), c.read_response()]
            elif mode == "head":
                ids = [rid]
                c.send(b"HEAD /head/%s HTTP/1.1\r\nHost: t\r\n\r\n" % rid.encode())
                answers = [c.read_response(head=True)]
            elif mode == "upgrade":
                ids = [rid]
                c.send(b"GET /ws/%s HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
                       b"GET /ok/stolen HTTP/1.1\r\nHost: t\r\n\r\n" % rid.encode())
                answers = [c.read_response()]
            elif mode == "early":
                ids = [rid]
                c.send(b"POST /early/%s HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello" % rid.encode())
                answers = [c.read_response()]
            else:
                ids = [rid]
                c.send(b"GET /%s/%s HTTP/1.1\r\nHost: t\r\n\r\n" % (mode.encode(), rid.encode()))
                answers = [c.read_response()]
        except OSError:
            c.close()
            c = None
            continue
        for want, r in zip(ids, answers, strict=True):
            counts[mode] = counts.get(mode, 0) + 1
            got = r.header("X-Echo-Id")
            if r.status == 0:
                continue                     # the connection was cut (abort, reset): no answer
            if got is None:
                if r.status < 500 and r.status not in (400, 408):
                    problems.append(f"{mode} {want}: status {r.status} without an id")
                continue
            # a cut answer (abort) is incomplete: its id must still be ours, its body a prefix
            body_ok = bytes(r.body) in (want.encode(), b"") or (not r.complete and b"forged" not in r.body)
            if got != want or not body_ok:
                problems.append(f"{mode} {want}: got id {got!r} body {bytes(r.body[:40])!r}")
        cut = any(r.status == 0 or r.header("Connection") == "close" for r in answers)
        if cut or mode in ("upgrade", "early", "abort", "reset"):
            c.close()
            c = None
    if c is not None:
        c.close()


@pytest.mark.slow
def test_every_client_only_ever_receives_its_own_answers() -> None:
    a, b2 = Scripted(), Scripted()
    lb = InProcess(make_config([a.port, b2.port], timeouts={"upstream_response": "1s"},
                               balancer={"retries": 1}))
    problems: list[str] = []
    counts: dict[str, int] = {}
    try:
        threads = [threading.Thread(target=_client_run, args=(lb.port, w, 60, 1000 + w, problems, counts))
                   for w in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not any(t.is_alive() for t in threads)
        assert problems == [], problems[:10]
        assert b"/ok/stolen" not in a.paths() + b2.paths()
        assert all(counts.get(m, 0) > 0 for m in MODES), counts
        # still healthy afterwards
        assert Client(lb.port).get("/ok/final").header("X-Echo-Id") == "final"
    finally:
        lb.stop()
        a.close()
        b2.close()
