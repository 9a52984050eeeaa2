"""The compact live view of `taxiway up` (rich), and its plain-text twin for logs and pipes.

Driver module: reads the balancer's pool and the supervisor's status on the event loop; the
numbers shown are the same ones /status serves. Requests/s per server is the difference of the
`Server.requests` counters between two refreshes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich import get_console
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from taxiway.autoscale.supervisor import Supervisor
from taxiway.balancing.model import Server

REFRESH_S = 0.5


class RateMeter:
    """Requests/s per server name from successive counter readings."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._at: float | None = None
        self.rates: dict[str, float] = {}

    def update(self, servers: list[Server], now: float) -> None:
        if self._at is not None and now > self._at:
            dt = now - self._at
            self.rates = {s.name: max(0, s.requests - self._seen.get(s.name, s.requests)) / dt
                          for s in servers}
        self._seen = {s.name: s.requests for s in servers}
        self._at = now


def last_scaling(sup: Supervisor) -> str:
    for ev in reversed(sup.events):
        if ev["kind"] in ("scale", "hold", "crashed"):
            ago = time.time() - ev["at"]
            return f"{ev['kind']} {ago:.0f}s ago: {ev['detail']}"
    return "none yet"


def shown_state(server: Server, process_state: str | None, now: float) -> str:
    """The state the view shows: the balancer's (the one /status reports), so a process that is
    running but failing its health checks reads `down`, not `ready`. Only the process states the
    balancer has no word for (`stopping`, `exited`) come from the supervisor."""
    if process_state in ("stopping", "exited"):
        return process_state
    return server.state(now).value


def render(servers: list[Server], sup: Supervisor, rates: dict[str, float], where: str) -> Group:
    st: dict[str, Any] = sup.status()
    states = {row["name"]: row["state"] for row in st["servers"]}
    now = time.monotonic()
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col, justify in (("server", "left"), ("state", "left"), ("in-flight", "right"),
                         ("req/s", "right"), ("requests", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    styles = {"up": "green", "starting": "yellow", "draining": "magenta", "stopping": "magenta"}
    for s in servers:
        state = shown_state(s, states.get(s.name), now)
        table.add_row(s.name + (" (static)" if s.static else ""), Text(state, style=styles.get(state, "red")),
                      str(s.inflight), f"{rates.get(s.name, 0.0):.0f}", str(s.requests))
    total_rps = sum(rates.values())
    head = Text.assemble(
        ("taxiway up ", "bold"), (where, "cyan"),
        f"   servers {st['ready']} ready / {st['desired']} desired (min {st['min']}, max {st['max']})",
        f"   in-flight {sum(s.inflight for s in servers)}   {total_rps:.0f} req/s",
        ("   PANIC" if st["panicking"] else "", "bold red"),
    )
    return Group(head, table, Text("last scaling: " + last_scaling(sup), style="dim"),
                 Text("Ctrl-C stops everything", style="dim"))


async def run_live(pool_servers: Any, sup: Supervisor, where: str, console: Console | None = None) -> None:
    """Refresh the view until cancelled. `pool_servers()` returns the balancer's servers."""
    meter = RateMeter()
    console = console or get_console()   # the console RichHandler logs to: lines appear above
    with Live(console=console, refresh_per_second=4, transient=False, redirect_stderr=True) as live:
        while True:
            servers = list(pool_servers())
            meter.update(servers, time.monotonic())
            live.update(render(servers, sup, meter.rates, where))
            await asyncio.sleep(REFRESH_S)


def summary_line(servers: list[Server], sup: Supervisor, rates: dict[str, float]) -> str:
    """One plain line for non-TTY output (written when the picture changes)."""
    st = sup.status()
    return (f"servers {st['ready']} ready / {st['desired']} desired; in-flight "
            f"{sum(s.inflight for s in servers)}; {sum(rates.values()):.0f} req/s")
