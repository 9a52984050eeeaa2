"""The proxy's per-request Python cost, measured in one process without sockets (low noise).

    .venv/bin/python benchmarks/hotpath_inproc.py            # µs/request, best of 5
    .venv/bin/python benchmarks/hotpath_inproc.py --ops      # bytecodes + Python calls/request
    .venv/bin/python benchmarks/hotpath_inproc.py --ops --hist   # ... per function
    .venv/bin/python benchmarks/hotpath_inproc.py --callgrind    # CPU instructions/request
    .venv/bin/python benchmarks/hotpath_inproc.py --matrix       # request shapes x upstreams
    options: --log (access log on), --strategy NAME, --src DIR (compare another checkout's src/),
             --request SHAPE (benchmarks/realistic/shapes.py), --response UPSTREAM (a captured
             answer in benchmarks/realistic/responses/)

Why: wrk against a pinned proxy on a shared 2-core machine swings by +-20 % between runs, which
hides any single hot-path change. This drives the real `ClientProtocol` and `UpstreamConnection`
(httptools parsers, Exchange, strategy, rewriters, accounting) with do-nothing transports: one
`GET / HTTP/1.1` with one Host header (what wrk sends) and the 4-header answer of `taxiway
backend`. Syscalls and uvloop are left out, so the numbers are the Python part only; `--ops`
counts executed bytecodes, which is deterministic (use it to compare two versions), but sees
only interpreted code. `--callgrind` counts the machine instructions spent inside the two
entry points (the client's `data_received`; the upstream's `get_buffer` + `buffer_updated`, or
`data_received` in checkouts before the shared read buffer; valgrind's callgrind, collection
toggled on those functions only),
compiled or not: the same number on every run of the same build, whatever else the machine does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nx-backend: b1\r\ndate: Thu, 26 Nov 2026 08:55:26 GMT\r\n"
            b"content-type: text/plain\r\ncontent-length: 14\r\n\r\nhello from b1\n")


class NullTransport:
    """Accepts writes and does nothing (a close would mean the request went wrong: stop)."""

    def __init__(self, peer: tuple[str, int] | None = None) -> None:
        self.peer = peer

    def write(self, data: bytes) -> None:
        pass

    def writelines(self, data: Any) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        raise SystemExit("the proxy closed a connection: the request failed")

    abort = close

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return self.peer if key == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


HERE = os.path.dirname(os.path.abspath(__file__))
SHAPE_NAMES = ("minimal", "browser", "api", "static")
UPSTREAM_NAMES = ("taxiway", "nginx", "gunicorn", "uvicorn", "node")


def request_bytes(shape: str | None) -> bytes:
    if shape is None:
        return REQUEST
    sys.path.insert(0, os.path.join(HERE, "realistic"))
    from shapes import SHAPES  # type: ignore[import-not-found]

    return SHAPES[shape]  # type: ignore[no-any-return]


def response_bytes(upstream: str | None) -> bytes:
    if upstream is None:
        return RESPONSE
    with open(os.path.join(HERE, "realistic", "responses", f"{upstream}.http"), "rb") as f:
        return f.read()


def build(log: bool, strategy: str, request: bytes = REQUEST,
          response: bytes = RESPONSE) -> Callable[[], None]:
    """A balancer with two servers and idle upstream connections; returns one request's driver."""
    from taxiway.config import load_config
    from taxiway.proxy.app import Balancer
    from taxiway.proxy.server import ClientProtocol
    from taxiway.proxy.upstream import UpstreamConnection

    d = tempfile.mkdtemp(prefix="hotpath-")
    path = os.path.join(d, "taxiway.toml")
    with open(path, "w") as f:
        f.write(f'[listen]\nhttp = "127.0.0.1:1"\n[balancer]\nstrategy = "{strategy}"\n'
                f'[access_log]\nenabled = {"true" if log else "false"}\npath = "{d}/access.log"\n'
                '[[servers]]\nurl = "http://127.0.0.1:9001"\nname = "b1"\n'
                '[[servers]]\nurl = "http://127.0.0.1:9002"\nname = "b2"\n')
    bal = Balancer(load_config(path))
    bal._loop = asyncio.new_event_loop()
    for server in bal.pool.servers:
        up = bal.upstream_pool(server)
        for _ in range(2):
            conn = UpstreamConnection(up)
            conn.connection_made(NullTransport())  # type: ignore[arg-type]
            conn.idle_since = time.monotonic()   # (a POST reuses only recently used connections)
            up.idle.append(conn)
    client = ClientProtocol(bal, "http")
    client.connection_made(NullTransport(("127.0.0.1", 5555)))  # type: ignore[arg-type]

    buffered = hasattr(UpstreamConnection, "buffer_updated")   # (as uvloop drives it)

    def one() -> None:
        client.data_received(request)
        ex = client.current
        assert ex is not None and ex.conn is not None
        if buffered:
            view = ex.conn.get_buffer(-1)
            view[:len(response)] = response
            ex.conn.buffer_updated(len(response))
        else:
            ex.conn.data_received(response)

    def flush() -> None:
        if bal.access_log is not None:
            bal.access_log.flush()

    one.flush = flush  # type: ignore[attr-defined]
    return one


