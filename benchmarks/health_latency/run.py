"""How long a busy app server takes to answer its health check: the measurement behind
`[health]`'s default timeout.

Run it beside a running deployment under load (e.g. `bash scripts/demo.sh`, then
`bash scripts/demo.sh --load 60` in another terminal):

    .venv/bin/python benchmarks/health_latency/run.py --admin http://127.0.0.1:9901 --seconds 60

It reads the pool from the admin API's /status, then probes every server's health path directly
(a new connection per probe, as the health checker does) every `--interval`, and prints, each
10 s and at the end, the latency percentiles and how many probes a given timeout would have
failed, and how many `fall`-long runs of failures in a row each timeout would have produced
(a run of `fall` is what takes a server out of rotation).
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
import urllib.request

TIMEOUTS_S = (0.5, 1.0, 2.0, 3.0, 5.0)


def servers(admin: str) -> list[tuple[str, str, int]]:
    with urllib.request.urlopen(f"{admin}/status", timeout=5) as r:
        st = json.load(r)
    return [(s["name"], *s["address"].rsplit(":", 1)) for s in st["servers"]]   # type: ignore[misc]


def probe(host: str, port: int, path: str, cap_s: float) -> float:
    """Seconds to a complete answer (cap_s if none by then)."""
    t0 = time.monotonic()
    try:
        conn = http.client.HTTPConnection(host, port, timeout=cap_s)
        conn.request("GET", path, headers={"Connection": "close"})
        conn.getresponse().read()
        conn.close()
    except OSError:
        return cap_s
    return time.monotonic() - t0


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p / 100))] if s else 0.0


def runs_of(lat: list[float], timeout: float, fall: int) -> int:
    """How many times `fall` probes in a row would have failed with this timeout."""
    runs = streak = 0
    for v in lat:
        streak = streak + 1 if v >= timeout else 0
        if streak == fall:
            runs += 1
    return runs


def report(label: str, per_server: dict[str, list[float]], fall: int) -> None:
    every = [v for lat in per_server.values() for v in lat]
    if not every:
        return
    print(f"{label}: {len(every)} probes  p50 {pct(every, 50) * 1000:.0f} ms  "
          f"p99 {pct(every, 99) * 1000:.0f} ms  max {max(every) * 1000:.0f} ms")
    for t in TIMEOUTS_S:
        failed = sum(1 for v in every if v >= t)
        downs = sum(runs_of(lat, t, fall) for lat in per_server.values())
        print(f"  timeout {t:g}s: {failed} probes failed ({100 * failed / len(every):.2f}%), "
              f"{downs} times {fall} in a row (server taken DOWN)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--admin", default="http://127.0.0.1:9901")
    ap.add_argument("--path", default="/healthz")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--fall", type=int, default=3)
    args = ap.parse_args()
    cap = max(TIMEOUTS_S) * 2
    per_server: dict[str, list[float]] = {}
    lock = threading.Lock()
    end = time.monotonic() + args.seconds
    started: set[str] = set()

    def loop(name: str, host: str, port: int) -> None:
        while time.monotonic() < end:
            t0 = time.monotonic()
            v = probe(host, port, args.path, cap)
            with lock:
                per_server.setdefault(name, []).append(v)
            time.sleep(max(0.0, args.interval - (time.monotonic() - t0)))

    next_report = time.monotonic() + 10
    while time.monotonic() < end:
        for name, host, port in servers(args.admin):
            if name not in started:
                started.add(name)
                threading.Thread(target=loop, args=(name, host, int(port)), daemon=True).start()
        time.sleep(1.0)
        if time.monotonic() >= next_report:
            with lock:
                report(f"after {args.seconds - (end - time.monotonic()):.0f} s", per_server, args.fall)
            next_report += 10
    time.sleep(cap)
    with lock:
        report("all", per_server, args.fall)


if __name__ == "__main__":
    main()
