"""Find the fields of a request or response head that the proxy must look at, and leave the rest as bytes.

Why: httptools reports every header field through a Python callback, and the rewriter then
looked at every field again; a browser's request (15 fields, cookies) cost three times wrk's
one-field GET. HAProxy's cost barely moves with the number of fields, because it forwards the
bytes that need no change as they are. So does taxiway now: llhttp still parses and validates
the whole head first (the client protocol feeds it every byte, without the per-field callback),
and `scan` then reads the head llhttp accepted, in one call, and returns only the fields the
rewriter's name table names (Host, Connection, Content-Length, the forwarding and framing
fields), each with its code in that table, so the rewriter needs no lookup of its own. The
rewriter copies the bytes between those lines unchanged.

The contract, kept by the C scanner (`_headscan.c`, built at install beside the mypyc modules)
and by the Python functions here (the sources build, and the reference the tests compare the C
scanner with):

`scan(buf, pos, table)`: `buf[pos:]` holds a request head, after any empty lines. Returns
`(fields_start, head_end, count, field_bytes, version, candidates, target_suspect)`: where the
first field line starts, the offset just past the empty line that ends the head, the number of
fields, the bytes `limits.max_header_bytes` counts (name + value + 4 per field, as the field
callback counted them), the HTTP version as 10 * major + minor, `[(code, value, line_start,
line_end), ...]` for the fields the table names (value without surrounding whitespace;
`line_end` past the CRLF), and whether the request line before ` HTTP/` holds a `%`, `#` or a backslash
(only then does the target need `http1.check_target`: that is one byte table read per byte here,
where a regex search cost about 2,500 instructions per request). Returns
None when the head is anything but plain and strict: a request line that does not end in
` HTTP/d.d`, a line ending in a bare LF, a CR inside a line, a folded line, a field line that is
not `token ":" value`, or no empty line in `buf`. The caller then takes the general path (the
field callbacks, as before), so this scanner never needs to agree with llhttp on odd input.

`scan_response(buf, pos, table)`: the same for a response head, whose first line is a status
line (`HTTP/d.d ` first, then the status and reason llhttp has checked; `target_suspect` is
False). The upstream connection
runs it on the heads of its responses: the fields the response rewriter must see are framing,
hop-by-hop, `Date` and the security headers, and an nginx or gunicorn answer's other fields
(`Server`, `Content-Type`, `ETag`, `Last-Modified`, `Accept-Ranges` ...) stay bytes.

`fields(buf, start, end)`: the `(name, value)` pairs of the field lines in `buf[start:end]` (a
range `scan` accepted), for the edge guards and strategies that read headers (`RequestHead`
builds the list only when one asks).

The name table (`name_table(codes)` builds it from a rewriter's lower-case name -> code map,
codes 0..254): TABLE_SLOTS 16-bit little-endian offsets, one per (name length < 64, first byte &
31), 0 for a slot no name has; at an offset, the slot's `(code byte, lower-case name)` entries,
ended by 0xFF. A field's name is looked up in its slot's few entries without regard to case, so
a browser's User-Agent, Accept or Cookie costs two byte reads and makes no Python object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import taxiway

TABLE_SLOTS: Final = 64 * 32   # (name length < 64) x (first byte & 31), as NameCodes keeps it
TABLE_MIN: Final = 2 * TABLE_SLOTS   # the slots' offsets; the name lists follow them
_LIST_END: Final = 0xFF

_TCHAR: Final = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

Candidate = tuple[int, bytes, int, int]
ScanResult = tuple[int, int, int, int, int, list[Candidate], bool]


def name_table(codes: dict[bytes, int]) -> bytes:
    """The table `scan` and `scan_response` name fields by (module docstring), from lower-case
    names and their codes. A name of 64 bytes or more is never looked at by the fast path."""
    slots: dict[int, list[tuple[int, bytes]]] = {}
    for lname, code in codes.items():
        if not 0 <= code < _LIST_END or lname != lname.lower():
            raise ValueError(f"name_table: {lname!r} -> {code}: a lower-case name and a code 0..254")
        if 0 < len(lname) < 64:
            slots.setdefault(len(lname) * 32 + (lname[0] & 31), []).append((code, lname))
    out = bytearray(TABLE_MIN)
    for slot, entries in sorted(slots.items()):
        at = len(out)
        out[2 * slot] = at & 0xFF
        out[2 * slot + 1] = at >> 8
        for code, lname in entries:
            out.append(code)
            out += lname
        out.append(_LIST_END)
    if len(out) > 0xFFFF:
        raise ValueError("name_table: too many names")
    return bytes(out)


def _name_code(name: bytes, table: bytes) -> int:
    """The code `table` gives `name`, or -1 (the Python twin of the C scanner's lookup)."""
    n = len(name)
    if n >= 64:
        return -1
    slot = n * 32 + (name[0] & 31)
    at = table[2 * slot] | (table[2 * slot + 1] << 8)
    if not at:
        return -1
    lname = name.lower()
    while at < len(table) and table[at] != _LIST_END:
        if at + 1 + n > len(table):
            return -1
        if table[at + 1:at + 1 + n] == lname:
            return table[at]
        at += 1 + n
    return -1


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
    if pos < 0 or pos > len(buf) or len(table) < TABLE_MIN:
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
    line = buf[pos:cr - 9]
    suspect = b"%" in line or b"#" in line or b"\\" in line
    return _scan_fields(buf, lf + 1, table, (v[6] - 48) * 10 + (v[8] - 48), suspect)


def scan_response_py(buf: bytes, pos: int, table: bytes) -> ScanResult | None:
    """The Python twin of `_headscan.scan_response` (see the module docstring)."""
    pos = _skip_empty(buf, pos, table)
    lf = buf.find(b"\n", pos)
    if lf < 0 or lf - pos < 13 or buf[lf - 1] != 13 or buf.find(b"\r", pos, lf - 1) >= 0:
        return None
    v = buf[pos:pos + 9]
    if v[:5] != b"HTTP/" or v[6] != 46 or v[8] != 32 or not (48 <= v[5] <= 57 and 48 <= v[7] <= 57):
        return None
    return _scan_fields(buf, lf + 1, table, (v[5] - 48) * 10 + (v[7] - 48), False)


def _scan_fields(buf: bytes, line: int, table: bytes, version: int, suspect: bool) -> ScanResult | None:
    """The field lines from `line` on, up to the empty line (the part both scanners share)."""
    fields_start = line
    cands: list[Candidate] = []
    count = field_bytes = 0
    while True:
        lf = buf.find(b"\n", line)
        if lf < 0 or lf == line or buf[lf - 1] != 13:
            return None
        cr = lf - 1
        if cr == line:
            return fields_start, lf + 1, count, field_bytes, version, cands, suspect
        if buf.find(b"\r", line, cr) >= 0:
            return None
        field = _split_field(buf[line:cr])
        if field is None:
            return None
        name, value = field
        count += 1
        field_bytes += len(name) + len(value) + 4
        code = _name_code(name, table)
        if code >= 0:
            cands.append((code, value, line, lf + 1))
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
