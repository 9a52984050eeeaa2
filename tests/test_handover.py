"""The upgrade handover's parts (proxy/handover.py), with real sockets, pipes and processes: the
descriptor list a successor inherits, and what the old process makes of each way a successor
can end (ready, a reported failure, an exit, silence)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import pytest

from taxiway.errors import TaxiwayError
from taxiway.proxy import handover

from .conftest import free_port, run_cli


@pytest.mark.parametrize(("text", "fds"), [
    ("http=5", {"http": 5}),
    ("http=5,https=6,admin=7", {"http": 5, "https": 6, "admin": 7}),
    ("0.http=5,1.http=8,0.admin=9", {"0.http": 5, "1.http": 8, "0.admin": 9}),
    ("", {}),
])
def test_descriptor_lists_round_trip(text: str, fds: dict[str, int]) -> None:
    assert handover.parse_fds(text) == fds
    assert handover.format_fds(fds) == text


@pytest.mark.parametrize("text", ["http", "http=", "=5", "http=five", "http=5;admin=6", "http=-1"])
def test_a_malformed_descriptor_list_is_an_error_that_quotes_it(text: str) -> None:
    with pytest.raises(TaxiwayError, match="TAXIWAY_LISTEN_FDS") as exc:
        handover.parse_fds(text)
    assert repr(text) in str(exc.value)


def test_an_ordinary_start_inherits_nothing_and_a_successor_clears_the_variables() -> None:
    assert handover.inherited({}) is None
    env = {handover.ENV_FDS: "http=5", handover.ENV_PIPE: "9", handover.ENV_SERVERS: "3", "PATH": "/bin"}
    inh = handover.inherited(env)
    assert inh is not None and inh.fds == {"http": 5} and inh.pipe == 9 and inh.servers == 3
    assert env == {"PATH": "/bin"}   # (app servers started later must not see them)


def test_an_inherited_listening_socket_accepts_what_was_queued_on_the_original() -> None:
    """The point of inheriting: a connection that reached the old socket's accept queue is
    accepted through the successor's descriptor, even after the old one is closed."""
    original = socket.create_server(("127.0.0.1", 0))
    port = original.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))   # queued, not accepted
    inh = handover.Inherited({"http": os.dup(original.fileno())}, None, None)
    original.close()
    sock = inh.socket("http")
    assert sock is not None and inh.socket("http") is None   # taken once
    sock.setblocking(True)
    sock.settimeout(5)
    conn, _ = sock.accept()
    client.sendall(b"x")
    assert conn.recv(1) == b"x"
    for s in (conn, client, sock):
        s.close()


def test_a_descriptor_that_is_not_a_socket_is_named() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(TaxiwayError, match=rf"descriptor {r} \(http\) is not a socket"):
            handover.Inherited({"http": r}, None, None).socket("http")
    finally:
        os.close(w)


def test_lines_reach_the_old_process_and_a_closed_pipe_is_the_end() -> None:
    r, w = os.pipe()
    inh = handover.Inherited({}, w, None)
    lines = handover.Lines(r)

    async def read_all() -> list[str | None]:
        inh.say("step 0")
        inh.say("two\nlines")          # (one line: a newline in a message cannot split it)
        inh.ready()                    # closes the pipe
        deadline = time.monotonic() + 5
        return [await lines.next_line(deadline) for _ in range(4)]

    assert asyncio.run(read_all()) == ["step 0", "two lines", "ready", None]
    assert inh.pipe is None
    lines.close()
    inh.say("after the end")           # (the reader is gone: no error)


def test_a_silent_pipe_times_out() -> None:
    r, w = os.pipe()
    lines = handover.Lines(r)
    with pytest.raises(TimeoutError):
        asyncio.run(lines.next_line(time.monotonic() + 0.2))
    lines.close()
    os.close(w)


def _successor(monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """Make the 'new taxiway' this Python running `script`, which finds its pipe in the
    environment as a real successor does."""
    monkeypatch.setattr(handover, "successor_argv", lambda: [sys.executable, "-c", script])


PIPE = f"import os; fd = int(os.environ['{handover.ENV_PIPE}']); "


def _hand_over(timeout_s: float = 10.0) -> tuple[tuple[int | None, str | None], list[str]]:
    steps: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        out = asyncio.run(handover.hand_over({"http": lsock.fileno()}, timeout_s, {"X": "1"}, steps.append))
    return out, steps


def test_a_successor_that_says_ready_has_taken_over(monkeypatch: pytest.MonkeyPatch) -> None:
    # It checks what it was given: the socket under its name, the extra environment.
    _successor(monkeypatch, PIPE + (
        "import socket; fds = dict(p.split('=') for p in os.environ['TAXIWAY_LISTEN_FDS'].split(',')); "
        "s = socket.socket(fileno=int(fds['http'])); assert s.getsockname()[1] > 0; "
        "assert os.environ['X'] == '1'; "
        "os.write(fd, b'step 0\\nstep 1\\nready\\n'); import time; time.sleep(0.5)"))
    (pid, why), steps = _hand_over()
    assert why is None and isinstance(pid, int) and steps == ["0", "1"]


@pytest.mark.parametrize(("script", "expected"), [
    (PIPE + "os.write(fd, b'failed 0 of 2 app servers ready\\n'); import time; time.sleep(60)",
     "failed: 0 of 2 app servers ready"),
    ("import sys; sys.exit(3)", "exited with status 3 before it was ready"),
    ("import time; time.sleep(60)", "was not ready within 1s"),
])
def test_a_successor_that_fails_is_stopped_and_says_why(monkeypatch: pytest.MonkeyPatch, script: str,
                                                       expected: str) -> None:
    _successor(monkeypatch, script)
    t0 = time.monotonic()
    (pid, why), _ = _hand_over(timeout_s=1.0)
    assert pid is None and why is not None and expected in why, why
    assert time.monotonic() - t0 < handover.STOP_GRACE_S   # SIGTERM stopped it; no wait for the grace


def _upgrade_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("upgrade", *args)


def test_upgrade_with_nothing_running_says_where_it_looked() -> None:
    port = free_port()
    res = _upgrade_cli("--admin", f"127.0.0.1:{port}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"no taxiway admin API answers at 127.0.0.1:{port}" in res.stderr, res.stderr


def test_upgrade_refuses_a_negative_wait() -> None:
    res = _upgrade_cli("--wait", "-1", "--admin", "127.0.0.1:1")
    assert res.returncode == 2 and "--wait: expected seconds >= 0 (got -1)" in res.stderr, res.stderr
