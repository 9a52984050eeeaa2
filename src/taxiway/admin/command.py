"""`taxiway status`: print a running balancer's state, read from its admin API (`GET /status`).

`render(status)` is also what `taxiway up` can show in its live view (it takes the dict that
`taxiway.admin.status.build_status` returns, so it works in-process and over HTTP alike).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from taxiway.config import load_config, split_hostport
from taxiway.errors import ConfigError, UsageError

DEFAULT_CONFIG = "taxiway.toml"
DEFAULT_ADMIN = ("127.0.0.1", 9901)
HELP = "Print a running balancer's servers, health, load and counters (from its admin API)."

_STATE_STYLE = {"up": "green", "down": "red", "ejected": "yellow", "draining": "cyan", "starting": "blue"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin", default=None, metavar="HOST:PORT",
                   help="admin listener to ask (default: admin.listen from --config, or from ./taxiway.toml "
                        "when it exists, else 127.0.0.1:9901)")
    p.add_argument("--config", "-c", default=None, metavar="FILE",
                   help="read admin.listen from this config file (the one `taxiway lb`/`up` runs with)")
    p.add_argument("--json", action="store_true", help="print the raw /status JSON")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")


def fetch_status(host: str, port: int, timeout_s: float = 3.0) -> dict[str, Any]:
    """GET /status. Raises UsageError (one line) when nothing answers or the answer is not ours."""
    if not timeout_s > 0:
        raise UsageError(f"--timeout: expected a positive number of seconds (got {timeout_s})")
    where = f"{host}:{port}"
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.connect()
        # The admin API answers only to an IP literal or localhost in Host (its DNS-rebinding
        # guard): name the address we reached, so `--admin lb1.internal:9901` works too.
        peer = str(conn.sock.getpeername()[0]).partition("%")[0]
        authority = f"[{peer}]:{port}" if ":" in peer else f"{peer}:{port}"
        conn.request("GET", "/status", headers={"Host": authority, "User-Agent": "taxiway-status"})
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise UsageError(f"no taxiway admin API answers at {where} ({reason}); is `taxiway lb` running "
                         "with [admin] listen set to that address?") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise UsageError(f"{where} answered GET /status with {resp.status}: is it a taxiway admin listener?")
    try:
        data = json.loads(body)
    except ValueError:
        raise UsageError(f"{where} answered GET /status with something that is not JSON") from None
    if not isinstance(data, dict) or "servers" not in data:
        raise UsageError(f"{where} answered GET /status without a server list: not a taxiway admin API")
    return data


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _fmt_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def render(status: dict[str, Any]) -> Group:
    """A rich renderable of a /status dict: a summary line, the server table, counters, events."""
    t = status.get("totals", {})
    summary = Text.assemble(
        ("taxiway ", "bold"), status.get("version", "?"),
        "  up ", "?" if status.get("uptime_s") is None else f"{status['uptime_s']:.0f}s",
        "  strategy ", (str(status.get("strategy", "?")), "bold"),
        "  servers ", f"{t.get('available', 0)}/{t.get('servers', 0)} available",
        "  connections ", str(status.get("connections", 0)),
        "  in flight ", str(t.get("inflight", 0)), "  requests ", str(t.get("requests", 0)),
    )
    table = Table(show_edge=False, pad_edge=False)
    for col, justify in (("server", "left"), ("address", "left"), ("state", "left"), ("weight", "right"),
                         ("in flight", "right"), ("requests", "right"), ("failures", "right"),
                         ("ewma ms", "right"), ("p50 ms", "right"), ("p95 ms", "right"),
                         ("sticky", "right"), ("ejections", "right"), ("in/out", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for s in status.get("servers", []):
        state = s.get("state", "?")
        table.add_row(
            s.get("name", "?"), s.get("address", "?"), Text(state, style=_STATE_STYLE.get(state, "")),
            str(s.get("weight", "")), str(s.get("inflight", 0)), str(s.get("requests", 0)),
            str(s.get("failures", 0)), _fmt_ms(s.get("latency_ewma_ms")), _fmt_ms(s.get("latency_p50_ms")),
            _fmt_ms(s.get("latency_p95_ms")), str(s.get("sticky_clients", 0)), str(s.get("ejections", 0)),
            f"{_fmt_bytes(s.get('bytes_in', 0))}/{_fmt_bytes(s.get('bytes_out', 0))}",
        )
    parts: list[Any] = [summary, table]
    counters = status.get("counters") or {}
    if counters:
        parts.append(Text("counters: " + "  ".join(f"{k}={v}" for k, v in counters.items()), style="dim"))
    events = status.get("events") or []
    if events:
        parts.append(Text("recent events:", style="bold"))
        for ev in events[-10:]:
            at = ev.get("at")
            when = time.strftime("%H:%M:%S", time.localtime(at)) if isinstance(at, int | float) else "?"
            server = f" {ev['server']}" if ev.get("server") else ""
            parts.append(Text(f"  {when} {ev.get('kind')}{server}: {ev.get('detail', '')}"))
    auto = status.get("autoscale")
    if auto:
        parts.append(Text("autoscale: " + str(auto.get("summary", "")), style="bold"))
        for d in list(auto.get("decisions", []))[-3:]:
            at = time.strftime("%H:%M:%S", time.localtime(d["at"])) if d.get("at") else "?"
            parts.append(Text(f"  {at} {d.get('reason', '')}", style="dim"))
    return Group(*parts)


def admin_address(args: argparse.Namespace) -> tuple[str, int]:
    if args.admin:
        return split_hostport(args.admin, "--admin")
    if args.config is None and os.path.exists(DEFAULT_CONFIG):
        # Like `lb` and `up`, which default to it too; but a file nobody named must not stop
        # `status` when something else in it is wrong: then the default address is asked.
        try:
            args.config = DEFAULT_CONFIG
            return admin_address(args)
        except (ConfigError, UsageError):
            return DEFAULT_ADMIN
    if args.config:
        # Only the address is needed: an unset ${SECRET} in the operator's shell must not stop it.
        unset: list[tuple[str, str]] = []
        cfg = load_config(args.config, unset_env=unset)
        var = next((v for key, v in unset if key == "admin.listen"), None)
        if var is not None:
            raise UsageError(f"{args.config}: admin.listen is ${{{var}}}, and {var} is not set here; "
                             "set it, or give the address with --admin HOST:PORT")
        if not cfg.admin.listen:
            raise UsageError(f"{args.config} has no [admin] listen address: the admin API is off")
        host, port = split_hostport(cfg.admin.listen, "admin.listen")
        return ("127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host), port
    return DEFAULT_ADMIN


def run(args: argparse.Namespace) -> int:
    host, port = admin_address(args)
    status = fetch_status(host, port, args.timeout)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        # Piped output (scripts, tests) gets a wide fixed width instead of rich's 80-column fallback,
        # so rows stay on one line and can be grepped.
        console = Console() if sys.stdout.isatty() else Console(width=200)
        console.print(render(status))
    return 0
