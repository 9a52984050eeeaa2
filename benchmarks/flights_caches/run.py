"""Flights app: requests/s and p99 with and without each of Django's caches, measured with taxiway bench.

    .venv/bin/python benchmarks/flights_caches/run.py [--flights 10000] [--duration 10] [--users 8]

One seeded SQLite database (10k flights by default, 5k bookings); for each cache setting
(FLIGHTS_CACHES = none | view | fragment | data | all) one gunicorn server (--workers, default 2 sync
workers = the 2 cores) is started and three anonymous pages are measured in turn, closed loop:
- the flight list, one popular search (`/?kind=domestic&sort=price`): the per-view cache's target;
- a flight page (`/flights/D17/`): the fragment cache (route panel) and the seat-count cache;
- the JSON flight (`/api/flights/D17`): the seat-count cache (low-level API).
Finally, with all caches on, the list is requested with the ETag it returned: a 304 answers.
Results: a Markdown table on stdout and JSON under benchmarks/flights_caches/results/<date>/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "flights"
VARIANTS = ["none", "view", "fragment", "data", "all"]
PAGES = [("flight list", "/?kind=domestic&sort=price"), ("flight page", "/flights/D17/"),
         ("API flight", "/api/flights/D17")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def app_env(workdir: Path, caches: str, redis_url: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "FLIGHTS_", "TAXIWAY_"))}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    env.update(DJANGO_SECRET_KEY=secrets.token_urlsafe(40),
               DATABASE_URL=f"sqlite:///{workdir / 'db.sqlite3'}",
               FLIGHTS_STATIC_ROOT=str(workdir / "static"), FLIGHTS_CACHES=caches,
               FLIGHTS_DEMO_PASSWORD=secrets.token_urlsafe(12))
    if redis_url:
        env.update(REDIS_URL=redis_url, FLIGHTS_CACHE_PREFIX=f"flights-bench-{os.getpid()}")
    return env


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=APP, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def start(env: dict[str, str], workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "flights.wsgi", "-b", f"127.0.0.1:{port}",
                             "-w", str(workers), "--no-control-socket"], cwd=APP, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("gunicorn did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def cpu_seconds(master_pid: int) -> float:
    """CPU time (user + system) used so far by gunicorn's master and its workers, from /proc.

    Why: on a shared, busy machine req/s and p99 swing with the neighbours' load; the CPU time the
    server spends per request hardly does, so it is the steadier figure for "what a cache saves"."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [master_pid]
    try:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick


def bench(url: str, args: argparse.Namespace, out: Path, *headers: str, pid: int = 0) -> dict[str, object]:
    """Warm up for 2 s (discarded), then measure; CPU time is read around the measured run only."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    base = [sys.executable, "-m", "taxiway", "bench", url, "-c", str(args.users), "-q"]
    for h in headers:
        base += ["-H", h]
    subprocess.run([*base, "-d", "2s"], check=True, stdout=subprocess.DEVNULL, env=env)
    cpu_before = cpu_seconds(pid) if pid else 0.0
    subprocess.run([*base, "-d", f"{args.duration}s", "--json", str(out)], check=True,
                   stdout=subprocess.DEVNULL, env=env)
    cpu = cpu_seconds(pid) - cpu_before if pid else 0.0
    data = json.loads(out.read_text())
    answered = max(1, int(data["attempts"]))
    return {"rps": data["requests_per_s"], "p99_ms": data["latency_ms"]["p99"], "errors": data["errors"],
            "requests": data["requests"], "cpu_ms_per_req": 1000 * cpu / answered}


def measure(workdir: Path, variant: str, rnd: int, args: argparse.Namespace, results_dir: Path
            ) -> list[dict[str, object]]:
    """One gunicorn server with FLIGHTS_CACHES=variant; every page measured in turn."""
    rows: list[dict[str, object]] = []
    proc, url = start(app_env(workdir, variant, args.redis), args.workers)
    try:
        for label, path in PAGES:
            r = bench(url + path, args, results_dir / f"{variant}-{label.replace(' ', '_')}-{rnd}.json",
                      pid=proc.pid)
            rows.append({"caches": variant, "page": label, "round": rnd, **r})
            print(f"{variant:9} {label:12} {r['rps']:9.1f} req/s  p99 {r['p99_ms']:8.2f} ms  "
                  f"cpu {r['cpu_ms_per_req']:6.2f} ms/req  errors {r['errors']}", flush=True)
        if variant == "all":
            # Revalidation: the list's ETag is a hash of the (cached) body, the flight page's is made
            # from its data by @condition before any rendering.
            for label, path in PAGES[:2]:
                etag = httpx.get(url + path, timeout=10).headers["ETag"]
                r = bench(url + path, args, results_dir / f"all-304-{label.replace(' ', '_')}-{rnd}.json",
                          f"If-None-Match: {etag}", pid=proc.pid)
                rows.append({"caches": "all + If-None-Match (304)", "page": label, "round": rnd, **r})
                print(f"304       {label:12} {r['rps']:9.1f} req/s  p99 {r['p99_ms']:8.2f} ms  "
                      f"cpu {r['cpu_ms_per_req']:6.2f} ms/req", flush=True)
    finally:
        stop(proc)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flights", type=int, default=10000)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    ap.add_argument("--users", type=int, default=8, help="closed-loop virtual users")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds over all variants (interleaved, so background load hits all alike); "
                         "the table shows medians")
    ap.add_argument("--redis", default="", metavar="URL",
                    help="use Redis as the cache (REDIS_URL) instead of the database cache table")
    ap.add_argument("--results", type=Path, default=None)
    args = ap.parse_args()
    today = dt.date.today().isoformat()
    results_dir = args.results or ROOT / "benchmarks" / "flights_caches" / "results" / today
    results_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="flights-bench-"))
    rows: list[dict[str, object]] = []
    try:
        env = app_env(workdir, "all")
        manage(env, "prepare")
        manage(env, "seed", "--flights", str(args.flights), "--bookings", "5000", "--users", "20")
        for rnd in range(args.repeats):
            for variant in args.variants.split(","):
                rows += measure(workdir, variant, rnd, args, results_dir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    meta = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "flights": args.flights,
            "duration_s": args.duration, "users": args.users, "workers": args.workers,
            "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(),
            "cache": "redis" if args.redis else "database (SQLite table)"}
    (results_dir / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("\n| page | caches on | server CPU ms/request | req/s | p99 ms | req/s per round | errors |")
    print("|---|---|---:|---:|---:|---|---:|")
    groups: dict[tuple[str, str], list[dict[str, object]]] = {}
    for r in rows:
        groups.setdefault((str(r["page"]), str(r["caches"])), []).append(r)
    for label, _ in PAGES:
        for (page, caches), rs in groups.items():
            if page != label:
                continue
            rps = [float(r["rps"]) for r in rs]  # type: ignore[arg-type]
            p99 = [float(r["p99_ms"]) for r in rs]  # type: ignore[arg-type]
            errors = sum(int(r["errors"]) for r in rs)  # type: ignore[call-overload]
            cpu = statistics.median(float(r["cpu_ms_per_req"]) for r in rs)  # type: ignore[arg-type]
            print(f"| {page} | {caches} | {cpu:.2f} | {statistics.median(rps):.0f} | "
                  f"{statistics.median(p99):.1f} | "
                  f"{', '.join(f'{x:.0f}' for x in rps)} | {errors} |")
    print(f"\n{meta}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