def count_ops(one: Callable[[], None], n: int, hist: bool) -> None:
    ops = calls = 0
    per: dict[tuple[str, str], int] = {}

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal ops, calls
        frame.f_trace_opcodes = True
        if event == "opcode":
            ops += 1
            if hist:
                key = (os.path.basename(frame.f_code.co_filename), frame.f_code.co_name)
                per[key] = per.get(key, 0) + 1
        elif event == "call":
            calls += 1
        return tracer

    sys.settrace(tracer)
    for _ in range(n):
        one()
    sys.settrace(None)
    for (fname, func), v in sorted(per.items(), key=lambda kv: -kv[1])[:30]:
        print(f"  {v / n:7.1f}  {fname}:{func}")
    print(f"{ops / n:.0f} bytecodes/request, {calls / n:.1f} Python calls/request "
          "(including ~15 bytecodes and 1 call of the driver)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default=os.path.join(os.path.dirname(__file__), "..", "src"))
    p.add_argument("--log", action="store_true", help="access log on (to a file)")
    p.add_argument("--strategy", default="least-connections")
    p.add_argument("--ops", action="store_true", help="count bytecodes instead of timing")
    p.add_argument("--hist", action="store_true", help="with --ops: per function")
    p.add_argument("-n", type=int, default=100_000, help="requests per timed round")
    p.add_argument("--callgrind", action="store_true",
                   help="instructions/request under valgrind (needs valgrind; -n defaults to 2000)")
    p.add_argument("--request", choices=SHAPE_NAMES, default=None, help="request shape (default: wrk's)")
    p.add_argument("--response", choices=UPSTREAM_NAMES, default=None,
                   help="a captured upstream answer (default: taxiway backend's)")
    p.add_argument("--matrix", action="store_true",
                   help="callgrind over every request shape x upstream; table, JSON and chart")
    p.add_argument("--results", default=None, help="with --matrix: directory for result.json, chart.png")
    a = p.parse_args()
    if a.matrix:
        return run_matrix(a)
    if a.callgrind:
        return run_callgrind(a)
    sys.path.insert(0, os.path.abspath(a.src))
    one = build(a.log, a.strategy, request_bytes(a.request), response_bytes(a.response))
    for _ in range(2000):   # warm up: caches, pooled connections
        one()
    if a.ops:
        count_ops(one, 2000, a.hist)
        return 0
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(a.n):
            one()
        best = min(best, (time.process_time() - t0) / a.n * 1e6)
        one.flush()  # type: ignore[attr-defined]
    print(f"{best:.2f} µs/request of CPU (best of 5; Python + httptools, no syscalls)")
    return 0


# The proxy's two entry points: everything a request costs happens inside one of them.
# (Toggles nest: a toggled function called from another would switch collection off, so the
# upstream's data_received, which buffer_updated calls for a head, is an entry point only in
# checkouts without buffer_updated.)
ENTRY_POINTS = ("server___ClientProtocol___data_received", "upstream___UpstreamConnection___get_buffer",
                "upstream___UpstreamConnection___buffer_updated")
ENTRY_POINTS_BEFORE_BUFFER = ("server___ClientProtocol___data_received",
                              "upstream___UpstreamConnection___data_received")


def run_callgrind(a: argparse.Namespace) -> int:
    """Re-run this script under callgrind, collecting only inside the entry points."""
    import re
    import shutil
    import subprocess

    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install -y valgrind)", file=sys.stderr)
        return 2
    n = a.n if a.n != 100_000 else 2000
    rounds = 2000 + 5 * n     # the warm-up and the five timed rounds all run the entry points
    with open(os.path.join(a.src, "taxiway", "proxy", "upstream.py")) as f:
        entry = ENTRY_POINTS if "def buffer_updated" in f.read() else ENTRY_POINTS_BEFORE_BUFFER
    toggles = [f"--toggle-collect=CPyDef_{name}" for name in entry]   # mypyc's C names
    args = [sys.argv[0], "-n", str(n), "--strategy", a.strategy, "--src", a.src]
    if a.log:
        args.append("--log")
    for option in ("request", "response"):
        if getattr(a, option, None):
            args += [f"--{option}", getattr(a, option)]
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg.out", *toggles,
                               sys.executable, *args], capture_output=True, text=True)
    m = re.search(r"Collected : ([\d,]+)", proc.stderr)
    if proc.returncode != 0 or m is None:
        print(proc.stderr[-2000:], file=sys.stderr)
        return 1
    total = int(m.group(1).replace(",", ""))
    if total == 0:
        print("nothing collected: the hot path is not compiled here (callgrind counts only the "
              "compiled entry points; see docs/performance.md, 'Compiled hot path')", file=sys.stderr)
        return 1
    sys.path.insert(0, os.path.abspath(a.src))   # (the build measured, for its label)
    import taxiway
    a.instructions = total / rounds
    print(f"{total / rounds:.0f} instructions/request ({taxiway.BUILD}; {a.strategy}; "
          f"{a.request or 'minimal'} -> {a.response or 'taxiway'}; callgrind, {rounds} requests)", flush=True)
    return 0


