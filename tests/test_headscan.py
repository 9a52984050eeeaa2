"""The head scanner (proxy/headscan.py, proxy/_headscan.c) and the fast paths built on it.

What a user would notice: a field that reaches the app (or the client) changed, lost or in
another order; a pipelined request answered out of turn or read from the wrong byte (the fast
path must know where every message starts); a head in several reads, or an unusual one, treated
differently from before; a chunked answer's trailers lost once a connection has served plain
answers. The C scanner and its Python twin must give the same answer for every input.
"""

from __future__ import annotations

import random
import socket

import pytest

import taxiway
from taxiway.proxy import headscan
from taxiway.proxy.http1 import RequestRewriter, ResponseRewriter
from tests.proxy_support import (
    Client,
    HeadRecorder,
    InProcess,
    RawServer,
    make_config,
    read_request_head,
    wait_until,
)

REQUEST_REWRITER = RequestRewriter("X-Request-Id", False, 0)
TABLE = REQUEST_REWRITER.name_table
RESPONSE_TABLE = ResponseRewriter({"X-Frame-Options": "DENY"}, "X-Served-By", 0).name_table
CODE = REQUEST_REWRITER.special             # lower-case name -> the code a candidate carries

try:
    from taxiway.proxy import _headscan
    IMPLEMENTATIONS = [("python", headscan.scan_py, headscan.fields_py),
                       ("c", _headscan.scan, _headscan.fields)]
    RESPONSE_SCANNERS = [("python", headscan.scan_response_py), ("c", _headscan.scan_response)]
except ImportError:   # (the sources build: no C scanner was compiled)
    IMPLEMENTATIONS = [("python", headscan.scan_py, headscan.fields_py)]
    RESPONSE_SCANNERS = [("python", headscan.scan_response_py)]

BROWSER = (b"GET /flights?from=ams HTTP/1.1\r\n"
           b"Host: shop.example\r\n"
           b"Connection: keep-alive\r\n"
           b"User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
           b"Accept: text/html,application/xhtml+xml;q=0.9\r\n"
           b"Accept-Encoding: gzip, deflate, br\r\n"
           b"Cookie: session=abc; theme=dark\r\n"
           b"\r\n")


NGINX_ANSWER = (b"HTTP/1.1 200 OK\r\n"
                b"Server: nginx/1.22.1\r\n"
                b"Date: Wed, 02 Dec 2026 12:00:00 GMT\r\n"
                b"Content-Type: text/html\r\n"
                b"Content-Length: 5\r\n"
                b"Last-Modified: Tue, 01 Dec 2026 08:00:00 GMT\r\n"
                b"Connection: keep-alive\r\n"
                b"ETag: \"6756-5\"\r\n"
                b"Accept-Ranges: bytes\r\n"
                b"\r\n")


@pytest.fixture(params=IMPLEMENTATIONS, ids=[i[0] for i in IMPLEMENTATIONS])
def impl(request):
    return request.param


@pytest.fixture(params=RESPONSE_SCANNERS, ids=[i[0] for i in RESPONSE_SCANNERS])
def scan_response(request):
    return request.param[1]


def test_a_browser_head_marks_only_the_fields_the_proxy_rewrites(impl) -> None:
    _, scan, fields = impl
    found = scan(BROWSER, 0, TABLE)
    assert found is not None
    fields_start, head_end, count, field_bytes, version, cands, suspect = found
    assert BROWSER[:fields_start] == b"GET /flights?from=ams HTTP/1.1\r\n"
    assert head_end == len(BROWSER) and count == 6 and version == 11 and not suspect
    pairs = fields(BROWSER, fields_start, head_end - 2)
    assert field_bytes == sum(len(n) + len(v) + 4 for n, v in pairs)
    # The others are copied as they are; the two come with their rewriter codes.
    assert [c for c, *_ in cands] == [CODE[b"host"], CODE[b"connection"]]
    host = cands[0]
    assert host[1] == b"shop.example" and BROWSER[host[2]:host[3]] == b"Host: shop.example\r\n"
    assert pairs[2] == (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64)")


