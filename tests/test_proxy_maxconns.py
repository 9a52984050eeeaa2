"""limits.upstream_max_connections: a full server takes no new request (nginx's max_conns)."""

from __future__ import annotations

import threading

from .conftest import Processes
from .test_proxy_support import InProcess, http_get, make_config


def _concurrently(port: int, paths: list[str]) -> list[tuple[int, str | None]]:
    out: list[tuple[int, str | None]] = [(0, None)] * len(paths)

    def one(i: int, path: str) -> None:
        r = http_get(port, path)
        out[i] = (r.status, r.header("X-Backend"))

    threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(paths)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_a_full_server_is_skipped_and_503_when_all_are_full(procs: Processes) -> None:
    b1, b2 = procs.backend("b1"), procs.backend("b2")
    lb = InProcess(make_config([b1, b2], balancer={"strategy": "round-robin"},
                               limits={"upstream_max_connections": 1}))
    try:
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
    finally:
        lb.stop()


def test_no_cap_by_default(procs: Processes) -> None:
    b1 = procs.backend("b1")
    lb = InProcess(make_config([b1]))
    try:
        results = _concurrently(lb.port, ["/delay/500"] * 5)
        assert [s for s, _ in results] == [200] * 5
    finally:
        lb.stop()
