"""`taxiway reload`: send SIGHUP to the running `taxiway up` / `taxiway lb` of a config.

The process is found through its admin API (`GET /status` says its pid), the way `taxiway status`
finds it: the same `--config` / `--admin` options. A reload re-reads the config file; in
`taxiway up`, a changed `[pool] command`, `env` or `cwd` rolls the pool to the new version
(docs/autoscaling.md, "Rolling deploys"). Only a process on this machine can be signalled.
"""

from __future__ import annotations

import argparse
import os
import signal

from taxiway.admin.command import add_arguments as add_status_arguments
from taxiway.admin.command import admin_address, fetch_status
from taxiway.errors import UsageError

HELP = "Make a running taxiway re-read its config (SIGHUP); a changed pool command rolls the pool."


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_status_arguments(p)


def run(args: argparse.Namespace) -> int:
    pid = send_signal(args, signal.SIGHUP)
    print(f"taxiway reload: sent SIGHUP to pid {pid}; `taxiway status` shows the rollout, if any")
    return 0


def send_signal(args: argparse.Namespace, signum: int) -> int:
    """Signal the taxiway whose admin API `args` names (`--config` / `--admin`); returns its pid.
    Shared with `taxiway upgrade`."""
    host, port = admin_address(args)
    status = fetch_status(host, port, args.timeout)
    pid = status.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        raise UsageError(f"{host}:{port} did not say its pid (a taxiway older than `taxiway reload`?)")
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        raise UsageError(f"no process {pid} here: is the taxiway at {host}:{port} on another "
                         "machine?") from None
    except PermissionError:
        raise UsageError(f"not allowed to signal process {pid} (it runs as another user)") from None
    return pid