@pytest.mark.parametrize("head, expected", [
    # (fields_start, head_end, count, version) for plain heads
    (b"GET / HTTP/1.1\r\n\r\n", (16, 18, 0, 11)),
    (b"\r\n\r\nGET / HTTP/1.0\r\nA: b\r\n\r\n", (20, 28, 1, 10)),   # empty lines first: skipped
    (b"GET / HTTP/1.1\r\nA:\t b \t\r\n\r\n", (16, 27, 1, 11)),       # OWS around the value
    (b"GET / HTTP/2.0\r\nA: b\r\n\r\nrest", (16, 24, 1, 20)),        # version told, not judged
])
def test_plain_heads(impl, head: bytes, expected: tuple[int, int, int, int]) -> None:
    _, scan, fields = impl
    found = scan(head, 0, TABLE)
    assert found is not None and (found[0], found[1], found[2], found[4]) == expected
    if found[2]:
        assert fields(head, found[0], found[1] - 2)[0] == (b"A", b"b")


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nA: b\r\n",                       # no empty line yet
    b"GET / HTTP/1.1\nA: b\r\n\r\n",                     # bare LF ending the request line
    b"GET / HTTP/1.1\r\nA: b\n\r\n",                     # bare LF ending a field
    b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",                # a CR inside a line
    b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n",             # a folded line
    b"GET / HTTP/1.1\r\nA : b\r\n\r\n",                  # whitespace before the colon
    b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
    b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
    b"GET / HTTP/1.1\r\nA(b): c\r\n\r\n",                # not a token
    b"GET /\r\n\r\n",                                    # no version
    b"GET / HTTP/1.x\r\n\r\n",
    b"GET / HTTP/1.1 \r\n\r\n",
])
def test_anything_but_plain_and_strict_is_left_to_the_general_path(impl, head: bytes) -> None:
    _, scan, _ = impl
    assert scan(head, 0, TABLE) is None


def test_bad_arguments_are_errors_not_crashes(impl) -> None:
    _, scan, fields = impl
    with pytest.raises(ValueError):
        scan(BROWSER, len(BROWSER) + 1, TABLE)
    with pytest.raises(ValueError):
        scan(BROWSER, 0, b"short")
    with pytest.raises(ValueError):
        fields(BROWSER, 10, 5)


@pytest.mark.parametrize("name, code", [
    (b"Host", "host"), (b"HOST", "host"), (b"hOsT", "host"), (b"Content-Length", "content-length"),
    (b"x-request-id", "x-request-id"), (b"X-Forwarded-For", "x-forwarded-for"), (b"Via", "via"),
    (b"TE", "te"),
    # Same length and first letter as a special name, but another name: copied as it is.
    (b"Hose", None), (b"Vit", None), (b"Content-Lengtx", None), (b"Cookie", None), (b"Ta", None),
    (b"X" * 63, None), (b"X" * 64, None),
])
def test_fields_come_with_their_rewriter_code_whatever_their_case(impl, name: bytes, code) -> None:
    _, scan, _ = impl
    head = b"GET / HTTP/1.1\r\n" + name + b": v\r\n\r\n"
    found = scan(head, 0, TABLE)
    assert found is not None
    assert found[5] == ([] if code is None else [(CODE[code.encode()], b"v", 16, len(head) - 2)])


@pytest.mark.parametrize("line, suspect", [
    (b"GET / HTTP/1.1", False), (b"GET /a/b?c=d&e=f HTTP/1.1", False),
    (b"GET /a%2fb HTTP/1.1", True), (b"GET /a#b HTTP/1.1", True), (b"GET /a\\b HTTP/1.1", True),
    (b"GET /?q=%20 HTTP/1.1", True),    # (the query too: check_target reads the fragment there)
    (b"G#T / HTTP/1.1", True),          # a false alarm costs only the check
])
def test_the_scan_tells_which_targets_need_the_target_check(impl, line: bytes, suspect: bool) -> None:
    _, scan, _ = impl
    found = scan(line + b"\r\nHost: a\r\n\r\n", 0, TABLE)
    assert found is not None and found[6] is suspect


def test_a_name_table_takes_lower_case_names_and_byte_codes_only() -> None:
    with pytest.raises(ValueError, match="lower-case"):
        headscan.name_table({b"Host": 1})
    with pytest.raises(ValueError, match=r"0\.\.254"):
        headscan.name_table({b"host": 255})
    table = headscan.name_table({b"host": 4, b"hose": 9, b"x" * 64: 1})
    found = headscan.scan_py(b"GET / HTTP/1.1\r\nHOSE: a\r\nhost: b\r\n\r\n", 0, table)
    assert found is not None and [c for c, *_ in found[5]] == [9, 4]


