"""Handing the listening sockets to a successor process: upgrading taxiway without a dropped
connection (`taxiway upgrade`, or SIGUSR2).

How, the way nginx's binary upgrade does it (inheritance; HAProxy passes the same sockets over a
Unix socket): the running process starts its successor, the same command line with the Python
and the taxiway installed now, with its listening sockets as inherited file descriptors named in
TAXIWAY_LISTEN_FDS (`http=5,https=6,admin=7`) and the write end of a pipe in TAXIWAY_UPGRADE_FD.
The successor uses those sockets instead of binding, gets ready (`taxiway up` starts and readies
its app servers first), begins accepting, and writes `ready` on the pipe. Only then does the old
process stop accepting: it closes its copy of each socket, which stays open in the successor, so
the connections waiting in its accept queue are not reset (the trap of an SO_REUSEPORT handover,
where the closing process's queue dies with its socket). It finishes its in-flight requests and
exits. A successor that exits, says `failed`, or is not ready in time is stopped and the old
process goes on serving: a failed upgrade costs no request.

The pipe carries lines: `ready`, `failed <why>`, and `step <key>` (with `balancer.workers`, worker
`<key>` of the successor accepts: the old one of that number may go, see proxy/command.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping

from taxiway.errors import TaxiwayError

ENV_FDS = "TAXIWAY_LISTEN_FDS"
ENV_PIPE = "TAXIWAY_UPGRADE_FD"
ENV_SERVERS = "TAXIWAY_UPGRADE_SERVERS"   # `taxiway up`: how many app servers the old one ran
STOP_GRACE_S = 10.0                       # a failed successor: SIGTERM, then SIGKILL after this
# While the old process drains, an idle keep-alive connection waits this long for one more request
# (answered with `Connection: close`) before it is closed: see Balancer.stop.
IDLE_LINGER_S = 1.0


def format_fds(fds: Mapping[str, int]) -> str:
    """`{"http": 5, "admin": 7}` as TAXIWAY_LISTEN_FDS's `http=5,admin=7`."""
    return ",".join(f"{key}={fd}" for key, fd in fds.items())


def parse_fds(text: str) -> dict[str, int]:
    """TAXIWAY_LISTEN_FDS back into names and descriptors; a malformed value is an error that
    quotes it (it comes from a parent taxiway, or from a user who set it by hand)."""
    out: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        key, eq, fd = part.partition("=")
        if not eq or not key or not fd.isdigit():
            raise TaxiwayError(f"{ENV_FDS}={text!r}: expected name=fd pairs such as 'http=5,admin=7'")
        out[key] = int(fd)
    return out


class Inherited:
    """The successor's side: the sockets its predecessor left it, and the pipe to report on."""

    def __init__(self, fds: dict[str, int], pipe: int | None, servers: int | None) -> None:
        self.fds = fds
        self.pipe = pipe
        self.servers = servers   # app servers the predecessor ran (`taxiway up` starts as many)

    def socket(self, key: str) -> socket.socket | None:
        """The listening socket inherited as `key` (taken: a second call gets None)."""
        fd = self.fds.pop(key, None)
        if fd is None:
            return None
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise TaxiwayError(f"{ENV_FDS}: descriptor {fd} ({key}) is not a socket: {exc}") from None
        sock.setblocking(False)
        return sock

    def say(self, line: str) -> None:
        """One line to the predecessor; it may be gone (it gave up on us), which is not our error."""
        if self.pipe is None:
            return
        try:
            os.write(self.pipe, line.encode("utf-8", "replace").replace(b"\n", b" ") + b"\n")
        except OSError:
            self.close_pipe()

    def ready(self) -> None:
        """We accept now: the predecessor stops accepting and drains."""
        self.say("ready")
        self.close_pipe()

    def failed(self, why: str) -> None:
        self.say(f"failed {why}")
        self.close_pipe()

    def close_pipe(self) -> None:
        if self.pipe is not None:
            with contextlib.suppress(OSError):
                os.close(self.pipe)
            self.pipe = None

    def close(self) -> None:
        """Close what nobody took (a listener the new config no longer has)."""
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def inherited(environ: MutableMapping[str, str] | None = None) -> Inherited | None:
    """The sockets a predecessor handed us, or None on an ordinary start. The variables are
    removed from the environment, so that app servers started later do not see them."""
    env = os.environ if environ is None else environ
    text = env.pop(ENV_FDS, None)
    pipe_text = env.pop(ENV_PIPE, None)
    servers_text = env.pop(ENV_SERVERS, None)
    if text is None:
        return None
    pipe = int(pipe_text) if pipe_text and pipe_text.isdigit() else None
    servers = int(servers_text) if servers_text and servers_text.isdigit() else None
    return Inherited(parse_fds(text), pipe, servers)


