"""HTTP/1.1 header rules of the proxy: what is forwarded, what is added, what is refused.

Rules of this module:
1. No sockets, no asyncio: functions take header lists and return bytes or a status to refuse with.
   The clock enters only through `DateCache.refresh(now_epoch)` called by the driver's tick.
2. Header lists are `list[tuple[bytes, bytes]]` exactly as httptools delivered them (original
   case). Lookups lower-case the name once per header.
3. Everything constant is precomputed bytes: status lines, error responses, added headers.

Theory of operation: the request parser (server.py) collects the head; `rewrite_request` checks the
framing rules that two parsers could read differently (anything doubtful is a 400 and the
connection is closed), removes hop-by-hop headers and adds X-Forwarded-*, Forwarded, Via and the
request id, returning the bytes to send upstream. `rewrite_response` does the same for the answer.
"""

from __future__ import annotations

import email.utils
import http
import ipaddress
import os
import re
from collections.abc import Callable
from typing import Final

from taxiway.errors import RequestRefused
from taxiway.proxy.headscan import fields, name_table

CRLF: Final = b"\r\n"

# RFC 9110 §7.6.1 hop-by-hop fields plus the legacy ones proxies strip (nginx/HAProxy list).
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authorization", b"proxy-authenticate",
})

STATUS_LINES: Final[dict[int, bytes]] = {
    int(s): b"HTTP/1.1 %d %s\r\n" % (int(s), s.phrase.encode()) for s in http.HTTPStatus
}


def status_line(code: int) -> bytes:
    line = STATUS_LINES.get(code)
    if line is None:
        line = STATUS_LINES[code] = b"HTTP/1.1 %d Unknown\r\n" % code
    return line


class DateCache:
    """The Date header, formatted once per second (style: cached Date), refreshed by the tick."""

    __slots__ = ("_second", "line")

    def __init__(self) -> None:
        self._second = -1
        self.line = b""

    def refresh(self, now_epoch: float) -> None:
        second = int(now_epoch)
        if second != self._second:
            self._second = second
            self.line = b"Date: " + email.utils.formatdate(second, usegmt=True).encode() + CRLF


class RequestHead:
    """One parsed request head, as edge guards (security/) and strategies see it.

    `headers` holds (name, value) pairs as received, names in their original case; use
    `header(b"lower-case-name")` for a case-insensitive lookup of the first value. A head the
    fast path read (headscan.py) keeps its raw bytes instead and builds the list only when
    something asks for it (most requests meet no guard or strategy that reads a header).
    """

    __slots__ = (
        "_fields_end",
        "_fields_start",
        "_headers",
        "_path",
        "_raw",
        "_target",
        "client_ip",
        "http_version",
        "method",
        "raw_target",
        "scheme",
    )

    def __init__(self, method: str, raw_target: bytes, headers: list[tuple[bytes, bytes]] | None,
                 client_ip: str, scheme: str, http_version: str, raw: bytes = b"",
                 fields_start: int = 0, fields_end: int = 0) -> None:
        self.method = method
        self.raw_target = raw_target
        self._headers = headers
        self._raw = raw                   # with headers None: the fields are raw[start:end]
        self._fields_start = fields_start
        self._fields_end = fields_end
        self.client_ip = client_ip
        self.scheme = scheme
        self.http_version = http_version
        self._path: str | None = None
        self._target: str | None = None

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """(name, value) pairs as received."""
        headers = self._headers
        if headers is None:
            headers = self._headers = fields(self._raw, self._fields_start, self._fields_end)
            self._raw = b""
        return headers

    @property
    def target(self) -> str:
        """Raw path and query, decoded as latin-1 (lossless)."""
        if self._target is None:
            self._target = self.raw_target.decode("latin-1")
        return self._target

    @property
    def path(self) -> str:
        """Path without the query; an absolute-form target is reduced to its path."""
        if self._path is None:
            t = self.target
            if not t.startswith("/") and "://" in t:
                t = "/" + t.split("://", 1)[1].partition("/")[2]
            self._path = t.partition("?")[0]
        return self._path

    def header(self, name: bytes) -> bytes | None:
        """First value of header `name` (lower-case bytes), or None."""
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None

    def cookie(self, name: str) -> str | None:
        raw = self.header(b"cookie")
        if not raw:
            return None
        for part in raw.decode("latin-1").split(";"):
            k, _, v = part.strip().partition("=")
            if k == name:
                return v
        return None




# --------------------------------------------------------------------------------------------
# Errors answered by taxiway itself: short bodies, precomputed.

ERROR_BODIES: Final[dict[int, bytes]] = {
    400: b"bad request\n", 404: b"not found\n", 408: b"request timeout\n",
    405: b"method not allowed\n", 413: b"request body too large\n", 414: b"request target too long\n",
    417: b"expectation failed\n", 431: b"request header fields too large\n",
    505: b"HTTP version not supported: taxiway speaks HTTP/1.0 and HTTP/1.1\n",
    502: b"bad gateway: the upstream server failed\n",
    503: b"service unavailable: no server can take the request\n",
    504: b"gateway timeout: the upstream server did not answer in time\n",
}


