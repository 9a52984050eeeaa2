"""Strategies and affinity as a user sees them: `taxiway lb` and real backends over real sockets.

Each test starts real `taxiway backend` processes (they answer with `X-Backend: NAME`) and a real
`taxiway lb`, then counts which backend answered.
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import Processes, free_port, taxiway_env, wait_for_port

SECRET = "e2e-only-affinity-secret-0123456789"


def start_lb(procs: Processes, tmp_path: Path, servers: list[tuple[int, int]], balancer: str,
             extra: str = "") -> int:
    """Run `taxiway lb` over (port, weight) servers with a [balancer] body; returns its port."""
    port = free_port()
    text = (f'[listen]\nhttp = "127.0.0.1:{port}"\n[admin]\nlisten = "127.0.0.1:0"\n'
            f"[health]\nenabled = false\n[access_log]\nenabled = false\n"
            f"[balancer]\nseed = 7\n{balancer}\n{extra}\n")
    for backend_port, weight in servers:
        text += f'[[servers]]\nurl = "http://127.0.0.1:{backend_port}"\nweight = {weight}\n'
    cfg = tmp_path / "lb.toml"
    cfg.write_text(text)
    env = taxiway_env()
    env["TAXIWAY_AFFINITY_SECRET"] = SECRET
    proc = procs.taxiway("lb", "--config", str(cfg), env=env)
    wait_for_port(port, proc=proc)
    return port


def get(conn: http.client.HTTPConnection, path: str = "/", headers: dict[str, str] | None = None
        ) -> http.client.HTTPResponse:
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    resp.read()
    return resp


def test_weighted_round_robin_gives_exact_shares(procs: Processes, tmp_path: Path) -> None:
    b1, b2 = procs.backend("b1"), procs.backend("b2")
    port = start_lb(procs, tmp_path, [(b1, 3), (b2, 1)], 'strategy = "weighted-round-robin"')
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    seen = [get(conn).getheader("X-Backend") for _ in range(40)]
    assert Counter(seen) == {"b1": 30, "b2": 10}
    # Smooth: the light server is spread out, never two of b2 in a row.
    assert "b2 b2" not in " ".join(seen)


def test_consistent_hash_keeps_each_user_on_one_server(procs: Processes, tmp_path: Path) -> None:
    ports = [procs.backend(f"b{i}") for i in range(3)]
    port = start_lb(procs, tmp_path, [(p, 1) for p in ports],
                    'strategy = "consistent-hash"\nhash_key = "header:X-User"')
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    homes: dict[str, set[str]] = {}
    for _ in range(3):
        for user in range(30):
            backend = get(conn, headers={"X-User": f"user-{user}"}).getheader("X-Backend")
            homes.setdefault(f"user-{user}", set()).add(backend)  # type: ignore[arg-type]
    assert all(len(h) == 1 for h in homes.values())           # sticky per key
    assert len({next(iter(h)) for h in homes.values()}) == 3   # and keys spread over all servers


@pytest.mark.parametrize("strategy", ["least-connections", "power-of-two", "peak-ewma"])
def test_load_aware_strategies_favour_the_fast_server(procs: Processes, tmp_path: Path,
                                                      strategy: str) -> None:
    """A backend that takes 300 ms per request gets far fewer of 8 concurrent clients' requests."""
    slow = procs.backend("slow", None, "--delay-ms", "300")
    fast = procs.backend("fast")
    port = start_lb(procs, tmp_path, [(slow, 1), (fast, 1)], f'strategy = "{strategy}"')
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(25):
            name = get(conn).getheader("X-Backend")
            with lock:
                seen[name or "?"] += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sum(seen.values()) == 200
    assert seen["fast"] > 0.75 * 200, seen     # round robin would give each 100


def _cookie(resp: http.client.HTTPResponse) -> str | None:
    header = resp.getheader("Set-Cookie")
    return header.split(";", 1)[0] if header else None


def test_cookie_affinity_sticks_ignores_forgeries_and_fails_over(procs: Processes, tmp_path: Path) -> None:
    names = ["b0", "b1", "b2"]
    ports = [procs.backend(n) for n in names]
    by_name = dict(zip(names, procs.procs[-3:], strict=True))
    port = start_lb(procs, tmp_path, [(p, 1) for p in ports], 'strategy = "round-robin"',
                    '[affinity]\nmode = "cookie"\nsecret = "${TAXIWAY_AFFINITY_SECRET}"')
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    first = get(conn)
    cookie = _cookie(first)
    assert cookie is not None and cookie.startswith("taxiway_srv=")
    set_cookie = first.getheader("Set-Cookie") or ""
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie and "Secure" not in set_cookie
    home = first.getheader("X-Backend")
    # Round robin would rotate; the cookie keeps this client on its server, without re-setting it.
    for _ in range(10):
        r = get(conn, headers={"Cookie": f"other=1; {cookie}"})
        assert r.getheader("X-Backend") == home
        assert r.getheader("Set-Cookie") is None

    # A tampered cookie is ignored: normal balancing, and a fresh valid cookie replaces it.
    value = cookie.split("=", 1)[1]
    forged = "taxiway_srv=" + value[:-2] + ("AA" if not value.endswith("AA") else "BB")
    r = get(conn, headers={"Cookie": forged})
    assert r.status == 200
    assert _cookie(r) is not None and _cookie(r) != forged

    # The sticky server dies: the client moves to another one and gets a cookie naming it.
    dead = by_name[home]  # type: ignore[index]
    os.killpg(dead.pid, signal.SIGKILL)
    dead.wait(timeout=10)
    r = get(conn, headers={"Cookie": cookie})
    assert r.status == 200
    new_home = r.getheader("X-Backend")
    assert new_home != home
    new_cookie = _cookie(r)
    assert new_cookie is not None and new_cookie != cookie
    for _ in range(5):
        assert get(conn, headers={"Cookie": new_cookie}).getheader("X-Backend") == new_home
