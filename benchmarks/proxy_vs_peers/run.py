"""taxiway vs HAProxy vs nginx, in one go, with the same two `taxiway backend` servers.

    .venv/bin/python benchmarks/proxy_vs_peers/run.py --duration 10

What it does:
1. starts two `taxiway backend` processes (the upstreams every target shares);
2. for each target (each backend directly = baseline, taxiway, HAProxy, nginx), starts it from the
   templates beside this file, pins it to one core (`taskset`, when the machine has more than one),
   warms it up, then runs `wrk -t1 -c50 -d10s --latency` (configurable) and records requests/s,
   p50 and p99;
3. "p99 at half load": wrk2 is not packaged here, so every proxy is driven at the same fixed rate
   (half of taxiway's measured peak) with wrk + a Lua `delay()` per connection, calibrated in a
   short run. This is closed-loop pacing: unlike wrk2 it does not correct for coordinated omission,
   so it understates tail latency equally for every target (recorded in the result as `rate_method`);
4. prints a table with taxiway's ratio to each peer and writes `result.json` and `chart.png` into
   the results directory.

CPU quota (`--proxy-cpu-quota 0.5`): the proxy's process tree also goes into a cgroup allowed that
share of one core (cgroup v1 `cpu.cfs_quota_us` or v2 `cpu.max`). Then the proxy, not wrk or the
backends, is the bottleneck, so requests/s compares the proxies' own CPU efficiency directly
(use it with `--no-half-load`: throttling periods distort latency).

Pinning: the proxy under test gets core 0; wrk and the backends share the other cores. On a 2-core
machine that means wrk and both backends compete for one core, so absolute numbers are lower than on
a bigger box; ratios between proxies are what to read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SRC = ROOT / "src"


# --------------------------------------------------------------------------------------------
# processes and ports


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            log = Path(getattr(proc, "log_path", "/dev/null"))
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(map(str, proc.args))} exited with {proc.returncode} "
                               f"before listening on {port}:\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: proxies and wrk inherit it (HAProxy refuses to start
    when maxconn does not fit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def taxiway_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Procs:
    """Every process started here, each in its own session, killed (group) at exit."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], cpus: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        if cpus is not None and shutil.which("taskset"):
            args = ["taskset", "-c", cpus, *args]
        log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env or taxiway_env(),
                                start_new_session=True)
        log.close()
        proc.log_path = str(self.logdir / f"{name}.log")  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


# --------------------------------------------------------------------------------------------
# wrk


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"unparsed wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, float]:
    """requests/s, p50/p90/p99 (ms), errors from `wrk --latency` output."""
    res: dict[str, float] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out}")
    res["rps"] = float(m.group(1))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        if m:
            res[f"p{pct}_ms"] = _to_ms(m.group(1))
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = float(m.group(1)) if m else 0.0
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    res["errors"] = float(errors)
    return res


def _tree(pid: int) -> list[int]:
    """pid and its descendants (nginx's worker, taskset's child)."""
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU time of a process tree (from /proc/PID/stat, in clock ticks)."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])     # utime, stime: fields 14 and 15 of stat
        system += int(fields[12])
    return user / tick, system / tick


@contextlib.contextmanager
def cpu_quota(pid: int, share: float | None) -> Iterator[None]:
    """Cap a process tree at `share` of one core with a cgroup (v2 `cpu.max` or v1 CFS quota)."""
    if share is None:
        yield
        return
    period = 100_000
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    root = Path("/sys/fs/cgroup") if v2 else Path("/sys/fs/cgroup/cpu")
    group = root / f"taxiway-bench-{pid}"
    try:
        group.mkdir(exist_ok=True)
        if v2:
            (group / "cpu.max").write_text(f"{int(period * share)} {period}\n")
        else:
            (group / "cpu.cfs_period_us").write_text(f"{period}\n")
            (group / "cpu.cfs_quota_us").write_text(f"{int(period * share)}\n")
        for p in _tree(pid):
            (group / "cgroup.procs").write_text(f"{p}\n")
    except OSError as exc:
        raise SystemExit(f"--proxy-cpu-quota needs a writable cpu cgroup under {root} (root): {exc}") from exc
    try:
        yield
    finally:
        for p in _tree(pid):
            with contextlib.suppress(OSError):
                (root / "cgroup.procs").write_text(f"{p}\n")
        with contextlib.suppress(OSError):
            group.rmdir()


