"""SIGHUP with a file that is partly good and partly bad: nothing of it applies."""

from __future__ import annotations

import signal
import time

from .conftest import Processes
from .proxy_support import Client, make_config, start_lb


def test_a_rejected_reload_applies_nothing(procs: Processes, tmp_path) -> None:  # type: ignore[no-untyped-def]
    b1 = procs.backend("b1")
    port, proc, path = start_lb(procs, tmp_path, [b1])
    c = Client(port)
    assert c.get("/").header("X-Served-By") is None
    # A good change (served_by_header) next to a bad one (a 5-byte signing key): all or nothing.
    path.write_text(make_config([b1], port, balancer={"served_by_header": "X-Served-By"},
                                affinity={"mode": "cookie", "secret": "short"}))
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert c.get("/").header("X-Served-By") is None
    assert proc.poll() is None
    # The same good change alone applies.
    path.write_text(make_config([b1], port, balancer={"served_by_header": "X-Served-By"}))
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while c.get("/").header("X-Served-By") is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert c.get("/").header("X-Served-By") is not None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert "reload failed" in out and "affinity.secret" in out and "Traceback" not in out
