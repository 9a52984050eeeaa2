"""The upstream wait queue's decisions, table by table, in virtual time (no sockets, no clock,
no sleep): who gets a freed slot, who keeps waiting (for a slot, or for a server that is starting
or down for now), who is refused, and when a wait is over.

Each table drives the pure `WaitQueue` with the real `Router` over two servers capped at one
request each, and plays the driver's part itself: a server a waiter is sent to takes one more
request in flight, as `Exchange.use_server` would."""

from __future__ import annotations

import random

import pytest

from taxiway.balancing.model import Pool, Server
from taxiway.config import parse_config
from taxiway.proxy.forward import Router
from taxiway.proxy.http1 import RequestHead
from taxiway.proxy.waitqueue import WaitQueue


class Req:
    """A waiting request as the queue sees it."""

    def __init__(self, name: str, tried: tuple[Server, ...] = ()) -> None:
        self.name = name
        self.head = RequestHead("GET", b"/", [(b"Host", b"t")], "192.0.2.1", "http", "1.1")
        self.tried = tried
        self.left = False

    def gone(self) -> bool:
        return self.left


def play(steps: list[tuple]) -> None:
    cfg = parse_config({"balancer": {"strategy": "round-robin"},
                        "limits": {"upstream_max_connections": 1}})
    pool = Pool()
    servers = {n: Server(n, "127.0.0.1", port, static=True) for n, port in (("b1", 9001), ("b2", 9002))}
    for s in servers.values():
        pool.add(s, now=0.0)
        s.inflight = 1   # both full: every request so far waits
    router = Router(cfg, pool, random.Random(1))
    q: WaitQueue[Req] = WaitQueue()
    reqs: dict[str, Req] = {}
    for step in steps:
        op, *args = step
        if op == "push":   # ("push", name, deadline, size, accepted[, tried servers])
            name, deadline, size, accepted, *tried = args
            r = reqs[name] = Req(name, tuple(servers[t] for t in (tried[0] if tried else ())))
            assert q.push(r, deadline, size) is accepted, step
        elif op == "free":   # a request on that server finished
            servers[args[0]].inflight -= 1
        elif op == "leave":  # the client went away while waiting
            reqs[args[0]].left = True
        elif op == "drain":  # ("drain", now, [(name, server or None), ...])
            now, expected = args
            got = []
            for w, server, _ in q.drain(router, now):
                got.append((w.name, server.name if server is not None else None))
                if server is not None:
                    server.inflight += 1
            assert got == expected, step
        elif op == "expire":  # ("expire", now, [names answered 503])
            now, expected = args
            assert [w.name for w in q.expired(now)] == expected, step
        elif op == "state":   # ("state", server, starting | up | down | draining | removed)
            name, state = args
            srv = servers[name]
            srv.inflight = 0
            if state == "draining":
                pool.drain(name)
            elif state == "removed":
                pool.remove(name)
            else:
                srv.ready, srv.healthy = state != "starting", state != "down"
                router.invalidate()
        elif op == "waiting":
            assert [w.name for _, w in q.entries if not w.gone()] == args[0], step
            assert q.live() == len(args[0])
        else:
            raise AssertionError(op)