def test_an_nginx_answer_marks_framing_hop_by_hop_and_date_only(scan_response) -> None:
    found = scan_response(NGINX_ANSWER, 0, RESPONSE_TABLE)
    assert found is not None
    fields_start, head_end, count, _, version, cands, suspect = found
    assert NGINX_ANSWER[:fields_start] == b"HTTP/1.1 200 OK\r\n"
    assert (head_end, count, version, suspect) == (len(NGINX_ANSWER), 8, 11, False)
    # Server, Content-Type, Last-Modified, ETag, Accept-Ranges stay bytes.
    names = [NGINX_ANSWER[start:start + 14].partition(b":")[0] for _, _, start, _ in cands]
    assert names == [b"Date", b"Content-Length", b"Connection"]
    conn = cands[2]
    assert conn[1] == b"keep-alive" and NGINX_ANSWER[conn[2]:conn[3]] == b"Connection: keep-alive\r\n"


@pytest.mark.parametrize("head, expected", [
    (b"HTTP/1.1 204 No Content\r\n\r\n", (25, 27, 0, 11)),
    (b"HTTP/1.0 200\r\nA: b\r\n\r\nbody", (14, 22, 1, 10)),   # no reason phrase
    (b"\r\nHTTP/1.1 200 OK\r\nA:b\r\n\r\n", (19, 26, 1, 11)),  # an empty line first
])
def test_plain_response_heads(scan_response, head: bytes, expected: tuple[int, int, int, int]) -> None:
    found = scan_response(head, 0, RESPONSE_TABLE)
    assert found is not None and (found[0], found[1], found[2], found[4]) == expected


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\n\r\n",                           # a request line is no status line
    b"HTTP/1.1 200 OK\nA: b\r\n\r\n",                     # bare LF
    b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",             # folded
    b"HTTP/1.1 200 O\rK\r\n\r\n",                         # a CR in the status line
    b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nA: b\r\n",                        # not finished
    b"HTTP/1.x 200 OK\r\n\r\n",
    b"HTTP/1.1\r\n\r\n",
])
def test_odd_response_heads_are_left_to_the_general_path(scan_response, head: bytes) -> None:
    assert scan_response(head, 0, RESPONSE_TABLE) is None


def _random_head(rng: random.Random) -> bytes:
    """Mostly plain heads, with the odd bytes the scanner must refuse sprinkled in."""
    names = [b"Host", b"Connection", b"Content-Length", b"X-Forwarded-For", b"Accept", b"Via", b"te", b"HOST",
             b"Cookie", b"X-Real-IP", b"a", b"B-c", b"Keep-Alive", b"Expect", b"x-REQUEST-id", b"Hose"]
    odd = [b" ", b"\t", b"\r", b"\n", b":", b"(", b"\x00", b"\xff"]
    lines = [b"\r\n" * rng.randrange(2) + rng.choice([b"GET", b"POST"]) + b" /x HTTP/1." +
             rng.choice([b"0", b"1"]) + b"\r\n"]
    for _ in range(rng.randrange(8)):
        value = bytes(rng.choice(b"abc ;=,\t-") for _ in range(rng.randrange(12)))
        line = rng.choice(names) + b":" + value + b"\r\n"
        if rng.random() < 0.15:
            i = rng.randrange(len(line))
            line = line[:i] + rng.choice(odd) + line[i:]
        lines.append(line)
    head = b"".join(lines) + (b"\r\n" if rng.random() < 0.9 else b"")
    return head + (b"GET / HTTP/1.1\r\n\r\n" if rng.random() < 0.3 else b"")


@pytest.mark.skipif(len(IMPLEMENTATIONS) < 2, reason="the C scanner is not built (sources build)")
def test_the_c_scanner_and_its_python_twin_agree() -> None:
    rng = random.Random(20261202)
    for _ in range(20_000):
        head = _random_head(rng)
        pos = rng.randrange(3) if rng.random() < 0.1 else 0
        py = headscan.scan_py(head, min(pos, len(head)), TABLE)
        c = _headscan.scan(head, min(pos, len(head)), TABLE)
        assert py == c, head
        if py is not None:
            end = py[1] - 2
            assert headscan.fields_py(head, py[0], end) == _headscan.fields(head, py[0], end), head


