"""App-server processes: their states, the rotation interface, and the OS-level guarantees.

Rules of this module:
1. Model and small OS helpers only; the lifecycle (start, ready, drain, stop) is in supervisor.py.
2. Children die with taxiway: `die_with_parent` sets PR_SET_PDEATHSIG=SIGKILL in the child before
   exec (Linux), and re-checks the parent pid to close the race where taxiway died before prctl.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import os
import shlex
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from taxiway.balancing.model import Pool, Server
from taxiway.config import PoolConfig

_PR_SET_PDEATHSIG = 1


class Rotation(Protocol):
    """What the supervisor needs from the balancer (taxiway.proxy.app.Balancer fits)."""

    pool: Pool

    def add_server(self, server: Server) -> None: ...
    def drain_server(self, name: str) -> None: ...
    def remove_server(self, name: str) -> None: ...
    def queued(self) -> int: ...   # requests waiting for a server (scale from zero reads it)


class PoolRotation:
    """A `Rotation` over a bare Pool (no proxy): used by tests and `benchmarks/`."""

    def __init__(self, pool: Pool | None = None) -> None:
        self.pool = pool or Pool()

    def add_server(self, server: Server) -> None:
        self.pool.add(server, time.monotonic())

    def drain_server(self, name: str) -> None:
        self.pool.drain(name)

    def remove_server(self, name: str) -> None:
        self.pool.remove(name)

    def queued(self) -> int:
        return 0   # (no proxy: nothing waits)


class ProcState(enum.Enum):
    STARTING = "starting"    # launched, readiness path not answering yet
    READY = "ready"          # in rotation
    DRAINING = "draining"    # out of rotation, in-flight requests finishing
    STOPPING = "stopping"    # SIGTERM sent
    EXITED = "exited"


@dataclass(eq=False)
class AppProcess:
    name: str
    port: int
    server: Server
    state: ProcState = ProcState.STARTING
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    ready_at: float | None = None
    version: str = ""            # rollout.version_of what it runs (its command, env and cwd)
    spec: PoolConfig | None = None   # the settings it was started with (command, env)
    cwd: str = ""
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def is_live(self) -> bool:
        """Counts toward the pool size: starting or serving, not leaving."""
        return self.state in (ProcState.STARTING, ProcState.READY)


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """preexec_fn for children: SIGKILL when taxiway dies (Linux), even by SIGKILL."""
    def preexec() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # not Linux: process groups and stop() still apply
            return
        if os.getppid() != parent_pid:   # taxiway died before prctl took effect
            os._exit(1)
    return preexec


def pick_free_port(host: str, taken: set[int]) -> int:
    """A port the kernel calls free now (a race with other programs is handled as a crash)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port
    raise OSError("no free port found")


def command_argv(command: str, **values: str) -> list[str]:
    """A [pool] command line as argv: `{key}` placeholders filled from `values`, `{python}` = the
    interpreter taxiway runs on, `{taxiway}` = this taxiway (`{python} -m taxiway`: a venv's
    `taxiway` is often not on PATH), split like a shell would (no shell runs it)."""
    python = shlex.quote(sys.executable)
    for key, value in {**values, "python": python, "taxiway": f"{python} -m taxiway"}.items():
        command = command.replace("{" + key + "}", value)
    return shlex.split(command)