def simple_response(status: int, body: bytes, date_line: bytes, close: bool,
                    extra: list[tuple[bytes, bytes]] | tuple[()] = (), http10: bool = False,
                    lines: bytes = b"", head: bool = False) -> bytes:
    """A complete answer from taxiway itself. `http10`: the client spoke HTTP/1.0, so a kept
    connection must be announced (`Connection: keep-alive`), not implied. `lines`: complete
    header lines to add (the HSTS line on an HTTPS listener). `head`: the answer to a HEAD
    request, which has the Content-Length of the body it does not carry (RFC 9110 §9.3.2; a body
    there would be read as the next response on a kept connection)."""
    parts = [status_line(status), date_line, b"Server: taxiway\r\n",
             b"Content-Type: text/plain; charset=utf-8\r\n",
             b"Content-Length: %d\r\n" % len(body), lines]
    for n, v in extra:
        parts.append(n + b": " + v + CRLF)
    if close:
        parts.append(b"Connection: close\r\n")
    elif http10:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(CRLF)
    if not head:
        parts.append(body)
    return b"".join(parts)


def error_body(status: int) -> bytes:
    """The body of taxiway's own answer with `status` (what the access log counts as its bytes)."""
    return ERROR_BODIES.get(status, b"error\n")


def error_response(status: int, date_line: bytes, close: bool = True,
                   extra: list[tuple[bytes, bytes]] | tuple[()] = (), http10: bool = False,
                   lines: bytes = b"", head: bool = False) -> bytes:
    return simple_response(status, error_body(status), date_line, close, extra, http10,
                           lines, head)


CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


# --------------------------------------------------------------------------------------------
# One reading of the request target and Host (edge rules must match what the app reads)

# A percent-escape in the path that apps decode differently, or that has no business there:
# control characters (%00-%1f, %7f), a backslash (%5c: Windows and some routers read `/`), and
# an escaped percent followed by hex digits (%2561 is `%61` after one decoding, `a` after two).
_AMBIGUOUS_ESCAPE: Final = re.compile(
    rb"%(?:[01][0-9a-fA-F]|7[fF]|5[cC]|25[0-9a-fA-F]{2}|(?![0-9a-fA-F]{2}))")
# RFC 3986 reg-name as hosts are really named (letters, digits, `-`, `.`, `_`, `~`), or an IP
# literal in brackets, then an optional port. Stricter than the RFC's sub-delims on purpose: a
# comma, quote, semicolon or space in Host only ever serves to forge a list element in
# X-Forwarded-Host or Forwarded, or to bend the HTTPS redirect's Location.
_VALID_HOST: Final = re.compile(rb"(?:[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


# A target needs a closer look (`check_target`) only when it holds one of these.
_SUSPECT_TARGET: Final = re.compile(rb"[%#\\]")


def check_target(target: bytes) -> None:
    """Refuse a request target that a route rule and the app could read as two paths.

    The proxy normalises nothing itself (the target is forwarded as received); it refuses what
    has no single reading, so edge rules and the app always see the same path:
    1. a fragment (`#`): never part of a request target (RFC 9112 §3.2), and apps drop it;
    2. a backslash in the path, raw or `%5c`: Windows servers and some routers read it as `/`;
    3. an escaped control character (`%00`..`%1f`, `%7f`): truncates paths in C-based servers;
    4. a double escape (`%25` + two hex digits) and a `%` not followed by two hex digits.
    The query is left alone except for the fragment: it is data for the app, not a route.

    Raises RequestRefused(400); the caller answers and closes the connection.
    """
    if b"#" in target:
        raise RequestRefused(400, "fragment in request target")
    q = target.find(b"?")
    path = target if q < 0 else target[:q]
    if b"\\" in path:
        raise RequestRefused(400, "backslash in request path")
    if b"%" in path and _AMBIGUOUS_ESCAPE.search(path) is not None:
        raise RequestRefused(400, "ambiguous percent-escape in request path")


def check_host(host: bytes) -> None:
    """Refuse a Host that is not one host name or IP literal with an optional port (RFC 9112
    §3.2: an invalid Host gets 400). An empty Host is allowed (RFC 9112 §3.2: a target URI
    without authority). Raises RequestRefused(400)."""
    if host and _VALID_HOST.fullmatch(host) is None:
        raise RequestRefused(400, "invalid Host")


# An X-Request-Id a client may choose: what UUIDs, hex ids, base64 and the usual trace ids use.
# Anything else (tabs, quotes, high bytes, very long values) is replaced with taxiway's own, so a
# log line or a downstream header cannot be bent by it.
_VALID_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._~:+/=@-]{1,128}")


# --------------------------------------------------------------------------------------------
# Request rewriting