@pytest.mark.skipif(len(IMPLEMENTATIONS) < 2, reason="the C scanner is not built (sources build)")
def test_the_c_response_scanner_and_its_python_twin_agree() -> None:
    rng = random.Random(20261203)
    for _ in range(20_000):
        head = _random_head(rng)
        status_line = rng.choice([b"HTTP/1.1 200 OK", b"HTTP/1.0 304", b"HTTP/1.1 404 Not Found",
                                  b"HTTP/1.1  200", b"HTTP/11 200"])
        head = head.replace(head.split(b"\r\n", 1)[0], status_line, 1)
        assert headscan.scan_response_py(head, 0, RESPONSE_TABLE) == \
            _headscan.scan_response(head, 0, RESPONSE_TABLE), head


def test_the_build_that_runs_uses_its_own_scanner() -> None:
    compiled = taxiway.BUILD.startswith("compiled")
    assert (headscan.scan is not headscan.scan_py) == compiled
    assert (headscan.scan_response is not headscan.scan_response_py) == compiled


# --------------------------------------------------------------------------------------------
# The fast path over real sockets


def test_ordinary_fields_reach_the_app_as_they_came_in_their_order() -> None:
    with HeadRecorder() as up, InProcess(make_config([up.port])) as lb:
        c = Client(lb.port)
        c.send(BROWSER.replace(b"Cookie: session=abc; theme=dark", b"Cookie:session=abc;  theme=dark  "))
        assert c.read_response().status == 200
        head = up.seen[0][0]
        lines = head.split(b"\r\n")
        assert lines[0] == b"GET /flights?from=ams HTTP/1.1"
        # Everything between the request line and what taxiway adds, unchanged and in order
        # (the OWS a field came with stays: it is no part of the value); Connection is hop-by-hop.
        assert lines[1:6] == [b"Host: shop.example", b"User-Agent: Mozilla/5.0 (X11; Linux x86_64)",
                              b"Accept: text/html,application/xhtml+xml;q=0.9",
                              b"Accept-Encoding: gzip, deflate, br", b"Cookie:session=abc;  theme=dark  "]
        assert b"connection: keep-alive" not in head.lower()
        assert lines[6].startswith(b"X-Forwarded-For: 127.0.0.1")
        c.close()


def test_pipelined_heads_and_bodies_are_read_from_the_right_bytes() -> None:
    """One write with every kind of message the fast path must find the start of, a chunked
    request (the general path takes over the connection) and what follows it."""
    batch = (b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\n"
             b"POST /2 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nGET /"  # a body like a head
             b"\r\nGET /3 HTTP/1.1\r\nHost: t\r\n\r\n"   # (an empty line first)
             b"POST /4 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
             b"POST /5 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n"
             b"GET /6 HTTP/1.1\r\nHost: t\r\nX-After: chunked\r\n\r\n")
    with HeadRecorder() as up, InProcess(make_config([up.port])) as lb:
        c = Client(lb.port)
        c.send(batch)
        answers = [c.read_response() for _ in range(6)]
        assert [r.status for r in answers] == [200] * 6
        assert [r.body.split(b":")[1] for r in answers] == [b"0", b"5", b"0", b"0", b"23", b"0"]
        targets = [h.split(b" ")[1] for h, _ in up.seen]
        assert targets == [b"/1", b"/2", b"/3", b"/4", b"/5", b"/6"]
        assert up.seen[1][1] == b"GET /"
        assert up.seen[4][1] == b"3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n"
        assert b"X-After: chunked" in up.seen[5][0]
        c.close()


def test_a_head_in_many_reads_is_read_whole() -> None:
    request = BROWSER + b"POST /next HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
    with HeadRecorder() as up, InProcess(make_config([up.port])) as lb:
        c = Client(lb.port)
        for i in range(0, len(request), 7):   # 7-byte writes, each a read of its own
            c.send(request[i:i + 7])
            wait_until(lambda: False, 0.002)
        r1, r2 = c.read_response(), c.read_response()
        assert (r1.status, r2.status) == (200, 200) and r2.body.endswith(b":3")
        assert b"Cookie: session=abc; theme=dark\r\n" in up.seen[0][0]
        assert up.seen[1][1] == b"abc"
        c.close()


