"""Find the fields of a request or response head that the proxy must look at, and leave the rest as bytes.

Why: httptools reports every header field through a Python callback, and the rewriter then
looked at every field again; a browser's request (15 fields, cookies) cost three times wrk's
one-field GET. HAProxy's cost barely moves with the number of fields, because it forwards the
bytes that need no change as they are. So does taxiway now: llhttp still parses and validates
the whole head first (the client protocol feeds it every byte, without the per-field callback),
and `scan` then reads the head llhttp accepted, in one call, and returns only the fields whose
(length, first letter) the rewriter's name table marks (Host, Connection, Content-Length, the
forwarding and framing fields, and the few names that share a length and a first letter with
them). The rewriter copies the bytes between those lines unchanged.

The contract, kept by the C scanner (`_headscan.c`, built at install beside the mypyc modules)
and by the Python functions here (the sources build, and the reference the tests compare the C
scanner with):

`scan(buf, pos, table)`: `buf[pos:]` holds a request head, after any empty lines. Returns
`(fields_start, head_end, count, field_bytes, version, candidates)`: where the first field line
starts, the offset just past the empty line that ends the head, the number of fields, the bytes
`limits.max_header_bytes` counts (name + value + 4 per field, as the field callback counted
them), the HTTP version as 10 * major + minor, and `[(name, value, line_start, line_end), ...]`
for the marked fields (value without surrounding whitespace; `line_end` past the CRLF). Returns
None when the head is anything but plain and strict: a request line that does not end in
` HTTP/d.d`, a line ending in a bare LF, a CR inside a line, a folded line, a field line that is
not `token ":" value`, or no empty line in `buf`. The caller then takes the general path (the
field callbacks, as before), so this scanner never needs to agree with llhttp on odd input.

`scan_response(buf, pos, table)`: the same for a response head, whose first line is a status
line (`HTTP/d.d ` first, then the status and reason llhttp has checked). The upstream connection
runs it on the heads of its responses: the fields the response rewriter must see are framing,
hop-by-hop, `Date` and the security headers, and an nginx or gunicorn answer's other fields
(`Server`, `Content-Type`, `ETag`, `Last-Modified`, `Accept-Ranges` ...) stay bytes.

`fields(buf, start, end)`: the `(name, value)` pairs of the field lines in `buf[start:end]` (a
range `scan` accepted), for the edge guards and strategies that read headers (`RequestHead`
builds the list only when one asks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import taxiway

TABLE_SIZE: Final = 64 * 32   # (name length < 64) x (first byte & 31), as NameCodes keeps it

_TCHAR: Final = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

ScanResult = tuple[int, int, int, int, int, list[tuple[bytes, bytes, int, int]]]


def _split_field(line: bytes) -> tuple[bytes, bytes] | None:
    """`token ":" OWS value OWS` -> (name, value); None for anything else."""
    colon = line.find(b":")
    if colon <= 0:
        return None
    name = line[:colon]
    for c in name:
        if c not in _TCHAR:
            return None
    return name, line[colon + 1:].strip(b" \t")


def _skip_empty(buf: bytes, pos: int, table: bytes) -> int:
    if pos < 0 or pos > len(buf) or len(table) < TABLE_SIZE:
        raise ValueError("scan: pos out of range or table too short")
    while pos < len(buf) and buf[pos] in (13, 10):
        pos += 1
    return pos


def scan_py(buf: bytes, pos: int, table: bytes) -> ScanResult | None:
    """The Python twin of `_headscan.scan` (see the module docstring)."""
    pos = _skip_empty(buf, pos, table)
    lf = buf.find(b"\n", pos)
    if lf < 0 or lf - pos < 10 or buf[lf - 1] != 13:
        return None
    cr = lf - 1
    if buf.find(b"\r", pos, cr) >= 0:
        return None
    v = buf[cr - 9:cr]
    if v[:6] != b" HTTP/" or v[7] != 46 or not (48 <= v[6] <= 57 and 48 <= v[8] <= 57):
        return None
    return _scan_fields(buf, lf + 1, table, (v[6] - 48) * 10 + (v[8] - 48))


def scan_response_py(buf: bytes, pos: int, table: bytes) -> ScanResult | None:
    """The Python twin of `_headscan.scan_response` (see the module docstring)."""
    pos = _skip_empty(buf, pos, table)
    lf = buf.find(b"\n", pos)
    if lf < 0 or lf - pos < 13 or buf[lf - 1] != 13 or buf.find(b"\r", pos, lf - 1) >= 0:
        return None
    v = buf[pos:pos + 9]
    if v[:5] != b"HTTP/" or v[6] != 46 or v[8] != 32 or not (48 <= v[5] <= 57 and 48 <= v[7] <= 57):
        return None
    return _scan_fields(buf, lf + 1, table, (v[5] - 48) * 10 + (v[7] - 48))


def _scan_fields(buf: bytes, line: int, table: bytes, version: int) -> ScanResult | None:
    """The field lines from `line` on, up to the empty line (the part both scanners share)."""
    fields_start = line
    cands: list[tuple[bytes, bytes, int, int]] = []
    count = field_bytes = 0
    while True:
        lf = buf.find(b"\n", line)
        if lf < 0 or lf == line or buf[lf - 1] != 13:
            return None
        cr = lf - 1
        if cr == line:
            return fields_start, lf + 1, count, field_bytes, version, cands
        if buf.find(b"\r", line, cr) >= 0:
            return None
        field = _split_field(buf[line:cr])
        if field is None:
            return None
        name, value = field
        count += 1
        field_bytes += len(name) + len(value) + 4
        if len(name) < 64 and table[len(name) * 32 + (buf[line] & 31)]:
            cands.append((name, value, line, lf + 1))
        line = lf + 1


def fields_py(buf: bytes, start: int, end: int) -> list[tuple[bytes, bytes]]:
    """The Python twin of `_headscan.fields` (see the module docstring)."""
    if start < 0 or end > len(buf) or start > end:
        raise ValueError("fields: range out of bounds")
    out: list[tuple[bytes, bytes]] = []
    line = start
    while line < end:
        lf = buf.find(b"\n", line, end)
        if lf < 0 or lf == line or buf[lf - 1] != 13 or lf - 1 == line:
            break
        field = _split_field(buf[line:lf - 1])
        if field is not None:
            out.append(field)
        line = lf + 1
    return out


scan: Callable[[bytes, int, bytes], ScanResult | None]
scan_response: Callable[[bytes, int, bytes], ScanResult | None]
fields: Callable[[bytes, int, int], list[tuple[bytes, bytes]]]
if taxiway.BUILD.startswith("compiled"):
    # (The C scanner is part of the compiled build: installed, checked and chosen with it.)
    from taxiway.proxy._headscan import fields, scan, scan_response
else:
    scan, scan_response, fields = scan_py, scan_response_py, fields_py
