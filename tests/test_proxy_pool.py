"""Pool management through the Balancer interface (autoscaler, reload) and request routing keys."""

from __future__ import annotations

import threading

from taxiway.balancing.model import Server
from tests.proxy_support import InProcess, http_get, make_config, wait_until


def test_drain_lets_in_flight_finish_and_remove_closes_idle_connections(procs):
    b1, b2 = procs.backend("b1"), procs.backend("b2")
    with InProcess(make_config([b1], balancer={"strategy": "round-robin"})) as lb:
        s1 = lb.bal.pool.servers[0]
        s2 = Server(name="b2", host="127.0.0.1", port=b2, static=False, ready=False)
        lb.run(lambda: lb.bal.add_server(s2))
        assert {http_get(lb.port, "/").header("X-Backend") for _ in range(4)} == {"b1"}  # not ready
        lb.run(lambda: lb.bal.pool.mark_ready("b2", 0.0))
        assert wait_until(lambda: http_get(lb.port, "/").header("X-Backend") == "b2")
        result: list[str | None] = []
        t = threading.Thread(target=lambda: result.append(
            http_get(lb.port, "/delay/800").header("X-Backend")))
        t.start()
        assert wait_until(lambda: s1.inflight + s2.inflight == 1, 5)
        busy = s1 if s1.inflight else s2
        busy_backend, other = ("b1", "b2") if busy is s1 else ("b2", "b1")
        lb.run(lambda: lb.bal.drain_server(busy.name))
        t.join(10)
        assert result == [busy_backend]      # the in-flight request finished on the drained server
        assert {http_get(lb.port, "/").header("X-Backend") for _ in range(4)} == {other}
        lb.run(lambda: lb.bal.remove_server(busy.name))
        assert busy.name not in lb.bal.pool
        assert busy not in lb.bal.upstreams
        assert any(e["kind"] == "removed" and e["server"] == busy.name for e in lb.bal.events)


def test_cookie_affinity_sticks_and_rewrites(procs, monkeypatch):
    b1, b2 = procs.backend("b1"), procs.backend("b2")
    monkeypatch.setenv("AFF_SECRET", "0123456789abcdef0123456789abcdef")
    with InProcess(make_config([b1, b2], balancer={"strategy": "round-robin"},
                               affinity={"mode": "cookie", "secret": "${AFF_SECRET}"})) as lb:
        r = http_get(lb.port, "/")
        cookie = r.header("Set-Cookie")
        assert cookie and cookie.startswith("taxiway_srv=") and "HttpOnly" in cookie
        value = cookie.split(";")[0]
        first = r.header("X-Backend")
        for _ in range(6):
            r = http_get(lb.port, "/", {"Cookie": f"a=1; {value}"})
            assert r.header("X-Backend") == first
            assert r.header("Set-Cookie") is None
        r = http_get(lb.port, "/", {"Cookie": "taxiway_srv=forged.value"})
        assert r.header("Set-Cookie")        # a forged cookie is ignored and replaced
        # /status counts sticky clients per server: 2 cookies handed out so far, then 4 more
        # new clients (round robin: 2 each); a returning client adds nothing.
        for _ in range(4):
            http_get(lb.port, "/")
        http_get(lb.port, "/", {"Cookie": value})
        counts = {s.name: s.sticky_clients for s in lb.bal.pool}
        assert sum(counts.values()) == 6 and all(c >= 2 for c in counts.values()), counts


def test_consistent_hash_on_a_header(procs):
    b1, b2, b3 = procs.backend("b1"), procs.backend("b2"), procs.backend("b3")
    with InProcess(make_config([b1, b2, b3], balancer={"strategy": "consistent-hash",
                                                       "hash_key": "header:X-User"})) as lb:
        for user in ("alice", "bob", "carol", "dave"):
            seen = {http_get(lb.port, "/", {"X-User": user}).header("X-Backend") for _ in range(5)}
            assert len(seen) == 1, (user, seen)