def test_a_folded_field_is_refused_as_it_always_was() -> None:
    """obs-fold (RFC 9112 §5.2): llhttp refuses it, before the scanner could see it; 400, and
    nothing reaches the app."""
    with HeadRecorder() as up, InProcess(make_config([up.port])) as lb:
        c = Client(lb.port)
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n")
        assert c.read_response().status == 400
        assert up.seen == []
        c.close()


# --------------------------------------------------------------------------------------------
# The response side over real sockets

CHUNKED_ANSWER = (b"HTTP/1.1 200 OK\r\nServer: gunicorn\r\nTransfer-Encoding: chunked\r\n"
                  b"Trailer: X-Checksum\r\nConnection: keep-alive\r\n\r\n"
                  b"5\r\nhello\r\n0\r\nX-Checksum: abc123\r\n\r\n")
OWS_ANSWER = b"HTTP/1.1 200 OK\r\nServer:  spaced \r\nContent-Length: 3\r\n\r\nows"


def _answers_in_turn(answers: list[bytes], piece: int = 0) -> RawServer:
    """An upstream that answers the n-th request on a connection with answers[n] (in `piece`-byte
    writes when asked: every head then arrives in several reads)."""

    def handler(conn: socket.socket) -> None:
        for answer in answers:
            if not read_request_head(conn):
                return
            if not piece:
                conn.sendall(answer)
                continue
            for i in range(0, len(answer), piece):
                conn.sendall(answer[i:i + piece])
                wait_until(lambda: False, 0.002)

    return RawServer(handler)


def _exchange(c: Client, target: bytes, ends: bytes) -> tuple[bytes, bytes]:
    """Send GET `target`, read the raw answer until it ends with `ends`: (head, rest)."""
    c.send(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    raw = b""
    while b"\r\n\r\n" not in raw or not raw.endswith(ends):
        more = c.sock.recv(65536)
        assert more, raw
        raw += more
    head, rest = raw.split(b"\r\n\r\n", 1)
    return head, rest


def _dechunk(body: bytes) -> tuple[bytes, bytes]:
    """A chunked body's data and trailer section."""
    data = b""
    while True:
        size, _, body = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return data, body[:-2]
        data, body = data + body[:n], body[n + 2:]


@pytest.mark.parametrize("piece", [0, 5], ids=["whole", "5-byte-writes"])
def test_answers_keep_their_bytes_and_a_chunked_one_its_trailers(piece: int) -> None:
    """nginx's answer (Connection: keep-alive, which the fast path cuts), then a chunked answer
    with a trailer (the connection switches to the field parser for good), then nginx's again
    and one with spaces around a value: one upstream connection, every answer as the server
    meant it."""
    # The server's fields between the status line and what taxiway adds: as sent, in their
    # order, less the hop-by-hop Connection.
    nginx_fields = [f for f in NGINX_ANSWER.split(b"\r\n")[1:-2] if not f.startswith(b"Connection")]
    answers = [NGINX_ANSWER + b"hello", CHUNKED_ANSWER, NGINX_ANSWER + b"again", OWS_ANSWER]
    with _answers_in_turn(answers, piece) as up, InProcess(make_config([up.port])) as lb:
        c = Client(lb.port)
        head, body = _exchange(c, b"/1", b"hello")
        assert head.split(b"\r\n")[1:8] == nginx_fields and body == b"hello"
        head, body = _exchange(c, b"/2", b"\r\n0\r\nX-Checksum: abc123\r\n\r\n")
        assert b"x-checksum" not in head.lower() and b"server: gunicorn" in head.lower()
        assert _dechunk(body) == (b"hello", b"X-Checksum: abc123\r\n")   # (re-chunked per read)
        head, body = _exchange(c, b"/3", b"again")
        assert head.split(b"\r\n")[1:8] == nginx_fields and body == b"again"
        head, body = _exchange(c, b"/4", b"ows")
        assert b"Server:  spaced \r\n" in head + b"\r\n" and body == b"ows"
        assert up.accepted == 1   # all four on one upstream connection
        c.close()
