"""Load step against `taxiway up`: fixed 1 server vs fixed max servers vs autoscaled, in one run.

    .venv/bin/python benchmarks/autoscale/run.py [--app gunicorn|backend] [--users 16] [--max 8]

Each mode starts its own `taxiway up --plain` with a pool of app servers, then closed-loop users
(each waits for its answer, then asks again) follow the same profile:
    1 user for STEP_AT_S, then --users users for HIGH_S, then 1 user for LOW_S.
Recorded: every request's latency and outcome (any non-200 or connection error is a failure),
and the pool from /status every 0.25 s. Printed: p99 before / during / after the step, time until
a new server takes traffic, servers over time; plotted to benchmarks/autoscale/autoscale-<app>.png,
raw numbers to results-<app>.json.

Apps (both wait 50 ms per request on I/O):
- gunicorn: benchmarks/autoscale/app.py under gunicorn with 2 sync workers per server, so each
  server handles 2 requests at a time (a typical Django/Flask deployment): extra servers help.
- backend: `taxiway backend --delay-ms 50`, an asyncio server, so one process already overlaps
  any number of waiting requests: extra servers barely help (shown for contrast).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvloop

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STEP_AT_S = 10.0
HIGH_S = 30.0
LOW_S = 30.0

APPS = {
    "gunicorn": f"{sys.executable} -m gunicorn --chdir {HERE} -w 2 -b 127.0.0.1:{{port}} "
                "--log-level warning app:app",
    "backend": f"{sys.executable} -m taxiway backend --port {{port}} --name {{name}} --delay-ms 50",
}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(app: str, lo: int, hi: int, target: float) -> str:
    return f"""