# Codes for the request headers that need more than copying.
# (Final: compiled, each is a C constant rather than a module-dict lookup.)
_R_DROP: Final = 0
_R_CONN: Final = 1
_R_TE: Final = 2
_R_CL: Final = 3
_R_HOST: Final = 4
_R_XFF: Final = 5
_R_XFP: Final = 6
_R_XFH: Final = 7
_R_FWD: Final = 8
_R_VIA: Final = 9
_R_EXPECT: Final = 10
_R_UPGRADE: Final = 11
_R_RID: Final = 12
_R_TRUSTED: Final = 13
# Fields that claim something about the client, its connection or the URL it used, which apps and
# frameworks believe (nginx's realip module, Rails, Express, Spring, IIS's URL rewrite): only a
# trusted proxy may send them; from anyone else they are dropped. (X-Forwarded-For, -Proto,
# -Host and Forwarded are rewritten by taxiway instead.)
CLIENT_CLAIMS: Final = frozenset({
    b"x-real-ip", b"true-client-ip", b"x-client-ip", b"x-cluster-client-ip", b"cf-connecting-ip",
    b"fastly-client-ip", b"x-original-forwarded-for", b"x-forwarded-port", b"x-forwarded-prefix",
    b"x-forwarded-server", b"x-forwarded-scheme", b"x-forwarded-ssl", b"x-url-scheme",
    b"front-end-https", b"x-original-url", b"x-rewrite-url", b"x-http-method-override",
    b"x-http-method", b"x-method-override",
})
_REQ_SPECIAL: Final[dict[bytes, int]] = {
    # (Proxy-Connection is read like Connection, as llhttp reads it: its close, upgrade and
    # keep-alive must mean to taxiway what they mean to the parser. Neither is forwarded.)
    b"connection": _R_CONN, b"keep-alive": _R_DROP, b"proxy-connection": _R_CONN, b"te": _R_DROP,
    b"trailer": _R_DROP, b"transfer-encoding": _R_TE, b"upgrade": _R_UPGRADE,
    b"proxy-authorization": _R_DROP, b"content-length": _R_CL, b"host": _R_HOST,
    b"x-forwarded-for": _R_XFF, b"x-forwarded-proto": _R_XFP, b"x-forwarded-host": _R_XFH,
    b"forwarded": _R_FWD, b"via": _R_VIA, b"expect": _R_EXPECT,
    **dict.fromkeys(CLIENT_CLAIMS, _R_TRUSTED),
}
# Request trailer fields dropped on top of those no trailer may carry (forward.TRAILER_FORBIDDEN):
# a trailer must not smuggle in what the head's rules strip or check.
REQUEST_TRAILER_FORBIDDEN: Final = CLIENT_CLAIMS | {
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"via",
    b"x-request-id", b"x-api-key",
}


class RequestInfo:
    """What the driver needs to know about one request after `RequestRewriter.rewrite`.

    Defaults live on the class so the common request sets only what differs (cheaper than
    assigning ten attributes per request).
    """

    head_bytes = b""
    content_length = -1    # -1: no Content-Length header
    chunked = False
    expect_continue = False
    upgrade = False
    request_id = b""
    host = b""
    client_ip = ""         # set when a trusted proxy reported the client (X-Forwarded-For)
    close = False          # client asked for Connection: close
    keep_alive = False     # client asked for Connection: keep-alive (what HTTP/1.0 needs for it)


# Distinct header names whose meaning the rewriters remember (exact case). Clients and servers
# use a few dozen; the bound keeps a peer that invents names from growing the cache.
NAME_CACHE_MAX: Final = 512


class NameCodes:
    """Header name -> its code in `special` (keyed by lower-case names), -1 for any other name.
    Peers send the same few names in the same case, so each answer is remembered per exact name
    (at most NAME_CACHE_MAX): most fields then cost one dict lookup and no lower-casing. Both
    rewriters use one."""

    __slots__ = ("_maybe", "_seen", "special", "table")

    def __init__(self, special: dict[bytes, int]) -> None:
        self.special = special
        self._seen: dict[bytes, int] = {}
        # (length, first letter) of every special name: a browser's fields (User-Agent, Accept,
        # Sec-Fetch-*, Cookie ...) are ruled out by two byte reads, before hashing the name.
        maybe = bytearray(64 * 32)
        for lname in special:
            if len(lname) < 64:
                maybe[len(lname) * 32 + (lname[0] & 31)] = 1
        self._maybe = bytes(maybe)
        self.table = name_table(special)   # the same codes, for the fast path's headscan.scan

    def code(self, name: bytes) -> int:
        n = len(name)
        if 0 < n < 64 and not self._maybe[n * 32 + (name[0] & 31)]:
            return -1
        code = self._seen.get(name)
        if code is None:
            code = self.special.get(name.lower(), -1)
            if len(self._seen) < NAME_CACHE_MAX:
                self._seen[name] = code
        return code