def run_matrix(a: argparse.Namespace) -> int:
    """Every request shape x upstream answer under callgrind; the minimal request to taxiway
    backend's answer is the reference every cell is divided by."""
    import json

    if a.n == 100_000:
        a.n = 500
    cells: dict[str, dict[str, float]] = {}
    for shape in SHAPE_NAMES:
        for upstream in UPSTREAM_NAMES:
            a.request, a.response = shape, upstream
            if run_callgrind(a) != 0:
                return 1
            cells.setdefault(shape, {})[upstream] = a.instructions
    base = cells["minimal"]["taxiway"]
    print(f"\n{'request':10}" + "".join(f"{u:>14}" for u in UPSTREAM_NAMES))
    for shape, row in cells.items():
        print(f"{shape:10}" + "".join(f"{row[u]:>8.0f} {row[u] / base:4.1f}x" for u in UPSTREAM_NAMES))
    worst = max(v for row in cells.values() for v in row.values())
    print(f"worst cell: {worst / base:.2f}x the minimal case ({base:.0f} instructions/request)")
    if a.results:
        os.makedirs(a.results, exist_ok=True)
        import taxiway
        with open(os.path.join(a.results, "result.json"), "w") as f:
            json.dump({"build": taxiway.BUILD, "strategy": a.strategy, "access_log": a.log,
                       "requests_per_cell": 2000 + 5 * a.n, "instructions_per_request": cells}, f, indent=1)
        plot_matrix(cells, os.path.join(a.results, "chart.png"))
        print(f"results: {a.results}")
    return 0


def plot_matrix(cells: dict[str, dict[str, float]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(UPSTREAM_NAMES)
    for i, upstream in enumerate(UPSTREAM_NAMES):
        xs = [j + i * width for j in range(len(cells))]
        ax.bar(xs, [cells[s][upstream] / 1000 for s in cells], width, label=upstream)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cells))], list(cells))
    ax.set_ylabel("thousand instructions per request")
    ax.set_title("taxiway's CPU work per request (callgrind), by request shape and upstream")
    ax.axhline(1.5 * cells["minimal"]["taxiway"] / 1000, color="grey", linestyle="--", linewidth=1,
               label="1.5x the minimal case")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
