"""The hot path's shortcuts give exactly what the general code gives.

1. `ResponseRewriter.rewrite_raw` (raw upstream head forwarded as received, its names classified
   one by one as httptools reports them) vs `rewrite` on the
   parsed header list: same bytes and same framing decisions for every head llhttp accepts.
2. `LeastConnections.pick` (tight pass) vs `_pick_general`: same server and same RNG draws.
3. `RetryBudget.process_requests(n)` == n x `process_request` at the same instant.
"""

from __future__ import annotations

import random
from pathlib import Path

import httptools
import pytest

from taxiway.balancing.health import RetryBudget
from taxiway.balancing.model import Server
from taxiway.balancing.strategies import LeastConnections
from taxiway.proxy.http1 import (
    HEAD_CHUNKED,
    HEAD_HOP,
    ResponseContext,
    ResponseRewriter,
    cut_line,
    locate_cuts,
    split_head,
)

SECURITY = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "SAMEORIGIN"}
# What real servers answered (benchmarks/realistic/upstreams.py --capture): nginx, gunicorn with
# Django's security headers, uvicorn, Node, taxiway backend.
CAPTURED = sorted((Path(__file__).parent.parent / "benchmarks" / "realistic" / "responses").glob("*.http"))


def parsed(raw: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers as httptools' on_header gives them, and the raw head (what upstream.py keeps)."""
    headers: list[tuple[bytes, bytes]] = []

    class P:
        def on_header(self, n: bytes, v: bytes) -> None:
            headers.append((n, v))

    p = httptools.HttpResponseParser(P())
    p.feed_data(raw)
    return p.get_status_code(), headers, raw[:raw.index(b"\r\n\r\n") + 2]


def ctx(**kw: object) -> ResponseContext:
    c = ResponseContext(no_body=False, close=False, client_http11=True, date_line=b"Date: now\r\n",
                        server_name="b1")
    for k, v in kw.items():
        setattr(c, k, v)
    return c


@pytest.mark.parametrize("raw", [
    *(pytest.param(p.read_bytes(), id=f"captured-{p.stem}") for p in CAPTURED),
    pytest.param(b"HTTP/1.1 200 OK\r\nx-backend: b1\r\ndate: Thu, 26 Nov 2026 08:55:26 GMT\r\n"
                 b"content-type: text/plain\r\ncontent-length: 14\r\n\r\n", id="usual"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", id="no-length-no-date"),
    pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", id="chunked"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: t=5\r\n\r\n",
                 id="hop-by-hop"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-Frame-Options: DENY\r\nContent-Length: 0\r\n\r\n", id="app-security"),
    pytest.param(b"HTTP/1.1 404 Not Found\r\nCONTENT-LENGTH: 3\r\nDATE: x\r\n\r\n", id="upper-case"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-Te: 1\r\nX-Connection: y\r\nContent-Length: 1\r\n\r\n",
                 id="names-containing-special-ones"),
    pytest.param(b"HTTP/1.1 299 Whatever\r\nContent-Length: 1\r\n\r\n", id="unknown-status"),
    pytest.param(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n", id="http10-close-delimited"),
])
@pytest.mark.parametrize("https", [False, True])
@pytest.mark.parametrize("client_http11", [False, True])
def test_raw_head_rewrite_matches_general_rewrite(raw, https, client_http11):
    rw = ResponseRewriter(SECURITY, "X-Served-By", 3600.0)
    status, headers, head = parsed(raw)
    a = ctx(https=https, client_http11=client_http11)
    b = ctx(https=https, client_http11=client_http11)
    flags, lines = 0, []
    for name, value in headers:   # what the upstream connection's general path collects
        f = rw.classify(name, value)
        flags |= f
        if f & (HEAD_HOP | HEAD_CHUNKED):
            lines.append(cut_line(name, value))
    cut = locate_cuts(head, lines) if lines else None
    assert cut is not None or not lines
    out: list[bytes] = []
    rw.rewrite_raw(status, head, flags, a, out, cut)
    assert b"".join(out) == rw.rewrite(status, headers, b)
    assert (a.content_length >= 0, a.upstream_chunked, a.chunked_out, a.close) == \
        (b.content_length >= 0, b.upstream_chunked, b.chunked_out, b.close)


def test_split_head_is_what_httptools_reports():
    raw = b"HTTP/1.1 200 OK\r\nA:  spaced \r\nB:\tx\r\nC:\r\nD: v: w\r\n\r\n"
    _, headers, head = parsed(raw)
    assert split_head(head) == headers


@pytest.mark.parametrize("seed", range(300))
def test_least_connections_fast_pick_equals_general(seed):
    r = random.Random(seed)
    servers = [Server(name=f"s{i}", host="h", port=i + 1, weight=r.choice([0, 1, 1, 2, 3]),
                      slow_start_s=r.choice([0.0, 0.0, 5.0])) for i in range(r.randint(0, 6))]
    for s in servers:
        s.inflight = r.randint(0, 3)
        s.joined_at = 0.0
    now = r.uniform(0, 10)
    fast, general = LeastConnections(random.Random(seed)), LeastConnections(random.Random(seed))
    for _ in range(5):
        assert fast.pick(servers, None, now) is general._pick_general(servers, now)
        assert fast.rng.random() == general.rng.random()   # same number of draws so far


def test_retry_budget_batched_deposit_equals_one_by_one():
    one, batch = RetryBudget(0.2), RetryBudget(0.2)
    one.process_request(0.0)
    batch.process_request(0.0)
    for _ in range(40):
        one.process_request(3.0)
    batch.process_requests(40, 3.0)
    assert [one.allow_retry(3.5) for _ in range(200)] == [batch.allow_retry(3.5) for _ in range(200)]


@pytest.mark.parametrize("path", CAPTURED, ids=[p.stem for p in CAPTURED])
def test_what_real_servers_answer_takes_the_fast_path(path: Path) -> None:
    """nginx's, Node's and gunicorn's `Connection: keep-alive`, Node's `Keep-Alive`, and the
    security headers Django sets are all handled without the field-by-field rewrite."""
    from taxiway.config import parse_config
    from taxiway.proxy.headscan import scan_response
    from taxiway.proxy.http1 import HEAD_OTHER
    from taxiway.proxy.settings import Settings

    rw = Settings(parse_config({})).response_rewriter
    _, headers, head = parsed(path.read_bytes())
    flags = 0
    for name, value in headers:   # the general path: every field by its name
        flags |= rw.classify(name, value)
    assert not flags & HEAD_OTHER, headers
    found = scan_response(head + b"\r\n", 0, rw.name_table)   # the fast path: the scan's codes
    assert found is not None
    scanned = 0
    for code, value, _, _ in found[5]:
        scanned |= rw.classify_code(code, value)
    assert scanned == flags, headers
