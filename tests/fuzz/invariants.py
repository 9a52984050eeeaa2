"""What the fuzz targets check, as pure functions over bytes: no sockets, no asyncio, no clock.

Rules of this module:
1. A check returns a list of `Violation`s (empty: the invariant holds). Each names its invariant
   (`kind`, one of `KINDS`), so a hand run can let a known, already reported one pass
   (`TAXIWAY_FUZZ_ALLOW`) and go on looking for others, while CI lets none pass.
2. httptools (llhttp) is the oracle for "parses as": the parser taxiway itself uses, so a stream
   it reads one way here is the stream taxiway read. Whatever llhttp accepts but a second reader
   could take differently (a second Host, a Transfer-Encoding other than chunked, a `#` or `\\` in
   the target) is what `check_forwarded_head` looks for in what the upstream received.

Theory of operation: `RequestStream` is llhttp's reading of a byte stream of requests (the fuzz
input as the client meant it, or what the upstream received): heads in order, how many messages
began and completed, and whether it broke or upgraded. `check_forwarded_head` is invariant (b) of
issue 11 for one head; `check_rewritten` compares what `RequestRewriter.rewrite` built with the
head it was given; `ResponseReader` splits what the client received into complete responses, the
way a client that knows its own request methods reads them (a HEAD answer has no body).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

import httptools

# Every invariant, by the name a violation carries (and TAXIWAY_FUZZ_ALLOW takes).
KINDS: Final = {
    # (a) taxiway itself
    "internal-error": "taxiway logged an exception, counted internal_errors, or a callback raised",
    "unresponsive": "a normal request on a new connection got no 200 within 2 s",
    "no-answer": "a complete request got neither a response nor a closed connection",
    "unexpected-exception": "RequestRewriter.rewrite raised something other than RequestRefused",
    # (b) what the upstream received
    "unparsable-forward": "the upstream could not parse what taxiway sent as HTTP/1.1",
    "version": "a forwarded request is not HTTP/1.1",
    "host-count": "a forwarded request has no Host or more than one",
    "te-not-chunked": "a forwarded Transfer-Encoding other than exactly one `chunked`",
    "cl-and-te": "a forwarded request with both Content-Length and Transfer-Encoding",
    "cl-count": "a forwarded request with more than one Content-Length",
    "bad-target": "a forwarded target with `#`, or `\\` in its path",
    "target-escape": "a forwarded path with %5c, %00-%1f or %25XX (double encoding)",
    "target-form": "a forwarded target neither origin-form nor `OPTIONS *`",
    "rid-count": "a forwarded request without exactly one request id",
    "not-from-taxiway": "the upstream received a request taxiway did not write (smuggled)",
    "extra-upstream-request": "the upstream received more requests than the client sent heads",
    "upgrade-hold": "bytes after an Upgrade request reached the upstream before its 101",
    "hop-by-hop-forwarded": "a hop-by-hop field of the client was forwarded",
    "header-changed": "an end-to-end field of the client was dropped, changed, or reordered among its name",
    "framing-mismatch": "the forwarded framing differs from what RequestInfo says",
    # (c) what the client received
    "bad-response": "the client received bytes that are not complete HTTP/1.1 responses",
    "extra-response": "more responses than requests",
    "head-body": "a response to HEAD carries a body (RFC 9110 §9.3.2): the client misreads what follows",
    "wrong-response": "a response answers a request this client did not send, or out of order",
    "self-status": "taxiway answered by itself with a status outside 400..431 and 505",
}

# Fields a proxy manages itself (RFC 9110 §7.6.1 hop-by-hop, framing, forwarding, request id):
# the client's copies are dropped or replaced, every other field goes through unchanged.
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authorization",
})
MANAGED: Final = HOP_BY_HOP | {
    b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
    b"x-forwarded-host", b"forwarded", b"via", b"x-request-id",
}
# What issue 11's target rules refuse in percent-encoded form: an encoded backslash, an encoded
# control character, an encoded percent followed by two hex digits (decoded twice, it is a third).
TARGET_ESCAPE: Final = re.compile(rb"%5[cC]|%[01][0-9a-fA-F]|%25[0-9a-fA-F]{2}")
MAX_RESPONSE_HEAD_BYTES: Final = 64 * 1024


class Violation(Exception):
    """One broken invariant: `kind` (a key of KINDS) and what was seen."""

    def __init__(self, kind: str, detail: str) -> None:
        assert kind in KINDS, kind
        super().__init__(f"[{kind}] {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class ParsedHead:
    """One request head as llhttp delivered it (names in their original case)."""

    method: bytes
    url: bytes
    version: str
    headers: list[tuple[bytes, bytes]]

    def values(self, lower_name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == lower_name]


class RequestStream:
    """llhttp's reading of a stream of requests, fed in pieces (httptools callbacks).

    `on_head` and `on_complete` are called as heads and messages complete; after an error or an
    upgrade nothing more is parsed (the rest is not HTTP), as in taxiway's own client protocol.
    """

    def __init__(self, on_head: object = None, on_complete: object = None) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.heads: list[ParsedHead] = []
        self.begun = 0
        self.completed = 0
        self.error: str | None = None
        self.upgraded = False
        self.in_message = False
        self._on_head = on_head
        self._on_complete = on_complete
        self._url = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []

    def feed(self, data: bytes) -> bytes:
        """Parse `data`; returns the bytes after an upgrade (the tunnel's first bytes), else b""."""
        if self.error is not None or self.upgraded:
            return b""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = True
            return data[exc.args[0]:]
        except httptools.HttpParserError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        return b""

    @property
    def partial(self) -> bool:
        """Did the stream end inside a message (head or body still to come)?"""
        return self.in_message and self.error is None

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.begun += 1
        self.in_message = True
        self._url = bytearray()
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        head = ParsedHead(self.parser.get_method(), bytes(self._url), self.parser.get_http_version(),
                          self._headers)
        self._headers = []   # (what follows a chunked body are trailer fields)
        self.heads.append(head)
        if callable(self._on_head):
            self._on_head(head)

    def on_message_complete(self) -> None:
        self.completed += 1
        self.in_message = False
        if callable(self._on_complete):
            self._on_complete(self.heads[-1])


def read_client_stream(data: bytes) -> RequestStream:
    """What a client byte stream is, read whole as taxiway's parser reads it in pieces."""
    stream = RequestStream()
    stream.feed(data)
    return stream


# --------------------------------------------------------------------------------------------
# (b) one forwarded head


def check_forwarded_head(head: ParsedHead, rid_name: bytes = b"x-request-id",
                         check_target: bool = True) -> list[Violation]:
    """Invariant (b) of issue 11 for one request head an upstream received.

    `check_target`: also the target rules (the pure rewriter target passes False: the request
    target is checked by the client protocol, before `rewrite`).
    """
    out: list[Violation] = []
    where = f"{head.method!r} {head.url[:200]!r}"
    if head.version != "1.1":
        out.append(Violation("version", f"HTTP/{head.version}: {where}"))
    hosts = head.values(b"host")
    if len(hosts) != 1:
        out.append(Violation("host-count", f"{len(hosts)} Host fields {hosts!r}: {where}"))
    tes = head.values(b"transfer-encoding")
    if tes and (len(tes) != 1 or tes[0].strip(b" \t").lower() != b"chunked"):
        out.append(Violation("te-not-chunked", f"Transfer-Encoding {tes!r}: {where}"))
    cls = head.values(b"content-length")
    if tes and cls:
        out.append(Violation("cl-and-te", f"Content-Length {cls!r} with TE {tes!r}: {where}"))
    if len(cls) > 1:
        out.append(Violation("cl-count", f"Content-Length {cls!r}: {where}"))
    rids = head.values(rid_name)
    if len(rids) != 1:
        out.append(Violation("rid-count", f"{len(rids)} request ids {rids!r}: {where}"))
    if check_target:
        url = head.url
        # (a `\\` is refused in the path only: in a query it is the app's data, and browsers send
        # it unescaped there, WHATWG URL's query percent-encode set)
        if b"#" in url or b"\\" in url.partition(b"?")[0]:
            out.append(Violation("bad-target", where))
        if TARGET_ESCAPE.search(url.partition(b"?")[0]):   # (the query is the app's data)
            out.append(Violation("target-escape", where))
        if not (url[:1] == b"/" or (url == b"*" and head.method == b"OPTIONS")):
            out.append(Violation("target-form", where))
    return out


def parse_one_head(raw: bytes) -> tuple[ParsedHead | None, list[Violation]]:
    """`raw` (an upstream request head, body not included) as exactly one llhttp request head."""
    stream = RequestStream()
    stream.feed(raw)
    if stream.error is not None:
        return None, [Violation("unparsable-forward", f"{stream.error}: {raw[:400]!r}")]
    if len(stream.heads) != 1 or stream.begun != 1:
        return None, [Violation("unparsable-forward",
                                f"{len(stream.heads)} heads, {stream.begun} messages in {raw[:400]!r}")]
    return stream.heads[0], []


def connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    """Lower-case field names a client listed in Connection (hop-by-hop too, RFC 9110 §7.6.1)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip(b" \t") for t in value.lower().split(b","))
    tokens.discard(b"")
    return tokens


def by_name(headers: list[tuple[bytes, bytes]]) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Fields grouped by lower-case name, each group in its received order."""
    groups: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for name, value in headers:
        groups.setdefault(name.lower(), []).append((name, value))
    return groups


def check_rewritten(client: ParsedHead, head_bytes: bytes, host: bytes, content_length: int,
                    chunked: bool, upgrade: bool, request_id: bytes,
                    rid_name: bytes = b"x-request-id",
                    also_dropped: frozenset[bytes] = frozenset()) -> list[Violation]:
    """What `RequestRewriter.rewrite` built (`head_bytes` and the RequestInfo fields passed in)
    against the client head it was given: invariant (b) plus the proxy's field rules.

    `also_dropped`: lower-case names the proxy's policy drops for this peer on top of MANAGED
    (http1.CLIENT_CLAIMS from an untrusted peer): those may be missing, never changed.
    """
    fwd, out = parse_one_head(head_bytes)
    if fwd is None:
        return out
    out += check_forwarded_head(fwd, rid_name, check_target=False)
    if fwd.values(b"host") not in ([host], []):
        out.append(Violation("framing-mismatch", f"Host {fwd.values(b'host')!r}, info.host {host!r}"))
    if fwd.method != client.method or fwd.url != client.url:
        out.append(Violation("header-changed", f"request line {fwd.method!r} {fwd.url!r}"))
    tes, cls = fwd.values(b"transfer-encoding"), fwd.values(b"content-length")
    if chunked != bool(tes) or (not chunked and (cls != ([b"%d" % content_length]
                                                         if content_length >= 0 else []))):
        out.append(Violation("framing-mismatch", f"TE {tes!r} CL {cls!r}; info: chunked={chunked} "
                                                 f"content_length={content_length}"))
    if fwd.values(rid_name) != [request_id]:
        out.append(Violation("rid-count", f"{fwd.values(rid_name)!r}, info {request_id!r}"))
    for name, value in fwd.headers:
        lname = name.lower()
        generated = lname == b"transfer-encoding" or (upgrade and (
            lname == b"upgrade" or (lname, value.lower()) == (b"connection", b"upgrade")))
        if lname in HOP_BY_HOP and not generated:
            out.append(Violation("hop-by-hop-forwarded", f"{name!r}: {value[:100]!r}"))
    dropped = MANAGED | also_dropped | connection_tokens(client.headers)
    # Order matters among fields of one name only (RFC 9110 §5.3): compare per name.
    want = by_name([(n, v) for n, v in client.headers if n.lower() not in dropped])
    got = by_name([(n, v) for n, v in fwd.headers if n.lower() not in MANAGED | also_dropped])
    if also_dropped and any(n.lower() in also_dropped for n, _ in fwd.headers):
        out.append(Violation("header-changed", f"a field of {sorted(also_dropped)} went through"))
    if got != want:
        diff = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))[:10]
        out.append(Violation("header-changed", "; ".join(f"{k!r}: forwarded {got.get(k)!r}, expected "
                                                         f"{want.get(k)!r}" for k in diff)))
    return out