TABLES = {
    "first-in-first-out": [
        ("push", "a", 10.0, 8, True), ("push", "b", 10.0, 8, True), ("push", "c", 10.0, 8, True),
        ("drain", 1.0, []),                       # no slot: everyone keeps their place
        ("free", "b1"), ("drain", 1.0, [("a", "b1")]),
        ("free", "b1"), ("free", "b2"), ("drain", 2.0, [("b", "b2"), ("c", "b1")]),   # (round robin)
        ("waiting", []),
    ],
    "a-slot-goes-to-the-oldest-and-no-further": [
        ("push", "a", 10.0, 8, True), ("push", "b", 10.0, 8, True),
        ("free", "b2"), ("drain", 1.0, [("a", "b2")]), ("waiting", ["b"]),
    ],
    "bounded-in-length": [
        ("push", "a", 10.0, 2, True), ("push", "b", 10.0, 2, True), ("push", "c", 10.0, 2, False),
        ("waiting", ["a", "b"]),
    ],
    "off-when-size-is-zero": [
        ("push", "a", 10.0, 0, False), ("waiting", []),
    ],
    "a-client-that-left-frees-its-place": [
        ("push", "a", 10.0, 2, True), ("push", "b", 10.0, 2, True), ("leave", "a"),
        ("push", "c", 10.0, 2, True), ("waiting", ["b", "c"]),
        ("free", "b1"), ("drain", 1.0, [("b", "b1")]),
    ],
    "bounded-in-time": [
        ("push", "a", 1.0, 8, True), ("push", "b", 2.0, 8, True), ("push", "c", 3.0, 8, True),
        ("expire", 0.9, []), ("expire", 1.5, ["a"]), ("expire", 2.0, ["b"]), ("waiting", ["c"]),
    ],
    "a-client-that-left-is-not-answered-when-its-wait-ends": [
        ("push", "a", 1.0, 8, True), ("push", "b", 1.0, 8, True), ("leave", "a"),
        ("expire", 1.0, ["b"]), ("waiting", []),
    ],
    "a-retry-waits-for-a-server-it-has-not-tried-without-holding-up-the-line": [
        # `r` failed on b1; b1 frees up, b2 stays full: `n` behind it gets b1, `r` keeps its place.
        ("push", "r", 10.0, 8, True, ("b1",)), ("push", "n", 10.0, 8, True),
        ("free", "b1"), ("drain", 1.0, [("n", "b1")]), ("waiting", ["r"]),
        ("free", "b2"), ("drain", 1.5, [("r", "b2")]),
    ],
    "a-retry-with-every-server-tried-is-answered-at-once": [
        ("push", "r", 10.0, 8, True, ("b1", "b2")), ("drain", 1.0, [("r", None)]), ("waiting", []),
    ],
}


# Capacity that is coming: a request that finds no server in rotation waits for one that is
# starting or down for now (Knative's activator), and only one that nothing can serve is refused.
TABLES.update({
    "a-request-waits-for-a-server-that-is-starting": [
        ("state", "b1", "starting"), ("state", "b2", "draining"),
        ("push", "a", 10.0, 8, True), ("push", "b", 10.0, 8, True),
        ("drain", 1.0, []), ("waiting", ["a", "b"]),
        ("state", "b1", "up"), ("drain", 2.0, [("a", "b1")]),   # (b1 takes one: capped at one)
        ("free", "b1"), ("drain", 2.1, [("b", "b1")]),
    ],
    "servers-that-are-down-may-recover": [
        ("state", "b1", "down"), ("state", "b2", "down"),
        ("push", "a", 10.0, 8, True), ("drain", 1.0, []),
        ("state", "b2", "up"), ("drain", 2.0, [("a", "b2")]),
    ],
    "nothing-coming-is-answered-at-once": [
        ("state", "b1", "draining"), ("state", "b2", "removed"),
        ("push", "a", 10.0, 8, True), ("drain", 1.0, [("a", None)]), ("waiting", []),
    ],
    "the-server-it-waited-for-went-away": [
        ("state", "b1", "starting"), ("state", "b2", "removed"),
        ("push", "a", 10.0, 8, True), ("drain", 1.0, []),
        ("state", "b1", "removed"), ("drain", 2.0, [("a", None)]),
    ],
    "a-wait-for-capacity-is-bounded-in-time-too": [
        ("state", "b1", "starting"), ("state", "b2", "starting"),
        ("push", "a", 1.0, 8, True), ("drain", 0.5, []), ("expire", 1.0, ["a"]), ("waiting", []),
    ],
    "a-retry-waits-for-a-starting-server-it-has-not-tried": [
        ("state", "b1", "up"), ("state", "b2", "starting"),
        ("push", "r", 10.0, 8, True, ("b1",)), ("drain", 1.0, []), ("waiting", ["r"]),
        ("state", "b2", "up"), ("drain", 2.0, [("r", "b2")]),
    ],
    "a-retry-whose-other-servers-are-leaving-is-answered-at-once": [
        ("state", "b1", "up"), ("state", "b2", "draining"),
        ("push", "r", 10.0, 8, True, ("b1",)), ("drain", 1.0, [("r", None)]),
    ],
})


@pytest.mark.parametrize("steps", TABLES.values(), ids=TABLES.keys())
def test_wait_queue(steps: list[tuple]) -> None:
    play(steps)
