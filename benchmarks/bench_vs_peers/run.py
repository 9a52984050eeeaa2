"""taxiway bench vs wrk vs Locust (FastHttpUser): peak requests/s of each generator on one core.

    .venv/bin/python benchmarks/bench_vs_peers/run.py --duration 10 --connections 50

What it does:
1. starts nginx (template beside this file) serving a 17-byte response from memory, one worker;
2. runs each generator single-process against it for --duration seconds, in the same run, one after
   another, --rounds times (the median is reported, to tame a noisy machine):
   - wrk -t1 -cN (C, the reference for raw speed),
   - taxiway bench -c N (one process; the live line is off),
   - Locust headless, N FastHttpUsers with no wait, one process,
   - taxiway bench -c N --processes P for P in --processes (scaling);
3. measures each generator's CPU time (rusage of the child) and reports requests per CPU-second,
   which is far less sensitive to a busy machine than requests/s;
4. pins nginx to the last core and each single-core generator to core 0 (`taskset`) when the
   machine has more than one core, so "one core" means one core;
5. prints a markdown table with ratios (taxiway/wrk, taxiway/Locust) and writes result.json.

Targets (issue 3): taxiway bench >= 0.5x wrk and >= 5x Locust FastHttpUser on one core.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def pin(cmd: list[str], cpu: int | None) -> list[str]:
    if cpu is None or not shutil.which("taskset"):
        return cmd
    return ["taskset", "-c", str(cpu), *cmd]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_wrk(url: str, conns: int, duration: int, cpu: int | None) -> tuple[float, int]:
    out = subprocess.run(pin(["wrk", "-t1", f"-c{conns}", f"-d{duration}s", url], cpu),
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    if not m or not n:
        raise SystemExit(f"cannot parse wrk output:\n{out}")
    return float(m.group(1)), int(n.group(1))


def run_taxiway(url: str, conns: int, duration: int, cpu: int | None,
                processes: int = 1) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "r.json"
        cmd = [PY, "-m", "taxiway", "bench", url, "-c", str(conns), "-d", f"{duration}s", "--quiet",
               "--processes", str(processes), "--json", str(out)]
        subprocess.run(pin(cmd, cpu if processes == 1 else None), env=env(), check=True,
                       stdout=subprocess.DEVNULL)
        data = json.loads(out.read_text())
    if data["errors"]:
        print(f"  note: taxiway bench saw errors: {data['errors_breakdown']}", file=sys.stderr)
    return float(data["requests_per_s"]), int(data["requests"])


def run_locust(url: str, conns: int, duration: int, cpu: int | None) -> tuple[float, int]:
    locust = shutil.which("locust", path=str(Path(PY).parent)) or shutil.which("locust")
    if not locust:
        raise SystemExit("locust not found: pip install locust")
    with tempfile.TemporaryDirectory() as d:
        prefix = Path(d) / "loc"
        cmd = [locust, "-f", str(HERE / "locustfile.py"), "--headless", "-u", str(conns), "-r", str(conns),
               "-t", f"{duration}s", "--host", url.rstrip("/"), "--csv", str(prefix), "--only-summary",
               "--loglevel", "ERROR"]
        subprocess.run(pin(cmd, cpu), check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(f"{prefix}_stats.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row["Name"] == "Aggregated":
                    return float(row["Requests/s"]), int(row["Request Count"])
    raise SystemExit("cannot read Locust's stats csv")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--processes", default="2", help="comma list of --processes values to show scaling")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    missing = [t for t in ("nginx", "wrk") if not shutil.which(t)]
    if missing:
        print(f"missing: {', '.join(missing)}; install with: apt-get install -y nginx wrk", file=sys.stderr)
        return 2
    ncpu = os.cpu_count() or 1
    gen_cpu, nginx_cpu = (0, ncpu - 1) if ncpu > 1 else (None, None)
    rundir = Path(tempfile.mkdtemp(prefix="bench-vs-peers-"))
    for sub in ("nginx-body", "nginx-proxy", "nginx-fastcgi", "nginx-uwsgi", "nginx-scgi"):
        (rundir / sub).mkdir()
    port = free_port()
    conf = rundir / "nginx.conf"
    conf.write_text(Template((HERE / "nginx.conf.tmpl").read_text()).substitute(port=port, rundir=rundir))
    nginx = subprocess.Popen(pin(["nginx", "-c", str(conf), "-p", str(rundir)], nginx_cpu),
                             start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    runs: dict[str, list[float]] = {"wrk": [], "taxiway bench": [], "Locust FastHttpUser": []}
    per_cpu: dict[str, list[float]] = {k: [] for k in runs}
    scaling = [int(x) for x in args.processes.split(",") if x.strip()]
    for n in scaling:
        runs[f"taxiway bench --processes {n}"] = []
        per_cpu[f"taxiway bench --processes {n}"] = []
    try:
        wait_for_port(port)
        run_wrk(url, args.connections, 2, gen_cpu)  # warm-up
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            jobs: list[tuple[str, Callable[[], tuple[float, int]]]] = [
                ("wrk", lambda: run_wrk(url, args.connections, args.duration, gen_cpu)),
                ("taxiway bench", lambda: run_taxiway(url, args.connections, args.duration, gen_cpu)),
                ("Locust FastHttpUser", lambda: run_locust(url, args.connections, args.duration, gen_cpu)),
            ]
            for n in scaling:
                jobs.append((f"taxiway bench --processes {n}",
                             lambda n=n: run_taxiway(url, args.connections, args.duration, None, n)))
            for name, job in jobs:
                before = children_cpu_s()
                rps, count = job()
                used = children_cpu_s() - before
                runs[name].append(rps)
                per_cpu[name].append(count / used if used > 0 else 0.0)
            for name, values in runs.items():
                print(f"  {name}: {values[-1]:,.0f} req/s, {per_cpu[name][-1]:,.0f} req per CPU-s",
                      file=sys.stderr)
    finally:
        os.killpg(nginx.pid, signal.SIGTERM)
        nginx.wait(timeout=10)
    med = {name: statistics.median(v) for name, v in runs.items()}
    cpu_med = {name: statistics.median(v) for name, v in per_cpu.items()}
    tw = med["taxiway bench"]
    lines = ["| generator | requests/s (median) | all rounds | taxiway bench / this "
             "| requests per CPU-second |",
             "|---|---:|---|---:|---:|"]
    for name, value in med.items():
        rounds = ", ".join(f"{v:,.0f}" for v in runs[name])
        ratio = f"{tw / value:.2f}x" if value else "-"
        lines.append(f"| {name} | {value:,.0f} | {rounds} | {ratio} | {cpu_med[name]:,.0f} |")
    table = "\n".join(lines)
    print(table)
    locust = med["Locust FastHttpUser"] or float("nan")
    print(f"\ntaxiway/wrk = {tw / med['wrk']:.2f} (target >= 0.5), "
          f"taxiway/Locust = {tw / locust:.1f} (target >= 5)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({
        "median_requests_per_s": med, "rounds": runs, "requests_per_cpu_second": per_cpu,
        "connections": args.connections,
        "duration_s": args.duration, "cpus": ncpu, "pinned": gen_cpu is not None,
        "machine": platform.platform(), "load_average": os.getloadavg(), "table": table,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