def test_active_health_checks_take_a_failing_server_out(procs):
    b1 = procs.backend("b1")
    b2 = procs.backend("b2", None, "--fail-healthz")
    with InProcess(make_config([b1, b2], balancer={"strategy": "round-robin"},
                               health={"enabled": True, "interval": "200ms", "fall": 1, "rise": 1})) as lb:
        bad = next(s for s in lb.bal.pool.servers if s.port == b2)
        assert wait_until(lambda: not bad.healthy, 10)
        assert {http_get(lb.port, "/").header("X-Backend") for _ in range(6)} == {"b1"}


def test_async_guard_answers_in_order_on_a_keep_alive_connection(procs):
    """A guard that must await (the Redis store) delays only its own request, and answers in order."""
    import asyncio

    from taxiway.security.rejection import Rejection

    class SlowGuard:
        def check(self, head):
            if head.path.startswith("/deny"):
                return Rejection(403, [(b"X-Why", b"denied")], b"no\n")
            if head.path.startswith("/slow"):
                async def later() -> None:
                    await asyncio.sleep(0.3)
                    return None
                return later()
            return None

    b1 = procs.backend("b1")
    with InProcess(make_config([b1])) as lb:
        lb.run(lambda: lb.bal.guards.append(SlowGuard()))
        from tests.proxy_support import Client

        c = Client(lb.port)
        c.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /deny HTTP/1.1\r\nHost: t\r\n\r\n"
               b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        r1, r2, r3 = c.read_response(), c.read_response(), c.read_response()
        assert (r1.status, r2.status, r3.status) == (200, 403, 200)
        assert r2.header("X-Why") == "denied" and r2.body == b"no\n"
        assert lb.bal.counters["rejected_403"] == 1


def test_redis_rate_limit_through_the_proxy(procs, redis_server):
    # redis_server (tests/services.py): the running Redis, or a private one, with a unique prefix
    b1 = procs.backend("b1")
    text = make_config([b1]) + (
        f'[ratelimit]\nstore = "redis"\nredis_url = "{redis_server.url}"\n'
        f'key_prefix = "{redis_server.prefix}"\n'
        '[[ratelimit.rules]]\nname = "api"\nrate = "1/m"\npath_prefix = "/api"\n')
    with InProcess(text) as lb:
        from tests.proxy_support import Client

        c = Client(lb.port)
        statuses = [c.get("/api/x").status for _ in range(3)]
        assert statuses[0] == 200 and statuses[-1] == 429
        assert c.get("/free").status == 200


def test_a_connect_cut_short_by_the_server_leaving_still_answers_its_request():
    """A request whose new upstream connection is under way when its server leaves the pool
    (removed after a crash: the pool closes) hears of it as a refused connect, once, and so is
    retried elsewhere; before, the cancelled connect left it waiting until the client gave up."""
    import asyncio
    import socket

    from taxiway.proxy.upstream import UpstreamPool

    class Owner:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def on_connected(self, conn) -> None:
            self.calls.append("connected")
            conn.close()

        def on_connect_failed(self, timed_out: bool) -> None:
            self.calls.append(f"failed timed_out={timed_out}")

        def on_internal_error(self) -> None:
            self.calls.append("internal")

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        server = Server(name="b1", host="127.0.0.1", port=listener.getsockname()[1])

        async def scenario() -> tuple[list[str], list[str]]:
            pool = UpstreamPool(server, asyncio.get_running_loop(), 4, 5.0)
            cut, done = Owner(), Owner()
            pool.connect(done)
            await asyncio.sleep(0.2)      # this one connects
            pool.connect(cut)
            pool.close()                  # ... this one is under way when the server leaves
            await asyncio.sleep(0.2)
            return cut.calls, done.calls

        cut_calls, done_calls = asyncio.run(scenario())
    assert cut_calls == ["failed timed_out=False"]
    assert done_calls == ["connected"]