class RequestRewriter:
    """Precomputed per-config pieces of the upstream request head (rebuilt on reload)."""

    def __init__(self, request_id_header: str, via: bool, max_body_bytes: int) -> None:
        self.rid_name = request_id_header.encode().lower()
        self.rid_prefix = request_id_header.encode() + b": "
        self.via = via
        self.max_body_bytes = max_body_bytes
        self._rid_base = os.urandom(6).hex().encode() + b"-"
        self._rid_counter = 0
        self._rid_block_no = -1
        self._rid_block = b""
        self.special = dict(_REQ_SPECIAL)
        if self.rid_name:
            self.special[self.rid_name] = _R_RID
        # What a request's trailers may not carry, with this config's request-id name.
        self.trailer_forbidden = REQUEST_TRAILER_FORBIDDEN | ({self.rid_name} if self.rid_name else set())
        self._names = NameCodes(self.special)   # _R_* code per header name, -1: copied as is
        self.name_table = self._names.table     # what the fast path's scan marks fields by

    def continue_ids(self, old: RequestRewriter) -> None:
        """Go on numbering request ids where `old` (the rewriter of the config before a reload)
        stopped, so ids stay unique for the balancer's whole life."""
        self._rid_base = old._rid_base
        self._rid_counter = old._rid_counter

    def new_request_id(self) -> bytes:
        """base + the counter in hex, from a cached prefix per 4096 ids and a table of the last
        three digits (one concatenation per request instead of a %-format)."""
        n = self._rid_counter = self._rid_counter + 1
        block = n >> 12
        if block != self._rid_block_no:
            self._rid_block_no = block
            self._rid_block = self._rid_base + b"%x" % block
        return self._rid_block + _HEX3[n & 0xFFF]


    def rewrite(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                http11: bool, conn_ctx: ConnContext) -> RequestInfo:
        """Check framing and build the upstream head.

        Raises RequestRefused (400/413/417) when the request could be read differently by another
        parser or breaks a limit; the caller answers that status and closes the connection.
        """
        info = RequestInfo()
        # (Compiled, `parts.append(x)` is a list primitive; an `append = parts.append` alias
        # would be a bound-method call each time.)
        parts: list[bytes] = [method, b" ", target, b" HTTP/1.1\r\n"]
        host = b""
        hosts = 0
        odd: list[tuple[int, bytes, bytes]] | None = None
        for name, value in headers:
            code = self._names.code(name)
            if code == _R_HOST:
                hosts += 1
                host = value
            elif code >= 0:   # framing, hop-by-hop, forwarding, request id: `_rewrite_odd`
                if code == _R_DROP:
                    continue   # (Keep-Alive, TE, Trailer, Proxy-Authorization: never forwarded)
                if code == _R_CONN and value.lower() == b"keep-alive":
                    info.keep_alive = True   # what every browser sends: nothing else to do
                    continue
                if code == _R_CL:
                    # Read here for both paths (llhttp checked its digits and refused a second,
                    # differing one); the head gets it back last, normalised, as framing.
                    info.content_length = int(value)
                    continue
                if odd is None:
                    odd = [(code, name, value)]
                else:
                    odd.append((code, name, value))
                continue
            parts.append(name)
            parts.append(b": ")
            parts.append(value)
            parts.append(CRLF)
        # (One regex search: `bytes in bytes` first tries its argument as an int, raising and
        # clearing a TypeError each time, and `bytes.find` parses its arguments the slow way.)
        suspect = _SUSPECT_TARGET.search(target) is not None
        self._check_host_and_target(info, parts, host, hosts, target, suspect, http11)
        if odd is None:
            return self._finish_plain(info, parts, conn_ctx)
        return self._rewrite_odd(info, parts, odd, conn_ctx)

    def rewrite_raw(self, method: bytes, target: bytes, raw: bytes, fields_start: int, head_end: int,
                    cands: list[tuple[int, bytes, int, int]], suspect: bool, http11: bool,
                    conn_ctx: ConnContext) -> RequestInfo | None:
        """`rewrite` for a head the fast path scanned (headscan.scan): the same checks and the same
        upstream head, from the raw bytes and the few fields `cands` names by their `_R_*` code
        (`suspect`: the scan saw a byte that makes the target need `check_target`). The fields
        between them are forwarded as they came. None: a field needs the general path
        (`rewrite`, with the field list), which the caller then takes."""
        info = RequestInfo()
        parts: list[bytes] = [method, b" ", target, b" HTTP/1.1\r\n"]
        host = b""
        hosts = 0
        at = fields_start
        for code, value, line_start, line_end in cands:
            if code == _R_HOST:
                hosts += 1
                host = value
                continue
            if code == _R_CONN and value.lower() == b"keep-alive":
                info.keep_alive = True
            elif code == _R_CL:
                info.content_length = int(value)   # (as `rewrite`: written last, normalised)
            elif code != _R_DROP:
                return None
            parts.append(raw[at:line_start])   # the line is cut: not forwarded
            at = line_end
        parts.append(raw[at:head_end - 2])
        self._check_host_and_target(info, parts, host, hosts, target, suspect, http11)
        return self._finish_plain(info, parts, conn_ctx)

    def _check_host_and_target(self, info: RequestInfo, parts: list[bytes], host: bytes, hosts: int,
                               target: bytes, suspect: bool, http11: bool) -> None:
        if hosts > 1 or (hosts == 0 and http11):
            raise RequestRefused(400, "missing or repeated Host")
        if hosts == 0:
            # An HTTP/1.0 request without Host goes upstream as HTTP/1.1, which needs one: empty,
            # as RFC 9112 §3.2 has a client send for a target without authority.
            parts += (b"Host", b": ", b"", CRLF)
        info.host = host
        if suspect:   # (a `%`, `#` or backslash: most targets have none)
            check_target(target)

    def _finish_plain(self, info: RequestInfo, parts: list[bytes], conn_ctx: ConnContext) -> RequestInfo:
        """The common request: nothing to merge, the per-connection tail is cached per Host
        (a cached Host was checked when it was cached)."""
        host = info.host
        tail_key = conn_ctx._tail_host
        if tail_key is not None and tail_key[0] == host and tail_key[1] == self.via:
            parts.append(conn_ctx._tail)
        else:
            check_host(host)
            parts.append(conn_ctx.tail_for(host, self.via))
        cl = info.content_length
        if cl > 0 and self.max_body_bytes and cl > self.max_body_bytes:
            raise RequestRefused(413, "body larger than limits.max_body_bytes")
        info.request_id = rid = self.new_request_id()
        parts.append(self.rid_prefix)
        parts.append(rid)
        if cl >= 0:   # (framing last, as the general path writes it)
            parts.append(b"\r\nContent-Length: " + str(cl).encode() + b"\r\n\r\n")
        else:
            parts.append(b"\r\n\r\n")
        info.head_bytes = b"".join(parts)
        return info

    def _rewrite_odd(self, info: RequestInfo, parts: list[bytes], odd: list[tuple[int, bytes, bytes]],
                     conn_ctx: ConnContext) -> RequestInfo:
        """Requests with framing, hop-by-hop, forwarding or request-id headers (the slow path)."""
        check_host(info.host)
        xff = xfh = fwd = via = xfp = b""
        trusted = conn_ctx.trusted
        conn_tokens: list[bytes] = []
        upgrade_value = b""
        upgrade_fields = 0
        for code, name, value in odd:
            if code == _R_TE:
                # llhttp accepts "gzip, chunked"; we re-frame the body, so only plain chunked
                # can pass without two readers disagreeing about the content.
                if info.chunked or value.strip().lower() != b"chunked":
                    raise RequestRefused(400, "Transfer-Encoding other than chunked")
                info.chunked = True
            elif code == _R_CONN:
                for tok in value.lower().split(b","):
                    tok = tok.strip()
                    if tok == b"close":
                        info.close = True
                    elif tok == b"upgrade":
                        info.upgrade = True
                    elif tok == b"keep-alive":
                        info.keep_alive = True
                    elif tok:
                        conn_tokens.append(tok)
            elif code == _R_UPGRADE:
                upgrade_fields += 1
                if value.strip():   # (one list: empty elements are allowed and mean nothing)
                    upgrade_value = value if not upgrade_value else upgrade_value + b", " + value
            elif code == _R_XFF:
                xff = value if not xff else xff + b", " + value
            elif code == _R_XFH:
                xfh = value
            elif code == _R_FWD:
                fwd = value if not fwd else fwd + b", " + value
            elif code == _R_VIA:
                via = value if not via else via + b", " + value
            elif code == _R_EXPECT:
                if value.lower() != b"100-continue":
                    raise RequestRefused(417, "unsupported Expect")
                info.expect_continue = True
            elif code == _R_RID:
                if not info.request_id and _VALID_REQUEST_ID.fullmatch(value) is not None:
                    info.request_id = value
            elif code == _R_XFP:
                xfp = value
            elif code == _R_TRUSTED and trusted:
                parts.append(name)
                parts.append(b": ")
                parts.append(value)
                parts.append(CRLF)
            # _R_DROP, and _R_TRUSTED from an untrusted peer: not forwarded (Content-Length
            # was read by `rewrite`)
        if info.content_length >= 0 and self.max_body_bytes and info.content_length > self.max_body_bytes:
            raise RequestRefused(413, "body larger than limits.max_body_bytes")
        if info.upgrade and upgrade_fields:
            # llhttp switches protocols on `Connection: upgrade` plus any Upgrade field: both
            # readers must agree, so the upgrade must name a protocol and carry no body (a body
            # would be read as the new protocol's bytes by one and as HTTP by the other).
            if not upgrade_value.strip(b" \t,"):
                raise RequestRefused(400, "empty Upgrade")
            if info.chunked or info.content_length > 0:
                raise RequestRefused(400, "Upgrade request with a body")
        if conn_tokens:
            # Headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1): rare, so rebuild.
            # Never Host: it is not the hop's to take away (and the app needs it).
            drop = set(conn_tokens)
            drop.discard(b"host")
            kept = [b"".join(parts[i:i + 4]) for i in range(4, len(parts), 4)]
            parts[4:] = [h for h in kept if h.split(b":", 1)[0].lower() not in drop]
        if info.upgrade and upgrade_value:
            parts.append(b"Connection: upgrade\r\nUpgrade: " + upgrade_value + CRLF)
        else:
            info.upgrade = False
        ip = conn_ctx.ip_bytes
        host = info.host
        parts.append(b"X-Forwarded-For: " + (xff + b", " + ip if (trusted and xff) else ip) + CRLF)
        if trusted and xff:
            info.client_ip = conn_ctx.client_from_chain(xff)
        if trusted and xfp.strip().lower() in (b"http", b"https"):
            # A trusted proxy terminated TLS in front of us: its scheme is the client's.
            parts.append(b"X-Forwarded-Proto: " + xfp.strip().lower() + CRLF)
        else:
            parts.append(conn_ctx.xfp_line)
        xf_host = xfh if (trusted and xfh) else host
        if xf_host:
            parts.append(b"X-Forwarded-Host: " + xf_host + CRLF)
        this_hop = conn_ctx.forwarded_for + (b';host="' + host + b'"' if host else b"")
        parts.append(b"Forwarded: " + (fwd + b", " + this_hop if (trusted and fwd) else this_hop) + CRLF)
        if self.via:
            parts.append(b"Via: " + (via + b", 1.1 taxiway" if via else b"1.1 taxiway") + CRLF)
        if not info.request_id:
            info.request_id = self.new_request_id()
        parts.append(self.rid_prefix + info.request_id + CRLF)
        if info.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif info.content_length >= 0:
            parts.append(b"Content-Length: %d\r\n" % info.content_length)
        parts.append(CRLF)
        info.head_bytes = b"".join(parts)
        return info