def hot_path_build() -> str:
    """Which build of taxiway's proxy the benchmark runs (compiled by mypyc, or its sources)."""
    out = subprocess.run([sys.executable, "-c", "import taxiway; print(taxiway.BUILD)"],
                         env=taxiway_env(), capture_output=True, text=True, check=False)
    return out.stdout.strip() or out.stderr.strip()[-200:]


def run_wrk(url: str, args: argparse.Namespace, duration_s: float, cpus: str | None,
            script: Path | None = None) -> dict[str, float]:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{max(1, round(duration_s))}s",
           "--latency", "--timeout", "5s"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    if cpus is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", cpus, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr or out.stdout}")
    return parse_wrk(out.stdout)


PACING_LUA = """
-- Per-connection pacing: each connection waits delay_ms before its next request, so
-- connections x 1000/delay_ms ~ the target rate (calibrated by run.py). wrk truncates the delay to
-- whole milliseconds, so the fraction is dithered: floor or floor+1 at random, averaging delay_ms.
local delay_ms = $delay_ms
local base = math.floor(delay_ms)
local frac = delay_ms - base
function delay()
  if math.random() < frac then return base + 1 end
  return base
end
"""


def fixed_rate(url: str, args: argparse.Namespace, rate: float, cpus: str | None, workdir: Path,
               tag: str, request: Path | None = None) -> dict[str, float]:
    """p50/p99 at about `rate` requests/s: calibrate the per-connection delay, then measure.
    `request`: the request shape's script, which the pacing script joins (wrk takes one `-s`)."""
    script = workdir / f"pace-{tag}.lua"
    shape = request.read_text() if request is not None else ""
    c = args.connections
    delay_ms = max(0.0, c / rate * 1000.0)
    for _ in range(3):
        script.write_text(shape + Template(PACING_LUA).substitute(delay_ms=f"{delay_ms:.3f}"))
        probe = run_wrk(url, args, 3, cpus, script)
        if abs(probe["rps"] - rate) / rate < 0.05 or probe["rps"] <= 0:
            break
        # rate = c / (delay + L)  =>  L = c/rate_seen - delay; solve for the delay giving `rate`.
        overhead_ms = max(0.0, c / probe["rps"] * 1000.0 - delay_ms)
        delay_ms = max(0.0, c / rate * 1000.0 - overhead_ms)
    script.write_text(shape + Template(PACING_LUA).substitute(delay_ms=f"{delay_ms:.3f}"))
    res = run_wrk(url, args, args.duration, cpus, script)
    res["target_rps"] = rate
    res["delay_ms"] = delay_ms
    return res


# --------------------------------------------------------------------------------------------
# targets


def render(template: str, out: Path, **values: object) -> Path:
    text = Template((HERE / template).read_text())
    out.write_text(text.substitute(**{k: str(v) for k, v in values.items()}))
    return out


def start_target(name: str, procs: Procs, rundir: Path, backends: tuple[int, int],
                 args: argparse.Namespace, cpus: str | None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    b1, b2 = backends
    if name == "taxiway":
        cfg = render("taxiway.toml.tmpl", rundir / "taxiway.toml", port=port, admin_port=free_port(),
                     backend1=b1, backend2=b2, strategy=args.strategy, workers=args.taxiway_workers)
        proc = procs.start("taxiway", [sys.executable, "-m", "taxiway", "lb", "--config", str(cfg)], cpus)
    elif name == "haproxy":
        cfg = render("haproxy.cfg.tmpl", rundir / "haproxy.cfg", port=port, backend1=b1, backend2=b2,
                     rundir=rundir)
        proc = procs.start("haproxy", ["haproxy", "-db", "-f", str(cfg)], cpus)
    elif name == "bare":   # the floor for a Python proxy: uvloop + httptools, no features (bare.py)
        proc = procs.start("bare", [sys.executable, str(HERE / "bare.py"), str(port), str(b1), str(b2)], cpus)
    elif name == "nginx":
        cfg = render("nginx.conf.tmpl", rundir / "nginx.conf", port=port, backend1=b1, backend2=b2,
                     rundir=rundir)
        proc = procs.start("nginx", ["nginx", "-c", str(cfg), "-p", str(rundir)], cpus)
    else:
        raise ValueError(name)
    wait_for_port(port, proc)
    return proc, port


def machine() -> dict[str, object]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    loadavg = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "kernel": platform.release(), "loadavg_at_start": loadavg}


