"""Shared fixtures: free ports, real subprocesses that are always cleaned up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests check results, not speed: hypothesis' default 200 ms deadline per example failed
# on a loaded 2-core CI machine (speed targets live in benchmarks/). No deadline, for all of them.
settings.register_profile("taxiway", deadline=None)
settings.load_profile("taxiway")

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

# Redis/PostgreSQL fixtures (redis_server, postgres_server, postgres_db): found, started or installed.
pytest_plugins = ("tests.services",)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout_s: float = 15.0,
                  proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"process exited with {proc.returncode} before listening:\n{out}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s}s")


def taxiway_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_taxiway(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
                timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`taxiway ARGS` as a user types it, run to its end: exit status, stdout and stderr as text."""
    return subprocess.run([sys.executable, "-m", "taxiway", *args], capture_output=True, text=True,
                          env=env or taxiway_env(), cwd=cwd, timeout=timeout_s)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`taxiway ARGS` for a command that runs to its end (a client, a file tool, an error), run in
    this process through the same entry point (`cli.main`): what the user sees is the same as
    `run_taxiway`'s, and the coverage measurement sees the command's code. Long-running verbs
    (`lb`, `up`, `bench` runs) stay in their own processes."""
    import contextlib
    import io

    from taxiway import cli

    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as exc:   # (argparse's usage errors)
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(["taxiway", *args], code, out.getvalue(), err.getvalue())


class Processes:
    """Starts real processes in their own process group and kills every one at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None,
              stdout: int | None = subprocess.PIPE) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            list(args), env=env or taxiway_env(), cwd=cwd, stdout=stdout, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def taxiway(self, *args: str, **kw: object) -> subprocess.Popen[bytes]:
        return self.start(sys.executable, "-m", "taxiway", *args, **kw)  # type: ignore[arg-type]

    def backend(self, name: str = "b1", port: int | None = None, *extra: str) -> int:
        """Start `taxiway backend` on a free port, wait until it listens, return the port."""
        port = port or free_port()
        proc = self.taxiway("backend", "--port", str(port), "--name", name, *extra)
        wait_for_port(port, proc=proc)
        return port

    def stop_all(self) -> None:
        for proc in self.procs:
            # The whole group, even when its leader has exited: a `taxiway upgrade` successor
            # runs in it after the process it replaced is gone.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            if proc.stdout:
                proc.stdout.close()


@pytest.fixture
def procs() -> Iterator[Processes]:
    p = Processes()
    try:
        yield p
    finally:
        p.stop_all()