class ConnContext:
    """Per-client-connection bytes precomputed once at accept time."""

    __slots__ = ("_tail", "_tail_host", "forwarded_for", "ip", "ip_bytes", "is_trusted", "trusted",
                 "xfp_line")

    def __init__(self, ip: str, scheme: str, trusted: bool,
                 is_trusted: Callable[[str], bool] | None = None) -> None:
        self.ip = ip
        self.ip_bytes = ip.encode()
        self.trusted = trusted
        self.is_trusted = is_trusted
        self.xfp_line = b"X-Forwarded-Proto: " + scheme.encode() + CRLF
        node = f'"[{ip}]"' if ":" in ip else ip
        self.forwarded_for = f"for={node};proto={scheme}".encode()
        self._tail = b""
        self._tail_host: tuple[bytes, bool] | None = None

    def client_from_chain(self, xff: bytes) -> str:
        """The client a trusted proxy reports: the right-most X-Forwarded-For address that is
        not itself a trusted proxy (nginx's `real_ip_recursive on`). Addresses further left were
        written by whoever the first untrusted hop was, so they prove nothing. "" when the chain
        holds no usable address (the peer's own address then stands)."""
        for raw in reversed(xff.split(b",")):
            addr = raw.strip().decode("latin-1")
            if addr.startswith("[") and "]" in addr:
                addr = addr[1:addr.index("]")]
            elif addr.count(":") == 1:
                addr = addr.partition(":")[0]   # IPv4 with a port
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                return ""
            if self.is_trusted is None or not self.is_trusted(addr):
                return addr
        return ""

    def tail_for(self, host: bytes, via: bool) -> bytes:
        """X-Forwarded-*, Forwarded and Via for a request that carried none: cached per Host."""
        if self._tail_host is None or host != self._tail_host[0] or via != self._tail_host[1]:
            self._tail_host = (host, via)
            parts = [b"X-Forwarded-For: " + self.ip_bytes + CRLF, self.xfp_line]
            if host:
                parts.append(b"X-Forwarded-Host: " + host + CRLF)
                parts.append(b"Forwarded: " + self.forwarded_for + b';host="' + host + b'"' + CRLF)
            else:
                parts.append(b"Forwarded: " + self.forwarded_for + CRLF)
            if via:
                parts.append(b"Via: 1.1 taxiway\r\n")
            self._tail = b"".join(parts)
        return self._tail


