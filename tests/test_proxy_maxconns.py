"""limits.upstream_max_connections: a full server takes no new request (nginx's max_conns), and
when every server is full requests wait in a bounded FIFO queue (HAProxy's maxconn + queue)."""

from __future__ import annotations

import socket
import threading
import time

from .conftest import Processes
from .proxy_support import InProcess, RawServer, http_get, make_config, read_request_head, refused_port


def _concurrently(port: int, paths: list[str], stagger_s: float = 0.0,
                  timings: list[float] | None = None) -> list[tuple[int, str | None]]:
    out: list[tuple[int, str | None]] = [(0, None)] * len(paths)
    took = [0.0] * len(paths)

    def one(i: int, path: str) -> None:
        t0 = time.monotonic()
        r = http_get(port, path)
        took[i] = time.monotonic() - t0
        out[i] = (r.status, r.header("X-Backend") or r.header("Retry-After"))

    threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(paths)]
    for t in threads:
        t.start()
        time.sleep(stagger_s)
    for t in threads:
        t.join(30)
    if timings is not None:
        timings[:] = took
    return out


def test_a_full_server_is_skipped_and_503_when_all_are_full(procs: Processes) -> None:
    b1, b2 = procs.backend("b1"), procs.backend("b2")
    with InProcess(make_config([b1, b2], balancer={"strategy": "round-robin"},
                               limits={"upstream_max_connections": 1, "upstream_queue": 0})) as lb:
        # Two slow requests fill both servers (one each, whatever round robin would say) ...
        results = _concurrently(lb.port, ["/delay/1500"] * 3)
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 503]
        # ... so of three at once, two are served by different servers and one is refused.
        assert len(ok) == 2 and len(refused) == 1, results
        assert {b for _, b in ok} == {"b1", "b2"}
        assert lb.bal.counters["error_503"] == 1
        # Once they finish, both servers take requests again.
        assert http_get(lb.port, "/").status == 200


def test_no_cap_by_default(procs: Processes) -> None:
    b1 = procs.backend("b1")
    with InProcess(make_config([b1])) as lb:
        results = _concurrently(lb.port, ["/delay/500"] * 5)
        assert [s for s, _ in results] == [200] * 5


def test_requests_wait_for_a_slot_instead_of_503(procs: Processes) -> None:
    b1, b2 = procs.backend("b1"), procs.backend("b2")
    with InProcess(make_config([b1, b2], limits={"upstream_max_connections": 1})) as lb:
        seen: list[int] = []
        watcher = threading.Thread(target=lambda: [
            (seen.append(lb.run(lb.bal.waiting.live)), time.sleep(0.1)) for _ in range(8)])
        watcher.start()
        took: list[float] = []
        # Four slow requests, two servers with one slot each: two are served at once, two wait.
        results = _concurrently(lb.port, ["/delay/800"] * 4, stagger_s=0.05, timings=took)
        watcher.join()
        assert [s for s, _ in results] == [200] * 4, results
        assert lb.bal.counters["queued"] == 2 and lb.bal.counters["error_503"] == 0
        assert max(seen) == 2   # /status "waiting" shows them while they wait
        # The last ones waited for a whole earlier request (0.8 s, minus the <= 0.15 s they were
        # sent after it, and timer jitter on a busy machine) before their own 0.8 s.
        assert sorted(took)[-1] >= 1.3
        assert lb.run(lambda: len(lb.bal.waiting.entries)) == 0


def test_a_request_waits_at_most_the_queue_timeout(procs: Processes) -> None:
    b1 = procs.backend("b1")
    with InProcess(make_config([b1], limits={"upstream_max_connections": 1},
                               timeouts={"queue": "300ms"})) as lb:
        took: list[float] = []
        results = _concurrently(lb.port, ["/delay/2000", "/"], stagger_s=0.1, timings=took)
        assert results[0] == (200, "b1")
        status, retry_after = results[1]
        assert status == 503 and retry_after is not None   # with Retry-After, like "all servers down"
        assert 0.25 <= took[1] < 1.5   # answered after the queue timeout, not after the slow request
        assert lb.bal.counters["queue_timeout"] == 1


def test_a_full_queue_answers_503_at_once(procs: Processes) -> None:
    b1 = procs.backend("b1")
    with InProcess(make_config([b1], limits={"upstream_max_connections": 1, "upstream_queue": 1})) as lb:
        took: list[float] = []
        results = _concurrently(lb.port, ["/delay/1000"] * 3, stagger_s=0.1, timings=took)
        assert [s for s, _ in results] == [200, 200, 503], results
        assert took[2] < 0.5   # refused immediately: the one queue place was taken