def successor_argv() -> list[str]:
    """This command line, run by this Python with the taxiway installed now (the upgrade)."""
    return [sys.executable, "-m", "taxiway", *sys.argv[1:]]


class Lines:
    """The lines one process writes to another on a pipe: a successor to its predecessor, a
    worker to its parent (proxy/command.py)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._buf = b""

    async def next_line(self, deadline: float) -> str | None:
        """The next line, or None at end of file (the writer exited or closed the pipe).
        Raises TimeoutError at `deadline` (time.monotonic())."""
        loop = asyncio.get_running_loop()
        while b"\n" not in self._buf:
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise TimeoutError
            readable: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self.fd, _set_once, readable)
            try:
                await asyncio.wait_for(readable, wait)
            finally:
                loop.remove_reader(self.fd)
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("utf-8", "replace")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Successor:
    """The old process's side: the successor it started and what it says on the pipe."""

    def __init__(self, proc: subprocess.Popen[bytes], pipe: int) -> None:
        self.proc = proc
        self.lines = Lines(pipe)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_GRACE_S: a successor that failed must not linger
        (it may hold app servers, and it holds our sockets). Returns its exit status."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + STOP_GRACE_S
        while self.proc.poll() is None and time.monotonic() < end:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        return self.proc.returncode


def _set_once(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def start_successor(fds: Mapping[str, int], env: Mapping[str, str] | None = None) -> Successor:
    """Start the successor with `fds` inherited under their names. Raises TaxiwayError when it
    cannot be started. (Popen, not an asyncio subprocess: the loop's transport would kill the
    child when it is closed, and the child must outlive us.)"""
    r, w = os.pipe()
    environ = {**os.environ, **(env or {}), ENV_FDS: format_fds(fds), ENV_PIPE: str(w)}
    try:
        proc = subprocess.Popen(successor_argv(), env=environ, pass_fds=(*fds.values(), w),
                                stdin=subprocess.DEVNULL)
    except OSError as exc:
        os.close(r)
        raise TaxiwayError(f"cannot start the new taxiway ({sys.executable}): "
                           f"{exc.strerror or exc}") from None
    finally:
        os.close(w)
    return Successor(proc, r)


async def hand_over(fds: Mapping[str, int], timeout_s: float, env: Mapping[str, str] | None = None,
                    on_step: Callable[[str], None] | None = None) -> tuple[int | None, str | None]:
    """Start a successor and wait until it accepts. Returns (its pid, None) once it said `ready`,
    or (None, why) when it failed, after stopping it; `on_step(key)` runs for each `step` line."""
    try:
        succ = start_successor(fds, env)
    except TaxiwayError as exc:
        return None, str(exc)
    deadline = time.monotonic() + timeout_s
    why = ""
    try:
        while True:
            try:
                line = await succ.lines.next_line(deadline)
            except TimeoutError:
                why = f"the new process (pid {succ.pid}) was not ready within {timeout_s:g}s"
                break
            if line is None:
                await asyncio.sleep(0.1)
                code = succ.proc.poll()
                why = (f"the new process (pid {succ.pid}) exited with status {code} before it was ready"
                       if code is not None else f"the new process (pid {succ.pid}) closed its pipe")
                break
            verb, _, rest = line.partition(" ")
            if verb == "ready":
                return succ.pid, None
            if verb == "step" and on_step is not None:
                on_step(rest)
            elif verb == "failed":
                why = f"the new process (pid {succ.pid}) failed: {rest}"
                break
    finally:
        succ.lines.close()
    await succ.stop()
    return None, why
