"""Showing results: the live progress line, the summary tables, --json, and the --report HTML.

The summary always shows both latency columns: "latency" (from the intended send time, corrected
for coordinated omission) and "service time" (from the actual send). When they differ a lot the
target fell behind the schedule: the corrected column is what users experienced.

matplotlib is imported only for --report (an optional dependency, `pip install taxiway[report]`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from taxiway.bench.results import PERCENTILES, RunResult, Second
from taxiway.errors import UsageError


def progress_text(sec: Second, total_requests: int, total_errors: int, label: str = "") -> Text:
    """One live line: second, current rate, errors, p50/p99 of the last second."""
    err_style = "bold red" if sec.errors else "green"
    t = Text()
    if label:
        t.append(f"{label}  ", style="bold")
    t.append(f"{sec.t:>4}s  ")
    t.append(f"{sec.completed:>8,} req/s  ", style="cyan")
    t.append(f"errors {sec.errors:,}/s ({total_errors:,} total)  ", style=err_style)
    t.append(f"p50 {sec.p50_ms:.2f} ms  p99 {sec.p99_ms:.2f} ms  ")
    t.append(f"users {sec.users}  total {total_requests:,}", style="dim")
    return t


def summary_table(r: RunResult, title: str = "") -> Table:
    table = Table(title=title or f"{r.target} ({r.mode} loop)", show_header=True)
    table.add_column("", style="bold")
    table.add_column("latency (ms)", justify="right")
    table.add_column("service time (ms)", justify="right")
    for p in PERCENTILES:
        table.add_row(f"p{p:g}", f"{r.percentile_ms(p):.3f}", f"{r.percentile_ms(p, False):.3f}")
    table.add_row("max", f"{r.max_ms():.3f}", f"{r.max_ms(False):.3f}")
    return table


def totals_table(r: RunResult) -> Table:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("requests", f"{r.completed:,} in {r.elapsed_s:.1f} s = {r.rate():,.1f} req/s")
    errors = r.error_breakdown()
    detail = ", ".join(f"{k} {v:,}" for k, v in errors.items()) or "none"
    table.add_row("errors", f"{r.error_count:,} ({r.error_rate() * 100:.2f}%): {detail}")
    codes = ", ".join(f"{code}: {n:,}" for code, n in sorted(r.statuses.items())) or "-"
    table.add_row("status codes", codes)
    if r.served_by:
        total = sum(r.served_by.values())
        share = ", ".join(f"{k} {n:,} ({n / total * 100:.1f}%)" for k, n in sorted(r.served_by.items()))
        table.add_row("served by", share)
    if r.unsent:
        table.add_row("not finished",
                      f"{r.unsent:,} due but never sent, {r.in_flight:,} unanswered at the end")
    if r.interrupted:
        table.add_row("interrupted", "stopped by Ctrl-C: figures cover what ran")
    return table


def print_summary(console: Console, r: RunResult, title: str = "") -> None:
    console.print(summary_table(r, title))
    console.print(totals_table(r))
    if r.mode == "open":
        diff = r.percentile_ms(99) - r.percentile_ms(99, False)
        if diff > max(10.0, r.percentile_ms(99, False)):
            console.print(f"[yellow]p99 latency exceeds p99 service time by {diff:.1f} ms: requests waited "
                          "for their turn (the target fell behind the rate); latency is what users saw.")


def compare_table(results: list[RunResult]) -> Table:
    table = Table(title="taxiway bench --compare")
    for col in ("target", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors"):
        table.add_column(col, justify="left" if col == "target" else "right")
    for r in results:
        table.add_row(r.target, f"{r.rate():,.1f}", f"{r.percentile_ms(50):.2f}",
                      f"{r.percentile_ms(90):.2f}", f"{r.percentile_ms(99):.2f}",
                      f"{r.percentile_ms(99.9):.2f}", f"{r.max_ms():.2f}",
                      f"{r.error_count:,} ({r.error_rate() * 100:.2f}%)")
    return table


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    try:
        Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--json {path}: cannot write ({exc.strerror or exc})") from None


def write_report(directory: str | Path, results: list[RunResult],
                 capacity: dict[str, Any] | None = None) -> Path:
    """HTML report with PNG plots: percentile spectrum, throughput and latency over time, server share.

    Returns the path of index.html. Raises UsageError when matplotlib is missing or DIR unwritable.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--report needs matplotlib: pip install 'taxiway[report]'") from None
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--report {directory}: cannot create ({exc.strerror or exc})") from None
    images: list[tuple[str, str]] = []

    fig, ax = plt.subplots(figsize=(8, 4.5))
    pcts = [0, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 99.999]
    xs = [1 / (1 - p / 100) for p in pcts]
    for r in results:
        label = r.target if len(results) > 1 else "latency"
        ax.plot(xs, [r.percentile_ms(p) for p in pcts], marker="o", label=label)
        if len(results) == 1:
            ax.plot(xs, [r.percentile_ms(p, False) for p in pcts], marker=".", ls="--", label="service time")
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"p{p:g}" for p in pcts], rotation=45)
    ax.set_ylabel("ms")
    ax.set_title("Latency by percentile")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency_percentiles.png", dpi=100)
    plt.close(fig)
    images.append(("latency_percentiles.png", "Latency by percentile (HDR histogram)"))

    fig, ax1 = plt.subplots(figsize=(8, 4.5))
    ax2 = ax1.twinx()
    for r in results:
        ts = [s.t for s in r.timeline]
        ax1.plot(ts, [s.completed for s in r.timeline], label=f"req/s {r.target if len(results) > 1 else ''}")
        ax2.plot(ts, [s.p99_ms for s in r.timeline], ls="--", label="p99 ms")
    ax1.set_xlabel("seconds")
    ax1.set_ylabel("requests/s")
    ax2.set_ylabel("p99 latency (ms)")
    ax1.set_title("Throughput (solid) and p99 latency (dashed) over time")
    fig.tight_layout()
    fig.savefig(out / "timeline.png", dpi=100)
    plt.close(fig)
    images.append(("timeline.png", "Throughput and latency over time"))

    merged: dict[str, int] = {}
    for r in results:
        for k, n in r.served_by.items():
            merged[k] = merged.get(k, 0) + n
    if merged:
        fig, ax = plt.subplots(figsize=(8, 4))
        names = sorted(merged)
        ax.bar(names, [merged[k] for k in names])
        ax.set_ylabel("responses")
        ax.set_title("Share of responses per server")
        fig.tight_layout()
        fig.savefig(out / "served_by.png", dpi=100)
        plt.close(fig)
        images.append(("served_by.png", "Per-server share"))

    if capacity and capacity.get("steps"):
        fig, ax = plt.subplots(figsize=(8, 4))
        steps = capacity["steps"]
        colors = ["tab:green" if s["meets_slo"] else "tab:red" for s in steps]
        ax.scatter([s["level"] for s in steps], [s["latency_ms"] for s in steps], c=colors)
        ax.axhline(capacity["slo"]["limit_ms"], color="gray", ls="--")
        ax.set_xlabel(capacity["unit"])
        ax.set_ylabel(f"p{capacity['slo']['percentile']:g} ms")
        ax.set_title("Capacity search (green: met the SLO)")
        fig.tight_layout()
        fig.savefig(out / "capacity.png", dpi=100)
        plt.close(fig)
        images.append(("capacity.png", "Capacity search steps"))

    rows = "".join(
        f"<tr><td>{html.escape(r.target)}</td><td>{r.completed:,}</td><td>{r.rate():,.1f}</td>"
        + "".join(f"<td>{r.percentile_ms(p):.3f}</td>" for p in PERCENTILES)
        + f"<td>{r.max_ms():.3f}</td><td>{r.error_count:,}</td></tr>" for r in results)
    heads = "".join(f"<th>p{p:g} ms</th>" for p in PERCENTILES)
    cap = ""
    if capacity:
        cap = (f"<h2>Capacity</h2><p>Largest {html.escape(capacity['unit'])} meeting "
               f"{html.escape(capacity['slo']['text'])}: <b>{capacity['capacity']}</b></p>")
    figs = "".join(f'<figure><img src="{f}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}</figcaption>'
                   "</figure>" for f, c in images)
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>taxiway bench report</title>"
            "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
            "table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
            "<h1>taxiway bench report</h1>"
            f"<table><tr><th>target</th><th>requests</th><th>req/s</th>{heads}"
            "<th>max ms</th><th>errors</th></tr>"
            f"{rows}</table><p>Latency is measured from each request's intended send time (coordinated "
            f"omission corrected).</p>{cap}{figs}</body></html>")
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