# --------------------------------------------------------------------------------------------
# Response rewriting

_S_DROP: Final = 0
_S_CL: Final = 1
_S_DATE: Final = 2
_S_TE: Final = 3
_S_SEC: Final = 4
_S_CONN: Final = 5
_S_RARE: Final = 6        # a name only a rare head makes special (`close`: see `classify`)
_S_KEEP_ALIVE: Final = 7  # Keep-Alive: dropped like _S_DROP, but common enough for the fast path
_S_SEC_BASE: Final = 16   # _S_SEC_BASE + j: the j-th security name, in the fast path's table
# What `ResponseRewriter.classify` found among a response head's fields (bits). Everything
# but HEAD_OTHER the fast path (`rewrite_raw`) handles itself.
HEAD_CL: Final = 1        # Content-Length
HEAD_DATE: Final = 2      # Date
HEAD_OTHER: Final = 4     # a field only the general `rewrite` handles
HEAD_HOP: Final = 8       # `Connection: keep-alive` / `close`, `Keep-Alive`: lines to drop
HEAD_CHUNKED: Final = 16  # `Transfer-Encoding: chunked` (and no other coding): dropped, re-framed
HEAD_SEC_SHIFT: Final = 8  # bit 8 + i: the server sent the i-th security field (HSTS last)


def cut_line(name: bytes, value: bytes) -> bytes:
    """What `locate_cuts` looks for to cut one field out of a raw head: its whole line as llhttp
    reported it, with the line break before it (a value holds no CR or LF, so this matches only a
    real line). A server that wrote the line differently (no space after the colon, trailing
    spaces) makes the cut miss, and the head then goes the general way."""
    return b"\n" + name + b": " + value + b"\r\n"


def locate_cuts(head: bytes, lines: list[bytes]) -> list[int] | None:
    """The `cut` ranges `rewrite_raw` takes, for a head whose fields were reported one by one
    (the general path's callbacks): the `cut_line`s, in head order, found in `head`. None when
    one is not there as written; the head then needs the general rewrite. (The fast path has
    the ranges from the scan.)"""
    cut: list[int] = []
    at = 0
    for line in lines:
        i = head.find(line, at)
        if i < 0:
            return None
        cut.append(i + 1)   # (the line starts after the line break `cut_line` begins with)
        cut.append(i + len(line))
        at = i + len(line) - 1   # (the next line's break is this line's last byte)
    return cut

_HEX3: Final = [b"%03x" % i for i in range(4096)]   # request id suffixes


