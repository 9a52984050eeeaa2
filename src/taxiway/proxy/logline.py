"""One access-log line as a msgspec Struct: what `accesslog.AccessLog` keeps per request.

Kept out of the compiled modules on purpose: a msgspec Struct is a C type with its own
metaclass, which mypyc cannot compile as a native class; created from compiled code it costs
one C call. The batch of them is written by msgspec's JSON encoder (`encode_lines`) at the
tick, which formats numbers and escapes strings far faster than a bytes %-format per line.
"""

from __future__ import annotations

import msgspec


class AccessLine(msgspec.Struct, gc=False):
    """The fields of one line, in the order they are written (docs/operations.md)."""

    ts: float              # wall clock, seconds
    client: str            # the client (a trusted proxy's report, else the peer)
    method: str
    path: str              # the request target, credentials redacted
    status: int
    server: str | None     # the server that answered, or the last one tried
    bytes_out: int = msgspec.field(name="bytes")   # response body bytes
    bytes_in: int          # request body bytes
    duration_ms: float
    request_id: str