def test_a_client_that_leaves_while_waiting_is_never_sent_upstream(procs: Processes) -> None:
    b1 = procs.backend("b1")
    with InProcess(make_config([b1], limits={"upstream_max_connections": 1})) as lb:
        holder = threading.Thread(target=http_get, args=(lb.port, "/delay/800"))
        holder.start()
        time.sleep(0.2)
        s = socket.create_connection(("127.0.0.1", lb.port))
        s.sendall(b"GET /delay/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        assert lb.run(lb.bal.waiting.live) == 1
        s.close()
        holder.join(10)
        assert http_get(lb.port, "/").status == 200
        server = lb.bal.pool.servers[0]
        assert server.requests == 2   # the held request and the last one; not the abandoned one
        assert lb.run(lambda: len(lb.bal.waiting.entries)) == 0


def test_a_finished_request_hands_its_slot_to_a_waiter_at_once(procs: Processes) -> None:
    """Twelve 20 ms requests through one slot take about 12 x 20 ms, not a timer tick each."""
    b1 = procs.backend("b1")
    with InProcess(make_config([b1], limits={"upstream_max_connections": 1})) as lb:
        t0 = time.monotonic()
        results = _concurrently(lb.port, ["/delay/20"] * 12)
        elapsed = time.monotonic() - t0
        assert [s for s, _ in results] == [200] * 12
        assert lb.bal.counters["queued"] >= 6
        assert elapsed < 2.0, f"{elapsed:.2f}s: waiters were served by the 250 ms tick, not the freed slot"


def test_a_retry_waits_for_a_slot_like_a_first_attempt(procs: Processes) -> None:
    """A request whose server refused the connection is retried; when the only other server is
    at its cap, the retry waits in the queue for its slot instead of failing with 502."""
    b1 = procs.backend("b1")
    with InProcess(make_config([refused_port(), b1], balancer={"strategy": "round-robin"},
                               health={"enabled": False}, limits={"upstream_max_connections": 1})) as lb:
        # The slow request holds b1's one slot; the second can only be sent to the dead server,
        # fails there before any byte came back, and is retried on b1 once the slot is free.
        results = _concurrently(lb.port, ["/delay/800", "/"], stagger_s=0.2)
        assert results == [(200, "b1"), (200, "b1")], results
        assert lb.bal.counters["retries"] >= 1 and lb.bal.counters["queued"] >= 1
        assert lb.bal.counters["error_502"] == 0


def test_a_waiting_retry_does_not_hold_up_requests_another_server_can_take(procs: Processes) -> None:
    """A retry waits only for the servers it has not tried; requests behind it that the server it
    failed on can take now are sent there at once, not after the retry's wait."""
    b1 = procs.backend("b1")

    def flaky(conn: socket.socket) -> None:   # "A": drops /y without answering, serves the rest
        while True:
            head = read_request_head(conn)
            if not head:
                return
            if head.startswith(b"GET /y "):
                return   # connection closed before any response byte: taxiway retries elsewhere
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Backend: A\r\nContent-Length: 2\r\n\r\nok")

    a = RawServer(flaky)
    lb = InProcess(make_config([a.port, b1], balancer={"strategy": "round-robin"},
                               health={"enabled": False}, limits={"upstream_max_connections": 1}))
    try:
        # Line round robin up so that the slow request lands on b1.
        while http_get(lb.port, "/").header("X-Backend") != "A":
            pass
        results: dict[str, tuple[int, str | None, float]] = {}

        def get(path: str) -> None:
            t0 = time.monotonic()
            r = http_get(lb.port, path)
            results[path] = (r.status, r.header("X-Backend"), time.monotonic() - t0)

        slow = threading.Thread(target=get, args=("/delay/2000",))
        slow.start()
        time.sleep(0.3)   # b1 is now full
        retry = threading.Thread(target=get, args=("/y",))   # fails on A, waits for b1
        retry.start()
        time.sleep(0.3)
        assert lb.run(lb.bal.waiting.live) == 1
        get("/")   # A has room: served now, not after the slow request
        assert results["/"][:2] == (200, "A") and results["/"][2] < 1.0, results
        slow.join(10)
        retry.join(10)
        assert results["/y"][:2] == (200, "b1"), results   # the retry got b1's slot
        assert results["/delay/2000"][:2] == (200, "b1")
    finally:
        lb.stop()
        a.close()
