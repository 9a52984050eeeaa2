"""What edge security costs: requests/s through `taxiway lb` with and without it, in one run.

    .venv/bin/python benchmarks/ratelimit/run.py --duration 10

Scenarios, each a fresh `taxiway lb` in front of the same `taxiway backend`, measured with
`wrk -t1 -c32 --latency` over keep-alive connections:
1. http, no limit             the baseline
2. http, in-process limit     one rule (per address) on the memory store
3. http, Redis limit          the same rule on the Redis store (one EVALSHA per request)
4. http, API key + limit      a key-protected route (SHA-256 + constant-time compare) + the limit
5. https, no limit            TLS 1.3 with keep-alive (handshakes amortised)
Scenarios run in interleaved rounds (the median is reported). The limit is set far above what
wrk can send (10 million/s), so every request is checked and served: the numbers are the cost of
checking, not of refusing.

Pinning: when the machine has more than one core, the balancer gets core 0 and wrk, the backend
and Redis share the rest, so the balancer is the bottleneck being measured. On a 2-core machine
shared with other work, read ratios between rows, not absolute numbers.

Redis: 127.0.0.1:6379 when it answers, else a private `redis-server` (tests/services.py).
Prints a Markdown table (paste into BENCHMARKS.md "## Security costs") and writes result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.conftest import free_port, taxiway_env, wait_for_port  # noqa: E402
from tests.services import redis_url  # noqa: E402

SCENARIOS = ("none", "memory", "redis", "apikey", "https")
RULE = '[[ratelimit.rules]]\nname = "per-ip"\nrate = "10000000/s"\nburst = 1000\n'


def _pin(core: str | None) -> list[str]:
    if core is None or (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", core]


def _others() -> str | None:
    n = os.cpu_count() or 1
    return f"1-{n - 1}" if n > 1 else None


def _config(work: Path, backend: int, port: int, scenario: str, redis: str | None) -> Path:
    lines = ['[admin]\nlisten = "127.0.0.1:0"', "[health]\nenabled = false", "[access_log]\nenabled = false"]
    if scenario == "https":
        lines.append(f'[listen]\nhttp = "127.0.0.1:{free_port()}"\nhttps = "127.0.0.1:{port}"')
        tls = work / "tls"
        lines.append(f'[listen.tls]\ncert = "{tls / "cert.pem"}"\nkey = "{tls / "key.pem"}"\n'
                     'min_version = "1.3"\nhsts_max_age = 0')
    else:
        lines.append(f'[listen]\nhttp = "127.0.0.1:{port}"')
    if scenario == "redis":
        lines.append(f'[ratelimit]\nstore = "redis"\nredis_url = "{redis}"\n'
                     f'key_prefix = "taxiway-bench:{uuid.uuid4().hex[:8]}:"')
    if scenario in ("memory", "redis", "apikey"):
        lines.append(RULE)
    if scenario == "apikey":
        lines.append(f'[apikeys]\nfile = "{work / "keys.json"}"\n\n[[apikeys.routes]]\npath_prefix = "/"')
    lines.append(f'[[servers]]\nurl = "http://127.0.0.1:{backend}"')
    path = work / f"{scenario}.toml"
    path.write_text("\n\n".join(lines) + "\n")
    return path


def _wrk(url: str, duration_s: float, connections: int, headers: list[str]) -> dict[str, float]:
    args = [*_pin(_others()), "wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--latency", url]
    for h in headers:
        args[-1:-1] = ["-H", h]
    out = subprocess.run(args, capture_output=True, text=True, timeout=duration_s + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    return {"rps": rps, "p50_ms": pct("50"), "p99_ms": pct("99"),
            "non_2xx": float(non2xx.group(1)) if non2xx else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per scenario (default 10)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    ap.add_argument("--out", default=str(HERE / "results" / time.strftime("%Y-%m-%d")),
                    help="results directory (default benchmarks/ratelimit/results/<date>)")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    redis = redis_url()
    env = taxiway_env()
    procs: list[subprocess.Popen[bytes]] = []
    rounds: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="taxiway-bench-sec-") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-m", "taxiway", "cert", "dev", "--dir", str(work / "tls")],
                       env=env, check=True, capture_output=True)
        key = subprocess.run([sys.executable, "-m", "taxiway", "keys", "create", "bench", "--file",
                              str(work / "keys.json")], env=env, check=True, capture_output=True,
                             text=True).stdout.strip()
        try:
            backend = free_port()
            procs.append(subprocess.Popen([*_pin(_others()), sys.executable, "-m", "taxiway", "backend",
                                           "--port", str(backend), "--name", "b1"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_for_port(backend, proc=procs[-1])
            # All balancers up at once (idle ones cost nothing), then the scenarios are measured
            # in interleaved rounds, so a burst of other work on the machine hits all of them alike.
            urls: dict[str, tuple[str, list[str]]] = {}
            for scenario in SCENARIOS:
                port = free_port()
                cfg = _config(work, backend, port, scenario, redis)
                lb = subprocess.Popen([*_pin("0"), sys.executable, "-m", "taxiway", "lb", "--config",
                                       str(cfg), "--log-level", "warning"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                procs.append(lb)
                wait_for_port(port, proc=lb)
                scheme = "https" if scenario == "https" else "http"
                urls[scenario] = (f"{scheme}://127.0.0.1:{port}/",
                                  [f"X-API-Key: {key}"] if scenario == "apikey" else [])
                _wrk(urls[scenario][0], 2, args.connections, urls[scenario][1])   # warm-up
            for _ in range(args.rounds):
                for scenario in SCENARIOS:
                    url, headers = urls[scenario]
                    result = _wrk(url, args.duration, args.connections, headers)
                    rounds.setdefault(scenario, []).append(result)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                    p.wait(timeout=30)
    results = {name: sorted(rs, key=lambda r: r["rps"])[len(rs) // 2] for name, rs in rounds.items()}
    labels = {"none": "http, no limit", "memory": "http, in-process limit", "redis": "http, Redis limit",
              "apikey": "http, API key + in-process limit", "https": "https (TLS 1.3, keep-alive), no limit"}
    base = results["none"]["rps"]
    print(f"\n{platform.node()}: {os.cpu_count()} cores, wrk -t1 -c{args.connections} -d{args.duration:g}s, "
          f"median of {args.rounds} interleaved rounds, Python {platform.python_version()}\n")
    print("| scenario | requests/s | vs no limit | p50 ms | p99 ms | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {labels[name]} | {r['rps']:,.0f} | {r['rps'] / base:.0%} | {r['p50_ms']:.2f} | "
              f"{r['p99_ms']:.2f} | {r['non_2xx']:.0f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps({"cores": os.cpu_count(), "duration_s": args.duration,
                                                 "connections": args.connections, "rounds": rounds},
                                                indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
