"""Upgrades and reloads under load: failed requests per upgrade, taxiway against HAProxy and nginx.

    .venv/bin/python benchmarks/lifecycle/upgrades.py [--duration 60] [--results DIR]

Each target serves `wrk -t1 -c50` (keep-alive connections, counting socket errors and non-2xx
answers) in front of two `taxiway backend`s for `--duration` seconds while it is replaced over
and over:
- taxiway lb, one process, and with `balancer.workers = 2`: `taxiway upgrade` back to back (a
  new process each time: the listening sockets are inherited, the old process drains and exits;
  proxy/handover.py). A new Python process takes most of a second to start, which bounds the rate.
- HAProxy in master-worker mode with `expose-fd listeners` (its seamless reload; with
  `--haproxy-idle-close`, also `option idle-close-on-response`): SIGUSR2 to the
  master every `--peer-interval` (100 ms, the rate of HAProxy's published hitless-reload test,
  and 1.3 s, about the rate of taxiway's back-to-back upgrades).
- nginx: SIGHUP to the master (a graceful reload: new workers, old ones finish) at the same rates.
Printed and written to DIR/result.json, with DIR/chart.png: per target, replacements done,
requests, failed requests (socket errors + non-2xx) and p99. Progress: a line per replacement
batch. Needs wrk, haproxy and nginx (`apt-get install wrk haproxy nginx`).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
_spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks" / "proxy_vs_peers" / "run.py")
assert _spec is not None and _spec.loader is not None
peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers)

HAPROXY_CFG = """
global
    nbthread 1
    maxconn 8000
    stats socket $rundir/haproxy.sock mode 600 level admin expose-fd listeners

defaults
    mode http
    option http-keep-alive
$options
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    http-reuse always

frontend fe
    bind 127.0.0.1:$port
    default_backend be

backend be
    balance roundrobin
    server b1 127.0.0.1:$backend1
    server b2 127.0.0.1:$backend2
"""


def status_pid(admin: int) -> int | None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
    try:
        conn.request("GET", "/status", headers={"Host": f"127.0.0.1:{admin}"})
        return int(json.loads(conn.getresponse().read())["pid"])
    except (OSError, ValueError, KeyError):
        return None
    finally:
        conn.close()


def replace_taxiway(admin: int, stop: threading.Event, done: list[float]) -> None:
    """`taxiway upgrade`, back to back, until `stop`; each finished one's duration in `done`."""
    while not stop.is_set():
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "taxiway", "upgrade", "--admin", f"127.0.0.1:{admin}"],
                             env=peers.taxiway_env(), capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            print(f"  upgrade failed: {out.stderr.strip()}", flush=True)
            time.sleep(1)
            continue
        done.append(time.monotonic() - t0)
        if len(done) % 10 == 0:
            print(f"  {len(done)} upgrades", flush=True)


def signal_every(pid: int, signum: int, interval_s: float, stop: threading.Event, done: list[float]) -> None:
    while not stop.wait(interval_s):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        done.append(interval_s)
        if len(done) % 100 == 0:
            print(f"  {len(done)} reloads", flush=True)


