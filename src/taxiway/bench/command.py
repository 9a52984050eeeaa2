"""`taxiway bench`: the verb. Parses options, builds load specs, runs them, shows the results.

Three ways to run: one target (default), `--compare` (the same load against several targets, one
table), and `--find-capacity` (a search for the largest users/rate that meets an SLO, driven by the
pure `capacity.CapacitySearch`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from taxiway.bench import scenario as scn
from taxiway.bench.capacity import CapacitySearch, Slo, StepResult, parse_slo
from taxiway.bench.load import LoadSpec
from taxiway.bench.report import (
    compare_table,
    print_summary,
    progress_text,
    write_json,
    write_report,
)
from taxiway.bench.results import RunResult, Second
from taxiway.bench.schedule import parse_duration, parse_stages
from taxiway.bench.target import check_reachable, parse_target
from taxiway.bench.workers import run_spec
from taxiway.errors import UsageError

HELP = """Measure how many users a deployment can serve: closed-loop users (-c) or a constant arrival
rate (-R) with coordinated-omission-corrected HDR latency percentiles, scenarios, ramp stages,
--find-capacity, --compare, --json and an HTML --report."""

EXIT_INTERRUPTED = 130


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("urls", nargs="*", metavar="URL", help="target URL(s); several need --compare")
    load = p.add_argument_group("load")
    load.add_argument("-c", "--users", type=int, default=None,
                      help="closed loop: virtual users (default 10); with -R: connections (default 50)")
    load.add_argument("-R", "--rate", type=float, default=None, help="open loop: requests per second")
    load.add_argument("-d", "--duration", default=None,
                      help="how long to measure (default 10s, or until -n requests when -n is given)")
    load.add_argument("-n", "--requests", type=int, default=None, help="stop after this many requests")
    load.add_argument("--warmup", default="0s", help="run this long first without measuring")
    load.add_argument("--stages", default=None,
                      help='ramp, e.g. "10s:50,30s:200,10s:0" (users, or req/s with -R)')
    load.add_argument("--timeout", default="10s", help="a request without an answer by then is an error")
    load.add_argument("--processes", type=int, default=1, help="spread the load over N processes (cores)")
    load.add_argument("--seed", type=int, default=None, help="seed for request choice and think time")
    req = p.add_argument_group("requests")
    req.add_argument("-s", "--scenario", default=None, help="TOML scenario file (see docs/bench.md)")
    req.add_argument("-m", "--method", default="GET")
    req.add_argument("-H", "--header", action="append", default=[], help='"Name: value", repeatable')
    req.add_argument("--body", default="", help="request body, or @FILE")
    req.add_argument("--served-by-header", default="X-Served-By",
                     help="count responses per value of this header ('' to disable)")
    req.add_argument("--insecure", action="store_true", help="https: do not verify the certificate")
    cap = p.add_argument_group("capacity search")
    cap.add_argument("--find-capacity", action="store_true",
                     help="search for the largest users (or rate with -R) that meets --slo")
    cap.add_argument("--slo", default="p99=200ms", help="latency objective (default p99=200ms)")
    cap.add_argument("--max-errors", default="0.1%", help="error rate objective (default 0.1%%)")
    cap.add_argument("--start", type=int, default=None, help="first level (default -c/-R or 10)")
    cap.add_argument("--max", type=int, default=100_000, help="highest level to try")
    cap.add_argument("--repeats", type=int, default=2, help="a level passes after this many passing steps")
    cap.add_argument("--precision", type=float, default=0.05, help="stop bisecting within this fraction")
    out = p.add_argument_group("output")
    out.add_argument("--compare", action="store_true", help="run against every URL, print one table")
    out.add_argument("--json", default=None, metavar="FILE", help="write every figure as JSON")
    out.add_argument("--report", default=None, metavar="DIR", help="write an HTML report with plots")
    out.add_argument("-q", "--quiet", action="store_true", help="no live progress line")


def _positive(value: int | float | None, name: str) -> None:
    if value is not None and value <= 0:
        raise UsageError(f"{name} must be > 0 (got {value})")


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")   # RFC 9110 token: a valid field name


def _headers(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"-H: expected 'Name: value' (got {item!r})")
        if not _TOKEN.match(name.strip()) or any(c in value for c in "\r\n\0"):
            raise UsageError(f"-H: expected a header name of letters, digits and -!#$%&'*+.^_`|~ "
                             f"and a value on one line (got {item!r})")
        out[name.strip()] = value.strip()
    return out


def _body(text: str) -> bytes:
    if text.startswith("@"):
        try:
            return Path(text[1:]).read_bytes()
        except OSError as exc:
            raise UsageError(f"--body {text}: cannot read ({exc.strerror or exc})") from None
    return text.encode()


def build_specs(args: argparse.Namespace) -> list[LoadSpec]:
    """Validate every option and return one spec per target. Raises UsageError on bad input."""
    for value, name in ((args.users, "--users"), (args.rate, "--rate"), (args.requests, "--requests"),
                        (args.processes, "--processes")):
        _positive(value, name)
    urls = list(args.urls)
    if not urls and args.scenario:
        base = scn.base_url_of(args.scenario)
        if base:
            urls = [base]
    if not urls:
        raise UsageError("give a target URL (or a scenario file with base_url)")
    if len(urls) > 1 and not args.compare:
        raise UsageError("several URLs given: add --compare to run the same load against each")
    if args.compare and args.find_capacity:
        raise UsageError("--compare and --find-capacity cannot be combined; search one target at a time")
    targets = [parse_target(u) for u in urls]
    duration: float | None = None
    if args.duration is not None:
        duration = parse_duration(args.duration, "--duration")
    elif not args.requests:
        duration = 10.0
    warmup = parse_duration(args.warmup, "--warmup")
    timeout = parse_duration(args.timeout, "--timeout")
    _positive(duration, "--duration")
    _positive(timeout, "--timeout")
    stages = parse_stages(args.stages) if args.stages else None
    if stages is not None and warmup > 0:
        raise UsageError("--warmup cannot be combined with --stages (make the first stage the warm-up)")
    if stages is not None and args.find_capacity:
        raise UsageError("--find-capacity chooses the load itself; drop --stages")
    method = args.method.upper()
    if method not in scn.METHODS:
        allowed = ", ".join(sorted(scn.METHODS))
        raise UsageError(f"-m/--method: expected one of {allowed} (got {args.method!r})")
    headers = _headers(args.header)
    body = _body(args.body)
    users = args.users if args.users is not None else (50 if args.rate is not None else 10)
    specs = []
    for t in targets:
        if args.scenario:
            sc = scn.load_scenario(args.scenario, t.host_header)
        else:
            sc = scn.single(method, t.path, t.host_header, headers, body)
        specs.append(LoadSpec(
            target=t, scenario=sc, users=users, rate=args.rate, stages=stages,
            duration_s=duration,
            max_requests=args.requests, warmup_s=warmup, timeout_s=timeout,
            served_by_header=args.served_by_header, insecure=args.insecure, seed=args.seed))
    return specs


class _Progress:
    """The live line: a rich Live on stderr when it is a terminal, silent otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.console = Console(stderr=True)
        self.enabled = not quiet and self.console.is_terminal
        self.live: Live | None = None
        self.total_requests = 0
        self.total_errors = 0
        self.label = ""

    def __enter__(self) -> _Progress:
        if self.enabled:
            self.live = Live(console=self.console, refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def on_second(self, sec: Second) -> None:
        self.total_requests += sec.completed
        self.total_errors += sec.errors
        if self.live is not None:
            self.live.update(progress_text(sec, self.total_requests, self.total_errors, self.label))


def _run(spec: LoadSpec, args: argparse.Namespace, progress: _Progress) -> RunResult:
    progress.total_requests = progress.total_errors = 0
    return run_spec(spec, args.processes, progress.on_second)


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail before the run, not after it: a result that cannot be written is a run lost."""
    if args.json:
        parent = Path(args.json).resolve().parent
        if Path(args.json).is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
            raise UsageError(f"--json {args.json}: expected a writable file path in an existing directory")
    if args.report:
        report = Path(args.report).resolve()
        probe = report if report.exists() else report.parent
        if (report.exists() and not report.is_dir()) or not probe.is_dir() or not os.access(probe, os.W_OK):
            raise UsageError(f"--report {args.report}: expected a writable directory (or one to create)")


def run(args: argparse.Namespace) -> int:
    specs = build_specs(args)
    _check_outputs(args)
    slo = parse_slo(args.slo, args.max_errors) if args.find_capacity else None
    for spec in specs:
        check_reachable(spec.target, timeout_s=min(spec.timeout_s, 5.0))
    out = Console(width=None if sys.stdout.isatty() else 120)
    with _Progress(args.quiet) as progress:
        if slo is not None:
            return _find_capacity(specs[0], slo, args, progress, out)
        results: list[RunResult] = []
        try:
            for spec in specs:
                progress.label = spec.target.url if len(specs) > 1 else ""
                results.append(_run(spec, args, progress))
                if results[-1].interrupted:
                    break
        except KeyboardInterrupt:  # between two --compare runs: keep what finished
            if not results:
                raise
            results[-1].interrupted = True
    for r in results:
        print_summary(out, r)
    if len(specs) > 1:
        out.print(compare_table(results))
    if args.json:
        data: dict[str, Any] = results[0].summary() if len(specs) == 1 else {
            "compare": [r.summary() for r in results]}
        write_json(args.json, data)
    if args.report:
        index = write_report(args.report, results)
        out.print(f"report: {index}")
    return EXIT_INTERRUPTED if any(r.interrupted for r in results) else 0


def _find_capacity(spec: LoadSpec, slo: Slo, args: argparse.Namespace, progress: _Progress,
                   out: Console) -> int:
    by_rate = spec.rate is not None
    unit = "requests/s" if by_rate else "users"
    start = args.start or int(spec.rate if by_rate else (args.users or 10))  # type: ignore[arg-type]
    search = CapacitySearch(slo, start=start, maximum=args.max, repeats=args.repeats,
                            precision=args.precision)
    steps: list[dict[str, Any]] = []
    best: RunResult | None = None
    interrupted = False
    per_step = f"{spec.duration_s:g} s steps" if spec.duration_s else f"{spec.max_requests} requests per step"
    out.print(f"searching for the largest {unit} meeting {slo.describe()} "
              f"({per_step}, {args.repeats} passing steps per level)")
    while (level := search.next_level()) is not None:
        step_spec = dataclasses.replace(spec, rate=float(level) if by_rate else None,
                                        users=spec.users if by_rate else level)
        progress.label = f"{unit}={level}"
        try:
            r = _run(step_spec, args, progress)
        except KeyboardInterrupt:  # between two steps
            interrupted = True
            break
        if r.interrupted:
            interrupted = True
            break
        step = StepResult(level, r.percentile_ms(slo.percentile), r.error_rate())
        ok = step.meets(slo)
        steps.append({"level": level, "latency_ms": step.latency_ms, "error_rate": step.error_rate,
                      "requests_per_s": r.rate(), "meets_slo": ok})
        out.print(f"  {unit} {level:>7}: {r.rate():>10,.1f} req/s  p{slo.percentile:g} "
                  f"{step.latency_ms:>9.2f} ms  errors {step.error_rate * 100:6.2f}%  "
                  f"{'[green]meets SLO' if ok else '[red]misses SLO'}")
        if ok and (best is None or level >= search.lo):
            best = r
        search.process_result(step)
    answer = search.answer
    capped = " (the --max limit: it may serve more)" if search.is_capped() else ""
    prefix = "interrupted; so far the" if interrupted else "capacity: the"
    out.print(f"[bold]{prefix} largest {unit} meeting {slo.describe()} is {answer}{capped}")
    capacity = {"capacity": answer, "unit": unit, "capped": search.is_capped(), "interrupted": interrupted,
                "slo": {"percentile": slo.percentile, "limit_ms": slo.limit_ms,
                        "max_error_rate": slo.max_error_rate, "text": slo.describe()},
                "steps": steps, "result_at_capacity": best.summary() if best else None}
    if args.json:
        write_json(args.json, capacity)
    if args.report:
        out.print(f"report: {write_report(args.report, [best] if best else [], capacity)}")
    return EXIT_INTERRUPTED if interrupted else 0