def versions() -> dict[str, str]:
    out = {}
    for name, flag in (("haproxy", "-v"), ("nginx", "-v"), ("wrk", "--version")):
        if shutil.which(name):
            p = subprocess.run([name, flag], capture_output=True, text=True)
            text = (p.stdout + p.stderr).strip()
            out[name] = text.splitlines()[0] if text else "?"
    return out


@contextlib.contextmanager
def backends(procs: Procs, cpus: str | None, upstream: str = "taxiway",
             rundir: Path | None = None) -> Iterator[tuple[int, int]]:
    """Two upstreams every target shares: `taxiway backend`, or (`--upstream`) one of the real
    servers of benchmarks/realistic/upstreams.py."""
    ports = (free_port(), free_port())
    if upstream != "taxiway":
        sys.path.insert(0, str(HERE.parent / "realistic"))
        import upstreams  # type: ignore[import-not-found]

        assert rundir is not None
        started = [upstreams.start(upstream, port, rundir / f"upstream{i}", cpus.split(",") if cpus else None)
                   for i, port in enumerate(ports, 1)]
        try:
            yield ports
        finally:
            for p in started:
                p.terminate()
                p.wait(10)
        return
    started = []
    for i, port in enumerate(ports, 1):
        p = procs.start(f"backend{i}", [sys.executable, "-m", "taxiway", "backend", "--port", str(port),
                                        "--name", f"b{i}"], cpus)
        started.append(p)
    for port, p in zip(ports, started, strict=True):
        wait_for_port(port, p)
    yield ports


def request_script(shape: str, path: Path) -> Path:
    """A wrk Lua script that sends request shape `shape` (benchmarks/realistic/shapes.py): its
    method, target, header fields and body (wrk adds Content-Length itself)."""
    sys.path.insert(0, str(HERE.parent / "realistic"))
    from shapes import SHAPES  # type: ignore[import-not-found]

    head, _, body = SHAPES[shape].partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ")

    def lua(text: str) -> str:
        return json.dumps(text)   # (a JSON string is a valid Lua string literal here: ASCII)

    out = [f"wrk.method = {lua(method)}", f"wrk.path = {lua(target)}"]
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        if name.lower() != "content-length":
            out.append(f"wrk.headers[{lua(name)}] = {lua(value)}")
    if body:
        out.append(f"wrk.body = {lua(body.decode('latin-1'))}")
    path.write_text("\n".join(out) + "\n")
    return path