def error_detail(out: str) -> dict[str, int]:
    """wrk's socket errors by kind, and its non-2xx count."""
    import re

    detail = {}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        detail.update(zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    detail["non_2xx"] = int(m.group(1)) if m else 0
    return detail


def run_target(name: str, a: argparse.Namespace, rundir: Path, b: tuple[int, int],
               interval_s: float) -> dict[str, Any]:
    procs = peers.Procs(rundir)
    port, admin = peers.free_port(), peers.free_port()
    try:
        if name.startswith("taxiway"):
            workers = 2 if name.endswith("x2") else 1
            cfg = peers.render("taxiway.toml.tmpl", rundir / f"{name}.toml", port=port, admin_port=admin,
                               backend1=b[0], backend2=b[1], strategy="round-robin", workers=workers)
            proc = procs.start(name, [sys.executable, "-m", "taxiway", "lb", "--config", str(cfg)])
        elif name == "haproxy":
            cfg = rundir / "haproxy.cfg"
            options = "    option idle-close-on-response" if a.haproxy_idle_close else ""
            cfg.write_text(peers.Template(HAPROXY_CFG).substitute(rundir=rundir, port=port, backend1=b[0],
                                                                  backend2=b[1], options=options))
            proc = procs.start(name, ["haproxy", "-W", "-db", "-f", str(cfg)])
        else:
            cfg = peers.render("nginx.conf.tmpl", rundir / "nginx.conf", port=port, backend1=b[0],
                               backend2=b[1], rundir=rundir)
            proc = procs.start(name, ["nginx", "-c", str(cfg), "-p", str(rundir)])
        peers.wait_for_port(port, proc)
        time.sleep(1.0)
        stop = threading.Event()
        done: list[float] = []
        if name.startswith("taxiway"):
            worker = threading.Thread(target=replace_taxiway, args=(admin, stop, done))
        else:
            sig = signal.SIGUSR2 if name == "haproxy" else signal.SIGHUP
            worker = threading.Thread(target=signal_every, args=(proc.pid, sig, interval_s, stop, done))
        print(f"{name}: wrk for {a.duration:g}s while replacing it", flush=True)
        wrk = subprocess.Popen(["wrk", "-t1", "-c50", f"-d{a.duration:g}s", "--latency",
                                f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True)
        worker.start()
        out, _ = wrk.communicate(timeout=a.duration + 120)
        stop.set()
        worker.join(timeout=150)
        res = peers.parse_wrk(out)
        label = name if name.startswith("taxiway") else f"{name} every {interval_s * 1000:g} ms"
        if name == "haproxy" and a.haproxy_idle_close:
            label = label.replace("haproxy", "haproxy idle-close")
        row = {"target": label, "replacements": len(done), "requests": int(res["requests"]),
               "failed": int(res["errors"]), "errors": error_detail(out), "p99_ms": res.get("p99_ms"),
               "rps": res["rps"],
               "mean_upgrade_s": round(sum(done) / len(done), 3) if done and name.startswith("taxiway")
               else None}
        print(f"{name}: {row}", flush=True)
        return row
    finally:
        procs.stop_all()
        if name.startswith("taxiway"):
            # The successors of the process started here run in its process group (stopped above);
            # any left (the group changed hands) are found by their config file.
            subprocess.run(["pkill", "-f", f"{rundir}/{name}.toml"], check=False)


def chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    names = [r["target"] for r in rows]
    ax[0].bar(names, [r["failed"] for r in rows], color="#c0392b")
    ax[0].set_title("failed requests (socket errors + non-2xx)")
    ax[1].bar(names, [r["replacements"] for r in rows], color="#2c7fb8")
    ax[1].set_title("replacements during the run")
    for a in ax:
        a.tick_params(axis="x", labelrotation=20, labelsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per target")
    p.add_argument("--peer-interval", default="0.1,1.3",
                   help="seconds between peer reloads, comma-separated: each is a run (default 0.1 as in "
                        "HAProxy's test, and 1.3, about taxiway's back-to-back upgrade)")
    p.add_argument("--targets", default="taxiway,taxiway-x2,haproxy,nginx")
    p.add_argument("--haproxy-idle-close", action="store_true",
                   help="HAProxy with `option idle-close-on-response` (2.6+): during a soft stop it keeps an "
                        "idle keep-alive connection for one more request instead of closing it")
    p.add_argument("--results",
                   default=str(HERE / "results" / f"{datetime.date.today().isoformat()}-upgrades"))
    a = p.parse_args()
    targets = a.targets.split(",")
    try:
        intervals = [float(x) for x in a.peer_interval.split(",")]
    except ValueError:
        print(f"--peer-interval: expected seconds, comma-separated (got {a.peer_interval!r})",
              file=sys.stderr)
        return 2
    missing = [t for t in ("wrk", "haproxy", "nginx") if not shutil.which(t) and
               (t == "wrk" or t in targets)]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install {' '.join(missing)})", file=sys.stderr)
        return 2
    peers.raise_fd_limit()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        rundir = Path(d)
        procs = peers.Procs(rundir)
        try:
            with peers.backends(procs, None) as b:
                for name in targets:
                    for interval in ([0.0] if name.startswith("taxiway") else intervals):
                        rows.append(run_target(name, a, rundir, b, interval))
        finally:
            procs.stop_all()
    print(f"\n{'target':24} {'replaced':>9} {'requests':>10} {'failed':>7} {'p99 ms':>8}  errors")
    for r in rows:
        print(f"{r['target']:24} {r['replacements']:>9} {r['requests']:>10} {r['failed']:>7} "
              f"{r['p99_ms'] or 0:>8.2f}  {r['errors']}")
    out = Path(a.results)
    out.mkdir(parents=True, exist_ok=True)
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": peers.machine(),
              "versions": peers.versions(), "hot_path": peers.hot_path_build(),
              "command": " ".join(sys.argv), "duration_s": a.duration, "peer_intervals_s": intervals,
              "haproxy_idle_close": a.haproxy_idle_close,
              "rows": rows}
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    chart(rows, out / "chart.png", f"wrk -t1 -c50 -d{a.duration:g}s, each target replaced throughout")
    print(f"written: {out}/result.json, chart.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
