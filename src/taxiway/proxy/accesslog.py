"""The access log: one JSON line per request, buffered, with credentials in targets redacted.

Compiled with the hot path (`taxiway.compiled`): with the log on (the default), `record` runs
for every request. It only keeps the fields (`logline.AccessLine`); the balancer's tick (or 256
waiting lines) encodes the batch with msgspec and writes it, so a request never waits for the
disk and no line is %-formatted in Python.
"""

from __future__ import annotations

import re
import sys
import time
from typing import IO, Final

import msgspec

from taxiway.proxy.http1 import RequestHead, RequestInfo
from taxiway.proxy.logline import AccessLine


class AccessLog:
    """One JSON line per request, buffered and written by the tick (or when 256 lines wait)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stream: IO[bytes] = sys.stderr.buffer if path == "-" else open(path, "ab")  # noqa: SIM115
        self.buf: list[AccessLine] = []
        self.encoder = msgspec.json.Encoder()
        self._methods: dict[bytes, str] = {}   # b"GET" -> "GET" (methods are few)
        # Wall clock = monotonic `now` + offset, re-read at every flush (tick): no clock call per line.
        self.wall_offset = time.time() - time.monotonic()

    def record(self, head: RequestHead, info: RequestInfo, method: bytes, status: int, server: str | None,
               bytes_out: int, bytes_in: int, started: float, now: float) -> None:
        """Called once per finished request (by `forward.Exchange`, with what it measured:
        the fields, not the exchange, so this module needs nothing above http1). Nothing is
        formatted here: the fields are kept in an `AccessLine` and the batch is encoded at once
        by `flush` (msgspec escapes the client-controlled strings). The client is the one a
        trusted proxy reported, if any (else the peer); a query's secrets (API keys, tokens,
        passwords) are written as `***`."""
        target = head.raw_target
        if _MAY_HOLD_SECRET.search(target) is not None:
            target = redact_target(target)
        m = self._methods.get(method)
        if m is None:
            m = method.decode("latin-1")
            if len(self._methods) < 64:
                self._methods[method] = m
        # Rounded as the lines always were (the time to the millisecond, milliseconds to 3 places):
        # k / 1000 is the double nearest that decimal, so it is written as exactly 3 places or
        # fewer. (`round(x, 3)` gets there through a decimal string: 3,000 instructions a call.)
        self.buf.append(AccessLine(int((now + self.wall_offset) * 1000 + 0.5) / 1000, head.client_ip, m,
                                   target.decode("latin-1"), status, server, bytes_out, bytes_in,
                                   int((now - started) * 1_000_000 + 0.5) / 1000,
                                   info.request_id.decode("latin-1")))
        if len(self.buf) >= 256:
            self.flush()

    def flush(self) -> None:
        self.wall_offset = time.time() - time.monotonic()
        if self.buf:
            try:
                self.stream.write(self.encoder.encode_lines(self.buf))
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self.buf = []

    def close(self) -> None:
        self.flush()
        if self.path != "-":
            self.stream.close()


# Query parameters whose values are credentials, and taxiway API keys anywhere in a target: an
# access log must not become the place keys leak from (a key sent in a query is refused, but the
# line is still written).
_SECRET_PARAM: Final = re.compile(
    rb"(?i)([?&;](?:api[_-]?key|key|token|access[_-]?token|auth|password|passwd|secret|"
    rb"signature|sig|session|sessionid)=)[^&;#]*")
_API_KEY: Final = re.compile(rb"tw_[0-9a-f]{8}_[A-Za-z0-9_-]+")
_MAY_HOLD_SECRET: Final = re.compile(rb"\?|tw_")


def redact_target(target: bytes) -> bytes:
    """The request target as the access log writes it: credential values replaced by `***`."""
    return _API_KEY.sub(b"tw_***", _SECRET_PARAM.sub(rb"\1***", target))