class ResponseRewriter:
    """Precomputed per-config pieces of the client response head (rebuilt on reload)."""

    def __init__(self, security: dict[str, str], served_by_header: str, hsts_max_age_s: float,
                 max_head_bytes: int = 64 * 1024) -> None:
        # A response head longer than this is refused (502) as it arrives, like nginx's "upstream
        # sent too big header": a server must not make the balancer buffer without bound.
        self.max_head_bytes = max_head_bytes
        self.special: dict[bytes, int] = {
            b"connection": _S_CONN, b"keep-alive": _S_KEEP_ALIVE, b"proxy-connection": _S_DROP,
            b"transfer-encoding": _S_TE, b"trailer": _S_DROP, b"upgrade": _S_DROP, b"te": _S_DROP,
            b"proxy-authenticate": _S_DROP, b"content-length": _S_CL, b"date": _S_DATE,
        }
        self.security: list[tuple[bytes, bytes]] = []
        for name, value in security.items():
            if value:
                self.security.append((name.lower().encode(), name.encode() + b": " + value.encode() + CRLF))
                self.special[name.lower().encode()] = _S_SEC
        # The usual case (the app set none of them) appends one precomputed block; a head with
        # some of them (Django sets three) gets the block without those, cached per set.
        self.security_block = b"".join(line for _, line in self.security)
        self._sec_bits = {lname: 1 << (HEAD_SEC_SHIFT + i) for i, (lname, _) in enumerate(self.security)}
        self._sec_blocks: dict[int, bytes] = {}
        self.served_by = served_by_header.encode()
        self._served_by_lines: dict[str, bytes] = {}
        self.hsts_line = b"Strict-Transport-Security: max-age=%d\r\n" % int(hsts_max_age_s) \
            if hsts_max_age_s > 0 else b""
        self._hsts_bit = 1 << (HEAD_SEC_SHIFT + len(self.security))
        if self.hsts_line:
            self.special[b"strict-transport-security"] = _S_SEC
            # (headers.security may name HSTS too: the server's own then stands for both)
            sts = b"strict-transport-security"
            self._sec_bits[sts] = self._sec_bits.get(sts, 0) | self._hsts_bit
        # A field named `close` is hop-by-hop only when `Connection: close` names it: a head that
        # has one goes the general way, which reads Connection's tokens.
        self.special[b"close"] = _S_RARE
        # `classify` sees every response header name: most are ruled out by their length alone
        # (one byte read, inline: a call to NameCodes.code per field costs ~130 instructions),
        # only names as long as a special one go on to the name table.
        lengths = {len(n) for n in self.special}
        self._cand_len = bytes(1 if n in lengths else 0 for n in range(max(lengths) + 1))
        # The fast path's codes: `special`'s, but each security name has its own, so the scan's
        # code alone gives its bits (no name to lower-case and look up).
        scan_codes = dict(self.special)
        self._sec_code_bits: list[int] = []
        for lname, bits in self._sec_bits.items():
            scan_codes[lname] = _S_SEC_BASE + len(self._sec_code_bits)
            self._sec_code_bits.append(bits)
        self._names = NameCodes(scan_codes)
        self.name_table = self._names.table   # what the upstream's scan_response names fields by

    def served_by_line(self, server_name: str) -> bytes:
        line = self._served_by_lines.get(server_name)
        if line is None:
            line = self._served_by_lines[server_name] = self.served_by + b": " + server_name.encode() + CRLF
        return line

    def classify(self, name: bytes, value: bytes = b"") -> int:
        """`classify_code` for a field by its name: the upstream connection's general path calls
        it for every field httptools reports. Most names are ruled out by their length alone,
        the others looked up in the name table."""
        n = len(name)
        cand = self._cand_len
        if n >= len(cand) or not cand[n]:
            return 0
        return self.classify_code(self._names.code(name), value)

    def classify_code(self, code: int, value: bytes) -> int:
        """What one response header field means to `rewrite_raw` (HEAD_* bits, 0 for most), by
        its code in `name_table` (-1: no special name), as `headscan.scan_response` reports the
        fields it names. The value matters for three names only: `Connection: keep-alive` or
        `close` names no other field (nginx, Node and gunicorn send one), a `Keep-Alive` is
        dropped whatever it says, and a transfer coding of just `chunked` is re-framed; anything
        else goes the general way."""
        if code < 0:
            return 0
        if code == _S_CL:
            return HEAD_CL
        if code == _S_DATE:
            return HEAD_DATE
        if code == _S_CONN:
            v = value.lower()
            return HEAD_HOP if v == b"keep-alive" or v == b"close" else HEAD_OTHER
        if code == _S_KEEP_ALIVE:
            return HEAD_HOP
        if code == _S_TE:
            return HEAD_CHUNKED if value.lower() == b"chunked" else HEAD_OTHER
        if code >= _S_SEC_BASE:
            return self._sec_code_bits[code - _S_SEC_BASE]
        return HEAD_OTHER

    def rewrite_raw(self, status: int, head: bytes, flags: int, ctx: ResponseContext,
                    out: list[bytes], cut: list[int] | None = None) -> None:
        """Like `rewrite`, from the raw head (status line and header lines, each ending in CRLF,
        as validated by llhttp) and the `classify` bits of its names; appends the client's head
        to `out` (the connection's write buffer: no join here). The usual response (no
        hop-by-hop, framing or security header) keeps its header lines as received and gets
        taxiway's additions appended: no per-header work. `cut`: where the lines of the
        hop-by-hop and framing fields the HEAD_HOP / HEAD_CHUNKED bits stand for are in `head`
        ([start, stop) of each line with its CRLF, flat, in order), so the bytes around them go
        out as slices (a search for each line cost about 1,400 instructions).
        """
        if flags & HEAD_OTHER or status == 101 or (flags & HEAD_CHUNKED and flags & HEAD_CL) \
                or (flags & (HEAD_HOP | HEAD_CHUNKED) and not cut):
            out.append(self.rewrite(status, split_head(head), ctx))
            return
        if flags & HEAD_CL:
            ctx.content_length = 0   # present (its value only matters to httptools' framing)
        if flags & HEAD_CHUNKED:
            ctx.upstream_chunked = True
        out.append(STATUS_LINES.get(status) or status_line(status))
        fields = head.partition(b"\n")[2]   # (`partition` takes one argument: cheaper than `find`)
        if cut is None:
            out.append(fields)
        else:
            at = len(head) - len(fields)
            for i in range(0, len(cut), 2):
                out.append(head[at:cut[i]])
                at = cut[i + 1]
            out.append(head[at:])
        sec = flags >> HEAD_SEC_SHIFT
        if not sec:
            out.append(self.security_block)
            if ctx.https and self.hsts_line:
                out.append(self.hsts_line)
        else:
            out.append(self._security_block_without(sec))
            if ctx.https and self.hsts_line and not flags & self._hsts_bit:
                out.append(self.hsts_line)
        self._finish(out, status, bool(flags & HEAD_DATE), ctx)

    def _security_block_without(self, sent: int) -> bytes:
        """taxiway's security lines less those the server sent (`sent`: bit i for the i-th)."""
        block = self._sec_blocks.get(sent)
        if block is None:
            block = self._sec_blocks[sent] = b"".join(
                line for i, (_, line) in enumerate(self.security) if not sent & (1 << i))
        return block

    def rewrite(self, status: int, headers: list[tuple[bytes, bytes]], ctx: ResponseContext) -> bytes:
        """Build the response head for the client and fill in `ctx` (framing found upstream)."""
        special = self.special
        parts: list[bytes] = [STATUS_LINES.get(status) or status_line(status)]
        seen_sec: list[bytes] | None = None
        has_date = False
        # Fields the server named in Connection are hop-by-hop too (RFC 9110 §7.6.1); on a 101
        # they describe the upgrade and are the client's to read.
        named: set[bytes] = set()
        if status != 101:
            for name, value in headers:
                if name.lower() == b"connection":
                    named.update(t.strip() for t in value.lower().split(b","))
        for name, value in headers:
            code = special.get(name.lower())
            if code is None or code == _S_RARE:
                if named and name.lower() in named:
                    continue
                parts.extend((name, b": ", value, CRLF))
            elif code == _S_CL:
                ctx.content_length = int(value)
                parts.extend((name, b": ", value, CRLF))
            elif code == _S_DATE:
                has_date = True
                parts.extend((name, b": ", value, CRLF))
            elif code == _S_TE:
                codings = [c.strip() for c in value.lower().split(b",") if c.strip()]
                ctx.upstream_chunked = bool(codings) and codings[-1] == b"chunked"
                # Codings other than chunked (gzip, ...) describe the body the client gets: kept,
                # with the body re-chunked after them (RFC 9112 §6.1).
                other = [c for c in codings if c != b"chunked"]
                if other:
                    ctx.te_codings = b", ".join(other)
            elif code == _S_SEC:
                if seen_sec is None:
                    seen_sec = [name.lower()]
                else:
                    seen_sec.append(name.lower())
                parts.extend((name, b": ", value, CRLF))
            elif status == 101 and (code == _S_CONN or name.lower() == b"upgrade"):
                parts.extend((name, b": ", value, CRLF))
        if seen_sec is None:
            parts.append(self.security_block)
            if ctx.https and self.hsts_line:
                parts.append(self.hsts_line)
        else:
            for lname, line in self.security:
                if lname not in seen_sec:
                    parts.append(line)
            if ctx.https and self.hsts_line and b"strict-transport-security" not in seen_sec:
                parts.append(self.hsts_line)
        self._finish(parts, status, has_date, ctx)
        return b"".join(parts)

    def _finish(self, parts: list[bytes], status: int, has_date: bool, ctx: ResponseContext) -> None:
        """The tail both rewriters share, appended to `parts`: Date, X-Served-By, extra lines,
        framing towards the client (RFC 9112 §6.3: no body, Content-Length, or re-chunked) and
        the end of the head. (Compiled by mypyc, the extra call costs next to nothing.)"""
        if not has_date:
            parts.append(ctx.date_line)
        if self.served_by:
            parts.append(self.served_by_line(ctx.server_name))
        if ctx.extra:
            parts.extend(ctx.extra)
        if ctx.no_body or status == 101:
            pass
        elif ctx.te_codings:
            # (An HTTP/1.0 client cannot be sent a transfer coding: forward.py answers it 502.)
            ctx.chunked_out = True
            parts.append(b"Transfer-Encoding: " + ctx.te_codings + b", chunked\r\n")
        elif ctx.content_length < 0:
            if ctx.client_http11:
                ctx.chunked_out = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                ctx.close = True
        if status == 101:
            parts.append(CRLF)
        elif ctx.close:
            parts.append(b"Connection: close\r\n\r\n")
        elif not ctx.client_http11:   # an HTTP/1.0 client that asked to keep the connection
            parts.append(b"Connection: keep-alive\r\n\r\n")
        else:
            parts.append(CRLF)


def split_head(head: bytes) -> list[tuple[bytes, bytes]]:
    """(name, value) pairs of a raw head validated by llhttp, as httptools' on_header gives them
    (leading whitespace of the value removed)."""
    headers = []
    for line in head.split(b"\r\n")[1:-1]:
        name, _, value = line.partition(b":")
        headers.append((name, value.lstrip(b" \t")))
    return headers


class ResponseContext:
    """Inputs and outputs of `ResponseRewriter.rewrite` for one response (class defaults: cheap).

    `forward.Exchange` derives from it, so the rewriter reads and fills in the exchange itself
    (one object less per request; compiled, the fields are native struct slots, not dict lookups).
    """

    content_length = -1
    upstream_chunked = False
    te_codings = b""          # transfer codings other than chunked the server applied
    chunked_out = False
    https = False
    extra: list[bytes] | None = None
    no_body = False
    close = False
    client_http11 = True
    date_line = b""
    server_name = ""

    def __init__(self, no_body: bool, close: bool, client_http11: bool, date_line: bytes,
                 server_name: str) -> None:
        self.no_body = no_body
        self.close = close
        self.client_http11 = client_http11
        self.date_line = date_line
        self.server_name = server_name