# --------------------------------------------------------------------------------------------
# (c) what the client received


@dataclass
class ClientResponse:
    """One final response the client received (1xx other than 101 are skipped)."""

    status: int
    version: str
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def value(self, lower_name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n.lower() == lower_name:
                return v
        return None


class _ResponseSink:
    """httptools callbacks for one response."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.head_done = False
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


@dataclass
class ResponseReader:
    """Splits a client's received bytes into complete responses, in order.

    One fresh llhttp parser per response, so that a HEAD answer can end at its head (httptools
    cannot be told the request method). `methods[i]` is the method of the i-th request; a
    response beyond them (an error for a broken stream) is read as answering a GET.
    """

    methods: list[bytes]
    buf: bytearray = field(default_factory=bytearray)
    responses: list[ClientResponse] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    upgraded: bool = False
    eof: bool = False

    def feed(self, data: bytes) -> None:
        self.buf += data
        self._split()

    def feed_eof(self) -> None:
        """The connection closed: what is left must be a body delimited by the close, or nothing."""
        self.eof = True
        self._split()
        if self.buf and not self.upgraded:
            self.violations.append(Violation("bad-response", f"incomplete response at close: "
                                                             f"{bytes(self.buf[:300])!r}"))
            self.buf.clear()

    def _split(self) -> None:
        while self.buf and not self.upgraded and not self.violations:
            used = self._one()
            if not used:
                return
            del self.buf[:used]

    def _one(self) -> int:
        """Parse the response at the start of `buf`; the bytes it used, 0 if more are needed."""
        buf = bytes(self.buf)
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_RESPONSE_HEAD_BYTES:
                self.violations.append(Violation("bad-response", f"no end of head: {buf[:300]!r}"))
            return 0
        head_len = end + 4
        sink = _ResponseSink()
        parser = httptools.HttpResponseParser(sink)
        try:
            parser.feed_data(buf[:head_len])
        except httptools.HttpParserUpgrade:
            self.upgraded = True
        except httptools.HttpParserError as exc:
            self.violations.append(Violation("bad-response", f"{exc}: {buf[:300]!r}"))
            return 0
        status = parser.get_status_code()
        if not sink.head_done:   # (llhttp accepted a prefix only: cannot be, the head ends in CRLFCRLF)
            self.violations.append(Violation("bad-response", f"head not complete: {buf[:300]!r}"))
            return 0
        if 100 <= status < 200 and status != 101:
            return head_len   # interim (100 Continue): the final response follows
        resp = ClientResponse(status, parser.get_http_version(), sink.headers, b"")
        i = len(self.responses)
        method = self.methods[i] if i < len(self.methods) else b"GET"
        tes = [v for n, v in sink.headers if n.lower() == b"transfer-encoding"]
        cls = [v for n, v in sink.headers if n.lower() == b"content-length"]
        if resp.version != "1.1":
            self.violations.append(Violation("bad-response", f"HTTP/{resp.version} response"))
        if (tes and cls) or len(cls) > 1:
            self.violations.append(Violation("bad-response", f"framing TE {tes!r} CL {cls!r}"))
        used = head_len
        if method == b"HEAD" and not self.upgraded:
            after = buf[head_len:head_len + 5]
            if after and not b"HTTP/".startswith(after):
                # What follows a HEAD answer must be the next response: these bytes are a body.
                n = int(cls[0]) if cls else len(buf) - head_len
                self.violations.append(Violation("head-body", f"{status} to HEAD with a body: "
                                                              f"{buf[head_len:head_len + n][:200]!r}"))
                used = head_len + n
        elif self.upgraded or sink.complete:
            pass
        elif cls:
            used = head_len + int(cls[0])
            if len(buf) < used:
                return 0
            parser.feed_data(buf[head_len:used])
        elif tes:
            # Chunked: byte by byte until llhttp says the message ended (bodies here are small).
            while not sink.complete:
                if used >= len(buf):
                    return 0
                try:
                    parser.feed_data(buf[used:used + 1])
                except httptools.HttpParserError as exc:
                    self.violations.append(Violation("bad-response", f"chunked body: {exc}"))
                    return 0
                used += 1
        else:
            if not self.eof:
                return 0   # delimited by the close
            parser.feed_data(buf[head_len:])
            used = len(buf)
        resp.body = bytes(sink.body)
        self.responses.append(resp)
        return used

