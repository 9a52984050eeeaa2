"""`taxiway upgrade`: replace the running `taxiway up` / `taxiway lb` of a config by a new process
(the taxiway installed now), without a refused connection or a failed request.

It sends SIGUSR2 (what a user may send by hand) to the process its admin API names, then watches
`/status` until the answer comes from another pid (the successor accepts) or the old process
reports `upgrade_failed` (it goes on serving). How the sockets move: proxy/handover.py.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from taxiway.admin.command import add_arguments as add_status_arguments
from taxiway.admin.command import admin_address, fetch_status
from taxiway.admin.reloadcmd import send_signal
from taxiway.errors import TaxiwayError, UsageError

HELP = ("Replace the running taxiway by a new process (SIGUSR2): it takes the listening sockets, "
        "starts its app servers, then the old one drains and exits.")
PROGRESS_S = 5.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_status_arguments(p)
    p.add_argument("--wait", type=float, default=300.0, metavar="SECONDS",
                   help="how long to wait for the outcome (default 300; 0: send the signal and return)")


def run(args: argparse.Namespace) -> int:
    if args.wait < 0:
        raise UsageError(f"--wait: expected seconds >= 0 (got {args.wait:g})")
    sent_at = time.time()
    old = send_signal(args, signal.SIGUSR2)
    print(f"taxiway upgrade: sent SIGUSR2 to pid {old}", flush=True)
    if args.wait == 0:
        return 0
    host, port = admin_address(args)
    start = time.monotonic()
    next_progress = start + PROGRESS_S
    while time.monotonic() - start < args.wait:
        time.sleep(0.2)
        try:
            status = fetch_status(host, port, args.timeout)
        except UsageError:
            continue   # (between the old admin listener closing and a retry: the new one answers)
        if status.get("pid") not in (old, None):
            print(f"taxiway upgrade: done: pid {status['pid']} serves; pid {old} finishes its "
                  "requests and exits", flush=True)
            return 0
        for ev in status.get("events", []):
            if ev.get("kind") == "upgrade_failed" and float(ev.get("at") or 0) >= sent_at:
                raise TaxiwayError(f"upgrade failed; pid {old} still serves: {ev.get('detail')}")
        if time.monotonic() >= next_progress:
            print(f"taxiway upgrade: waiting for the new process ({time.monotonic() - start:.0f}s)",
                  file=sys.stderr, flush=True)
            next_progress += PROGRESS_S
    raise TaxiwayError(f"no outcome within --wait {args.wait:g}s; `taxiway status` shows the events")