def chart(result: dict[str, object], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peak = result["peak"]  # type: ignore[index]
    names = list(peak)  # type: ignore[arg-type]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(names, [peak[n]["rps"] for n in names], color=["#999" if n.startswith("direct") else "#36c"  # type: ignore[index]
                                                           for n in names])
    ax1.set_title("requests/s (higher is better)")
    ax1.tick_params(axis="x", rotation=20)
    half = result.get("half_load") or {}
    hn = list(half)  # type: ignore[arg-type]
    if hn:
        ax2.bar(hn, [half[n]["p99_ms"] for n in hn], color="#c63")  # type: ignore[index]
        ax2.set_title(f"p99 ms at {result['half_load_rps']:.0f} req/s (lower is better)")
    else:
        ax2.bar(names, [peak[n].get("p99_ms", 0) for n in names], color="#c63")  # type: ignore[index]
        ax2.set_title("p99 ms at peak (lower is better)")
    fig.suptitle(f"{result['machine']['cpu']} x{result['machine']['nproc']}, wrk "  # type: ignore[index]
                 f"-t{result['wrk']['threads']} -c{result['wrk']['connections']} "  # type: ignore[index]
                 f"-d{result['wrk']['duration_s']}s", fontsize=9)  # type: ignore[index]
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk before each measurement")
    p.add_argument("--threads", type=int, default=1, help="wrk -t")
    p.add_argument("--connections", type=int, default=50, help="wrk -c")
    p.add_argument("--path", default="/", help="request path (the backend answers 'hello from NAME')")
    p.add_argument("--request", default=None, metavar="SHAPE",
                   help="send a request shape of benchmarks/realistic/shapes.py (browser, api, static), "
                        "at peak and in the half-load runs")
    p.add_argument("--upstream", default="taxiway", metavar="NAME",
                   help="the two upstreams: taxiway (backend), nginx, gunicorn, uvicorn or node "
                        "(benchmarks/realistic/upstreams.py)")
    p.add_argument("--targets", default="direct,taxiway,haproxy,nginx",
                   help="comma list from: direct, taxiway, haproxy, nginx, bare (a featureless uvloop + "
                        "httptools forwarder: the floor for a Python proxy)")
    p.add_argument("--strategy", default="round-robin", help="taxiway strategy (peers use round robin)")
    p.add_argument("--taxiway-workers", type=int, default=1, metavar="N",
                   help="taxiway's balancer.workers (SO_REUSEPORT processes; the CPU quota covers them all)")
    p.add_argument("--no-half-load", action="store_true", help="skip the fixed-rate p99 runs")
    p.add_argument("--install", action="store_true", help="apt-get install wrk/haproxy/nginx if missing")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--proxy-cpus", default="0", help="taskset list for the proxy under test (default 0)")
    p.add_argument("--other-cpus", default=None, help="taskset list for wrk and backends (default: the rest)")
    p.add_argument("--proxy-cpu-quota", type=float, default=None, metavar="SHARE",
                   help="also cap each proxy at this share of one core (cgroup), e.g. 0.5")
    p.add_argument("--results", default=None,
                   help="results dir (default benchmarks/proxy_vs_peers/results/DATE)")
    args = p.parse_args(argv)

    missing = [t for t in ("wrk", "haproxy", "nginx") if not shutil.which(t)
               and (t == "wrk" or t in args.targets)]
    if missing and args.install and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=False)
        missing = [t for t in missing if not shutil.which(t)]
    if missing:
        print(f"missing: {', '.join(missing)}; install with: apt-get install -y nginx haproxy wrk",
              file=sys.stderr)
        return 2
    raise_fd_limit()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    ncpu = os.cpu_count() or 1
    pin = not args.no_pin and ncpu > 1 and shutil.which("taskset") is not None
    proxy_cpus = args.proxy_cpus if pin else None
    other_cpus = (args.other_cpus or f"1-{ncpu - 1}") if pin else None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    results_dir = Path(args.results) if args.results else HERE / "results" / stamp
    results_dir.mkdir(parents=True, exist_ok=True)
    rundir = Path(tempfile.mkdtemp(prefix="taxiway-bench-"))
    for d in ("nginx-body", "nginx-proxy", "nginx-fastcgi", "nginx-uwsgi", "nginx-scgi"):
        (rundir / d).mkdir()
    procs = Procs(rundir)
    result: dict[str, object] = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
        "versions": versions(), "pinning": {"proxy": proxy_cpus, "wrk_and_backends": other_cpus},
        "wrk": {"threads": args.threads, "connections": args.connections, "duration_s": args.duration,
                "path": args.path, "request": args.request or "minimal"},
        "upstream": args.upstream,
        "taxiway_strategy": args.strategy, "taxiway_workers": args.taxiway_workers,
        "taxiway_hot_path": hot_path_build(),
        "proxy_cpu_quota": args.proxy_cpu_quota, "peak": {}, "half_load": {},
    }
    peak: dict[str, dict[str, float]] = result["peak"]  # type: ignore[assignment]
    half: dict[str, dict[str, float]] = result["half_load"]  # type: ignore[assignment]
    ports: dict[str, int] = {}
    running: dict[str, subprocess.Popen[bytes]] = {}
    try:
        script = request_script(args.request, rundir / "request.lua") if args.request else None
        with backends(procs, other_cpus, args.upstream, rundir) as (b1, b2):
            if "direct" in targets:
                for i, port in enumerate((b1, b2), 1):
                    url = f"http://127.0.0.1:{port}{args.path}"
                    run_wrk(url, args, args.warmup, other_cpus, script)
                    peak[f"direct-b{i}"] = run_wrk(url, args, args.duration, other_cpus, script)
                    print(f"direct b{i}: {peak[f'direct-b{i}']['rps']:.0f} req/s", flush=True)
            for name in (t for t in targets if t != "direct"):
                proc, port = start_target(name, procs, rundir, (b1, b2), args, proxy_cpus)
                running[name], ports[name] = proc, port
                url = f"http://127.0.0.1:{port}{args.path}"
                with cpu_quota(proc.pid, args.proxy_cpu_quota):
                    run_wrk(url, args, args.warmup, other_cpus, script)
                    user0, sys0 = cpu_seconds(proc.pid)
                    peak[name] = run_wrk(url, args, args.duration, other_cpus, script)
                    user1, sys1 = cpu_seconds(proc.pid)
                cpu = (user1 - user0) + (sys1 - sys0)
                # Requests per CPU-second of the proxy: its ceiling on one core, meaningful even when
                # the load generator or the backends (not the proxy) limit the measured req/s.
                peak[name]["proxy_cpu_s"] = round(cpu, 2)
                n = peak[name]["requests"]
                if n:   # where a request's CPU goes: the proxy's own code vs the kernel (sockets)
                    peak[name]["user_us_per_req"] = round((user1 - user0) / n * 1e6, 1)
                    peak[name]["sys_us_per_req"] = round((sys1 - sys0) / n * 1e6, 1)
                peak[name]["rps_per_cpu_s"] = round(peak[name]["requests"] / cpu) if cpu > 0 else 0.0
                r = peak[name]
                print(f"{name}: {r['rps']:.0f} req/s, p50 {r.get('p50_ms', 0):.2f} ms, "
                      f"p99 {r.get('p99_ms', 0):.2f} ms, errors {r['errors']:.0f}, "
                      f"{r['rps_per_cpu_s']:.0f} req per proxy CPU-second (user "
                      f"{r.get('user_us_per_req', 0):.1f} + kernel {r.get('sys_us_per_req', 0):.1f} "
                      "µs per request)", flush=True)
                if args.no_half_load:
                    procs.stop(proc)
                    running.pop(name)
            proxies = [n for n in ports if n in peak]
            if not args.no_half_load and proxies:
                # Half of taxiway's own peak (or of the slowest proxy when taxiway was not run).
                base = peak["taxiway"]["rps"] if "taxiway" in peak else min(peak[n]["rps"] for n in proxies)
                rate = base / 2
                result["half_load_rps"] = rate
                result["rate_method"] = ("wrk + Lua delay() pacing per connection, calibrated; closed loop "
                                         "(wrk2 not available), does not correct coordinated omission")
                for name, port in ports.items():
                    half[name] = fixed_rate(f"http://127.0.0.1:{port}{args.path}", args, rate, other_cpus,
                                            rundir, name, script)
                    r = half[name]
                    print(f"{name} at {r['rps']:.0f} req/s (target {rate:.0f}): "
                          f"p50 {r.get('p50_ms', 0):.2f} ms, p99 {r.get('p99_ms', 0):.2f} ms", flush=True)
    finally:
        procs.stop_all()
    ratios: dict[str, float] = {}
    if "taxiway" in peak:
        for peer in ("haproxy", "nginx", "bare"):
            if peer in peak and peak[peer]["rps"]:
                ratios[f"rps_vs_{peer}"] = round(peak["taxiway"]["rps"] / peak[peer]["rps"], 3)
            if peer in peak and peak[peer].get("rps_per_cpu_s"):
                ratios[f"rps_per_cpu_s_vs_{peer}"] = round(
                    peak["taxiway"]["rps_per_cpu_s"] / peak[peer]["rps_per_cpu_s"], 3)
            if "taxiway" in half and peer in half:
                diff = half["taxiway"]["p99_ms"] - half[peer]["p99_ms"]
                ratios[f"half_load_p99_minus_{peer}_ms"] = round(diff, 3)
    result["ratios"] = ratios
    (results_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    try:
        chart(result, results_dir / "chart.png")
    except ImportError:
        print("matplotlib not installed: no chart (pip install matplotlib)", file=sys.stderr)
    print()
    print(f"{'target':<12} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'taxiway/x':>10} "
          f"{'req/CPU-s':>10}")
    for name, r in peak.items():
        ratio = f"{peak['taxiway']['rps'] / r['rps']:.2f}x" if "taxiway" in peak and r["rps"] else "-"
        per_cpu = f"{r['rps_per_cpu_s']:.0f}" if "rps_per_cpu_s" in r else "-"
        print(f"{name:<12} {r['rps']:>10.0f} {r.get('p50_ms', 0):>8.2f} {r.get('p99_ms', 0):>8.2f} "
              f"{r['errors']:>7.0f} {ratio:>10} {per_cpu:>10}")
    if half:
        print(f"\np99 at {result['half_load_rps']:.0f} req/s (half of taxiway's peak; "
              f"{result['rate_method']}):")
        for name, r in half.items():
            print(f"{name:<12} {r['rps']:>10.0f} {r.get('p50_ms', 0):>8.2f} {r.get('p99_ms', 0):>8.2f}")
    print(f"\ntaxiway hot path: {result['taxiway_hot_path']}; proxy CPU quota: "
          f"{args.proxy_cpu_quota or 'none'}\nratios: {json.dumps(ratios)}\nresults: {results_dir}")
    shutil.rmtree(rundir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
