"""A WSGI app whose requests wait 50 ms on I/O (time.sleep): run under gunicorn sync workers, each
process serves `workers` requests at a time, like most Django/Flask deployments.

Endpoints: /healthz -> "ok"; anything else sleeps APP_DELAY_MS (default 50) and answers
"hello from $TAXIWAY_SERVER_NAME" (set by the taxiway supervisor).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

NAME = os.environ.get("TAXIWAY_SERVER_NAME", "app")
DELAY_S = float(os.environ.get("APP_DELAY_MS", "50")) / 1000


def app(environ: dict[str, object], start_response: Callable[..., object]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/healthz":
        body = b"ok"
    else:
        time.sleep(DELAY_S)
        body = f"hello from {NAME}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