[listen]
http = "127.0.0.1:{free_port()}"
[admin]
listen = "127.0.0.1:{free_port()}"
[access_log]
enabled = false
[health]
interval = "2s"
[pool]
command = "{APPS[app]}"
min = {lo}
max = {hi}
ready_timeout = "30s"
stop_grace = "5s"
drain_timeout = "30s"
[autoscale]
metric = "inflight"
target = {target}
period = "1s"
scale_up_window = "0s"
scale_down_window = "10s"
max_scale_up = 4
max_scale_down = 1
panic_window = "3s"
"""


@dataclass
class ModeResult:
    name: str
    samples: list[tuple[float, float, bool]] = field(default_factory=list)   # (t, latency_s, ok)
    pool: list[tuple[float, int, dict[str, int]]] = field(default_factory=list)  # (t, ready, requests)
    errors: list[str] = field(default_factory=list)


async def user(host: str, port: int, stop_at: float, t0: float, res: ModeResult) -> None:
    """One closed-loop user on one keep-alive connection (reconnects if the server closes it)."""
    request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    reader = writer = None
    while time.monotonic() < stop_at:
        start = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
            status = int(head.split(b" ", 2)[1])
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            await reader.readexactly(int(m.group(1)) if m else 0)
            ok = status == 200
            if not ok:
                res.errors.append(f"status {status}")
            if re.search(rb"(?i)\r\nconnection:\s*close", head):
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
            ok = False
            res.errors.append(f"{type(exc).__name__}: {exc}")
            if writer is not None:
                writer.close()
            writer = None
        res.samples.append((start - t0, time.monotonic() - start, ok))
    if writer is not None:
        writer.close()


async def load(url: str, status_url: str, users: int, res: ModeResult) -> None:
    host, port = url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    done = asyncio.Event()

    async def watch() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while not done.is_set():
                try:
                    auto = (await client.get(status_url)).json()
                except httpx.HTTPError:
                    await asyncio.sleep(0.25)
                    continue
                reqs = {s["name"]: s["requests"] for s in auto["autoscale"]["servers"]}
                res.pool.append((time.monotonic() - t0, auto["autoscale"]["ready"], reqs))
                await asyncio.sleep(0.25)

    watcher = asyncio.create_task(watch())
    phases = [(1, STEP_AT_S), (users, HIGH_S), (1, LOW_S)]
    start = t0
    for n, seconds in phases:
        stop_at = start + seconds
        await asyncio.gather(*(user(host, int(port), stop_at, t0, res) for _ in range(n)))
        start = stop_at
    done.set()
    await watcher


def run_mode(name: str, app: str, lo: int, hi: int, target: float, users: int, workdir: Path) -> ModeResult:
    cfg = workdir / f"{name}.toml"
    cfg.write_text(config(app, lo, hi, target))
    out = workdir / f"{name}.out"
    with open(out, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "taxiway", "up", "--plain", "--config", str(cfg)],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = status_url = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not url:
            m = re.search(r"connect to (http://\S+?);.*?(http://\S+/status)", out.read_text())
            if m:
                url, status_url = m.group(1), m.group(2)
            time.sleep(0.1)
        while time.monotonic() < deadline:
            if httpx.get(status_url, timeout=5).json()["autoscale"]["ready"] >= lo:
                break
            time.sleep(0.2)
        res = ModeResult(name)
        print(f"  {name}: {lo}..{hi} servers, {users} users at t={STEP_AT_S:g}s", flush=True)
        uvloop.run(load(url, status_url, users, res))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
    return res


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarize(res: ModeResult) -> dict[str, Any]:
    def lat(a: float, b: float) -> list[float]:
        return [lat for t, lat, _ in res.samples if a <= t < b]

    end_high = STEP_AT_S + HIGH_S
    first_names = set(res.pool[0][2]) if res.pool else set()
    new_traffic = next((t for t, _, reqs in res.pool
                        if t >= STEP_AT_S and any(n not in first_names and r > 0 for n, r in reqs.items())),
                       None)
    ready = [r for _, r, _ in res.pool]
    peak = max(ready) if ready else 0
    peak_at = next((t for t, r, _ in res.pool if r == peak and t >= STEP_AT_S), None)
    return {
        "mode": res.name,
        "requests": len(res.samples),
        "failed": sum(1 for *_, ok in res.samples if not ok),
        "p99_before_ms": 1000 * pct(lat(2, STEP_AT_S), 0.99),
        "p99_first_5s_of_step_ms": 1000 * pct(lat(STEP_AT_S, STEP_AT_S + 5), 0.99),
        "p99_step_ms": 1000 * pct(lat(STEP_AT_S, end_high), 0.99),
        "p99_after_scale_up_ms": 1000 * pct(lat(end_high - 15, end_high), 0.99),
        "p99_after_step_ms": 1000 * pct(lat(end_high, end_high + LOW_S), 0.99),
        "rps_during_step": len(lat(STEP_AT_S, end_high)) / HIGH_S,
        "new_server_traffic_after_s": None if new_traffic is None else round(new_traffic - STEP_AT_S, 2),
        "peak_servers": peak,
        "peak_reached_after_s": None if peak_at is None else round(peak_at - STEP_AT_S, 2),
        "servers_at_end": ready[-1] if ready else 0,
        "errors_sample": res.errors[:5],
    }


def plot(results: list[ModeResult], users: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for res in results:
        ax1.step([t for t, _, _ in res.pool], [r for _, r, _ in res.pool], where="post", label=res.name)
        total = STEP_AT_S + HIGH_S + LOW_S
        secs = range(int(total))
        p99 = [1000 * pct([lat for t, lat, _ in res.samples if s <= t < s + 1], 0.99) for s in secs]
        ax2.plot([s + 0.5 for s in secs], p99, label=res.name)
    for ax in (ax1, ax2):
        ax.axvspan(STEP_AT_S, STEP_AT_S + HIGH_S, color="0.92", zorder=0)
        ax.legend(loc="upper right", fontsize=8)
    ax1.set_ylabel("servers taking traffic")
    ax1.set_title(f"load step 1 -> {users} -> 1 users (shaded: {users} users)")
    ax2.set_ylabel("p99 latency per second (ms)")
    ax2.set_yscale("log")
    ax2.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--app", choices=sorted(APPS), default="gunicorn")
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--max", type=int, default=8)
    ap.add_argument("--target", type=float, default=2.0, help="in-flight requests per server")
    args = ap.parse_args()
    results: list[ModeResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, lo, hi in (("fixed-1", 1, 1), (f"fixed-{args.max}", args.max, args.max),
                             ("autoscaled", 1, args.max)):
            results.append(run_mode(name, args.app, lo, hi, args.target, args.users, Path(tmp)))
    summaries = [summarize(r) for r in results]
    (HERE / f"results-{args.app}.json").write_text(json.dumps(
        {"app": args.app, "users": args.users, "max": args.max, "target": args.target,
         "summaries": summaries,
         "autoscaled_pool": [(round(t, 2), r) for t, r, _ in results[-1].pool]}, indent=1))
    plot(results, args.users, HERE / f"autoscale-{args.app}.png")
    print(f"\napp={args.app} users 1 -> {args.users} -> 1, max {args.max} servers, target {args.target:g} "
          "in flight/server")
    print("| mode | requests | failed | p99 before | p99 first 5 s of step | p99 last 15 s of step | "
          "p99 after | new server takes traffic | peak servers (after) | servers at end |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in summaries:
        nt = "-" if s["new_server_traffic_after_s"] is None else f"{s['new_server_traffic_after_s']:.1f} s"
        pk = "-" if s["peak_reached_after_s"] is None else f"{s['peak_reached_after_s']:.1f} s"
        print(f"| {s['mode']} | {s['requests']} | {s['failed']} | {s['p99_before_ms']:.0f} ms | "
              f"{s['p99_first_5s_of_step_ms']:.0f} ms | {s['p99_after_scale_up_ms']:.0f} ms | "
              f"{s['p99_after_step_ms']:.0f} ms | {nt} | {s['peak_servers']} ({pk}) | "
              f"{s['servers_at_end']} |")
    failed = sum(s["failed"] for s in summaries)
    if failed:
        print(f"FAILED REQUESTS: {failed}: {[s['errors_sample'] for s in summaries]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
