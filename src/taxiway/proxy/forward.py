"""Routing one request: affinity -> strategy.pick -> upstream connection -> retry loop.

Rules of this module (driver glue between the client protocol and the upstream pool):
0. It knows the layers around it only through what it declares here: `Downstream` (what an
   exchange may ask of its client connection; server.ClientProtocol derives from it) and
   `ProxyContext` (what requests share: settings, counters, router, queue, upstream pools;
   app.Balancer derives from it). Upstream connections report through `upstream.UpstreamEvents`,
   which `Exchange` implements. Native base classes, not `typing.Protocol`s: compiled, a call
   through a base class is a vtable slot, through a Protocol a lookup by name.
1. `Exchange` is the per-request state, created by the client protocol in `on_headers_complete`.
   Its methods are callbacks (client body arrived, upstream head arrived, upstream lost ...); they
   do O(1) work and never await. The only task is the rare one an async edge guard needs.
2. A request is retried on another server only when no response byte came back and either the
   method is idempotent or no request byte reached the failed server (docs/balancer.md, "Retries"); the
   body must still be replayable (kept up to `REPLAY_MAX_BYTES`), and the retry budget must allow.
3. Every outcome is accounted once in `_account`: in-flight, latency, outlier detector, counters,
   access log.

Statuses taxiway answers here: 502 upstream failed or sent invalid HTTP, 503 no server
(Retry-After), 504 upstream connect or response timeout.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from time import monotonic  # (a module attribute lookup less per call, compiled)
from typing import Any, Final, Protocol

from taxiway.balancing.affinity import CookieAffinity, ip_affinity, record_sticky, sticky_server
from taxiway.balancing.health import OutlierDetector, RetryBudget
from taxiway.balancing.model import Pool, PoolEvent, Server
from taxiway.balancing.strategies import Strategy, make_strategy
from taxiway.config import Config
from taxiway.errors import (
    ConnectRefused,
    ConnectTimeout,
    InvalidResponse,
    ReadTimeout,
    ResponseTimeout,
    UpstreamClosed,
    UpstreamFailed,
    UpstreamReset,
)
from taxiway.proxy.accesslog import AccessLog
from taxiway.proxy.http1 import (
    CONTINUE_100,
    CRLF,
    DateCache,
    RequestHead,
    RequestInfo,
    error_body,
    error_response,
    simple_response,
)
from taxiway.proxy.settings import Settings
from taxiway.proxy.upstream import UpstreamConnection, UpstreamEvents, UpstreamPool
from taxiway.proxy.waitqueue import WaitQueue
from taxiway.security.rejection import Rejection

IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
REPLAY_MAX_BYTES: Final = 64 * 1024       # request body kept for a retry; larger bodies are not replayed
BUFFER_HIGH_BYTES: Final = 256 * 1024     # body buffered while connecting before the client is paused
CANDIDATES_TTL_S: Final = 0.25            # cached available-server list (ejections expire by time)
LAST_CHUNK: Final = b"0\r\n\r\n"
# Fields a trailer must not carry (RFC 9110 §6.5.1: framing, routing, connection control,
# authentication, and fields that describe the content); they are dropped, the rest forwarded.
TRAILER_FORBIDDEN: Final = frozenset({
    b"content-length", b"transfer-encoding", b"trailer", b"host", b"connection", b"keep-alive",
    b"proxy-connection", b"te", b"upgrade", b"expect", b"max-forwards", b"authorization",
    b"proxy-authorization", b"cookie", b"set-cookie", b"content-type", b"content-encoding",
    b"content-range", b"range", b"cache-control",
})
SAFE_REUSE_S: Final = 1.0                  # non-idempotent requests reuse connections idle less than this


def idempotent(method: bytes) -> bool:
    """May this request be replayed after it reached a server (RFC 9110 §9.2.2)? GET first: a
    bytes comparison is cheaper than hashing the method for the set."""
    return method == b"GET" or method in IDEMPOTENT


# The two retry decisions for a request whose upstream connection failed before any response
# byte came, in the order the exchange asks them.

def stale_reuse(uses: int, got_bytes: bool, stale_retried: bool, replayable: bool,
                method_idempotent: bool) -> bool:
    """Again on the same server, on a fresh connection? A pooled connection (`uses > 1`) that
    closed without a byte while an idempotent request was written to it lost a race with the
    server's keep-alive timeout: not the server's fault, so once per request, without counting a
    failure or spending retry budget (like Envoy's reset-before-response on a reused connection)."""
    return uses > 1 and not got_bytes and not stale_retried and replayable and method_idempotent


def may_retry(sent_bytes: int, replayable: bool, method_idempotent: bool, tried: int, retries: int) -> bool:
    """Elsewhere? When its body is still held (`replayable`), either its method is idempotent or
    none of its bytes reached the server, and fewer than `retries` extra attempts were made
    (`tried` counts the servers tried, the first included). The caller then asks the budget."""
    return replayable and (method_idempotent or sent_bytes == 0) and tried <= retries


# Keep the client connection, or close it after this answer (RFC 9112 §9.3, §9.6).

def client_keeps(http11: bool, asked_close: bool, asked_keep_alive: bool, upgrade: bool) -> bool:
    """Does the client connection outlive this request, as the request asked? HTTP/1.1 unless
    the client said close; HTTP/1.0 only when it asked for keep-alive (what `ab -k` sends; the
    answer then says so). An Upgrade request keeps nothing: either the server switches protocols
    (a tunnel follows) or its answer is the last thing the connection carries."""
    return not asked_close and (http11 or asked_keep_alive) and not upgrade


def own_answer_closes(keep_alive: bool, body_unread: bool, closing: bool) -> bool:
    """Must an answer taxiway gives itself (an error page, a refusal) close the connection? Yes
    when the request did not keep it, when part of the request body is still unread (its bytes
    would be read as the next request), or when the connection is closing anyway."""
    return not keep_alive or body_unread or closing


def response_closes(keep_alive: bool, closing: bool, upgrade: bool, status: int) -> bool:
    """Must the server's answer close the client connection? As for taxiway's own answers, and
    after an Upgrade the server refused (the client may already be sending the other protocol).
    (A body still unread when the response ends is handled then: `on_upstream_complete`.)"""
    return not keep_alive or closing or (upgrade and status != 101)


def last_chunk(trailers: list[tuple[bytes, bytes]], more_forbidden: frozenset[bytes] = frozenset()) -> bytes:
    """The end of a chunked body with the allowed trailer fields (values as llhttp validated them).
    `more_forbidden`: names dropped on top of TRAILER_FORBIDDEN (a request's trailers must not
    carry what its head's rules strip: forwarding fields, the request id, an API key)."""
    lines = [b"0\r\n"]
    for name, value in trailers:
        lname = name.lower()
        if lname not in TRAILER_FORBIDDEN and lname not in more_forbidden:
            lines += (name, b": ", value, CRLF)
    lines.append(CRLF)
    return b"".join(lines)


# Reasons the client connection stops reading (a bit mask: `Downstream.pause_reading`; reading
# resumes when no reason is left).
PAUSE_UPSTREAM: Final = 1    # the upstream's send buffer is full
PAUSE_BUFFER: Final = 2      # body buffered while connecting is above the high-water mark
PAUSE_PIPELINE: Final = 4    # a later pipelined request waits for the current response
PAUSE_DONE: Final = 8        # Connection: close / parse error: nothing more is read
PAUSE_UPGRADE: Final = 16    # an Upgrade request waits for the server's 101


class Downstream(asyncio.Protocol):
    """The client connection as an exchange sees it: where its answer goes, and the client's
    flow control. `server.ClientProtocol` is the one implementation and overrides every method.

    Output is collected per read in `wbuf` and written by one `flush` (server.py rule 3): the
    response rewriter appends a head to it directly, which is why the list is part of this
    interface. Nothing else of the connection is.
    """

    __slots__ = ()

    wbuf: list[bytes]       # output of the read being handled
    write_paused: bool      # the client does not read what is written to it
    closing: bool           # the connection closes after the answer in flight
    https: bool             # came in through the HTTPS listener
    redirect_https: Callable[[RequestHead], bytes] | None   # set: answer 308 to this location

    def queue(self, data: bytes) -> None:
        raise NotImplementedError

    def queue_many(self, parts: tuple[bytes, ...]) -> None:
        raise NotImplementedError

    def queue_body(self, data: bytes) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Write what is queued (the exchange calls it when it answers outside a client read)."""
        raise NotImplementedError

    def write_now(self, data: bytes) -> None:
        raise NotImplementedError

    def own_lines(self) -> bytes:
        """Header lines for an answer taxiway writes itself (HSTS on HTTPS)."""
        raise NotImplementedError

    def pause_reading(self, reason: int) -> None:
        raise NotImplementedError

    def resume_reading(self, reason: int) -> None:
        raise NotImplementedError

    def exchange_done(self, ex: Exchange, now: float = 0.0) -> None:
        """The exchange's answer is queued whole: the next pipelined request may start."""
        raise NotImplementedError

    def start_tunnel(self, ex: Exchange) -> None:
        """The server switched protocols: client bytes go to `ex` from now on."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class ProxyContext:
    """What every request of one balancer shares: the exchange, the router and the wait queue
    read and update this, never the rest of `app.Balancer` (which derives from it and sets each
    field in its `__init__`; a reload swaps `settings`, `router` and the rest whole)."""

    settings: Settings
    counters: collections.defaultdict[str, int]
    hot_requests: int       # counters["requests"] and ["responses_2xx"] as native ints, folded in
    hot_2xx: int            # by Balancer.fold_counters (a dict increment per request costs ~10x)
    guards: list[Guard]
    log: logging.Logger
    pool: Pool
    router: Router
    waiting: WaitQueue[Exchange]
    upstreams: dict[Server, UpstreamPool]
    outlier: OutlierDetector
    retry_budget: RetryBudget
    date: DateCache
    access_log: AccessLog | None

    def upstream_pool(self, server: Server) -> UpstreamPool:
        """The keep-alive connections to `server` (made on first use)."""
        raise NotImplementedError

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` as a task the balancer keeps (and cancels on stop)."""
        raise NotImplementedError

    def note_failure(self, server: Server | None, failure: type[UpstreamFailed]) -> None:
        """Count an upstream failure and record it as an event (with `failure.reason`)."""
        raise NotImplementedError

    def deposit_requests(self, now: float) -> None:
        """Feed the retry budget the requests counted since the last call."""
        raise NotImplementedError

    def record_cold_start(self, seconds: float, ok: bool) -> None:
        """A request that waited for a server to start (or come back) is done: arrival to the
        end of its answer took `seconds` (for /status)."""
        raise NotImplementedError


class Guard(Protocol):
    """What the exchange asks of an edge guard (security/edge.py's `EdgeGuard`) before any server
    is picked: nothing to say (None), an answer (a Rejection), or an answer still to come (a store
    round trip, e.g. Redis)."""

    def check(self, head: RequestHead) -> Rejection | Awaitable[Rejection | None] | None: ...


class Router:
    """Chooses the server for a request. Rebuilt on reload (strategy and affinity may change)."""

    def __init__(self, cfg: Config, pool: Pool, rng: random.Random) -> None:
        self.pool = pool
        self.affinity: CookieAffinity | None = None
        self.strategy: Strategy
        if cfg.affinity.mode == "ip":
            self.strategy = ip_affinity(rng)
        else:
            self.strategy = make_strategy(cfg.balancer, rng)
        if cfg.affinity.mode == "cookie" and cfg.affinity.secret:
            self.affinity = CookieAffinity(cfg.affinity.secret.encode(), cfg.affinity.cookie_name)
        self.key_kind = self.strategy.key_kind
        # nginx's max_conns: a server with this many requests in flight takes no new one (0 = no cap)
        self.max_conns = cfg.limits.upstream_max_connections
        # Set by `pick` when it found servers but every one was at max_conns (the request may wait).
        self.full = False
        self.coming = False   # the last pick found none in rotation, but one is coming (waitqueue)
        self._cands: list[Server] = []
        self._version = -1
        self._valid_until = 0.0

    def invalidate(self) -> None:
        self._version = -1

    def candidates(self, now: float) -> list[Server]:
        if self.pool.version != self._version or now >= self._valid_until:
            self._cands = self.pool.available(now)
            self._version = self.pool.version
            self._valid_until = now + CANDIDATES_TTL_S
        return self._cands

    def has_room(self, now: float) -> bool:
        """Could some available server take one more request now (without picking one: a pick
        moves round robin on)?"""
        cands = self.candidates(now)
        if not self.max_conns:
            return bool(cands)
        cap = self.max_conns
        return any(s.inflight < cap for s in cands)

    def key_for(self, head: RequestHead) -> str | None:
        kind = self.key_kind
        if kind is None:
            return None
        if kind == "client_ip":
            return head.client_ip
        if kind == "path":
            return head.path
        if kind.startswith("header:"):
            v = head.header(kind[7:].lower().encode())
            return v.decode("latin-1") if v is not None else None
        if kind.startswith("cookie:"):
            return head.cookie(kind[7:])
        return None

    def pick(self, head: RequestHead, tried: Sequence[Server], now: float) -> tuple[Server | None, bool]:
        """Returns (server, set_cookie): set_cookie when affinity is on and the client's cookie
        did not name the chosen server."""
        cands: Sequence[Server] = self._cands
        if self.pool.version != self._version or now >= self._valid_until:
            cands = self.candidates(now)
        if tried:
            cands = [s for s in cands if s not in tried]
        if self.max_conns:
            cap = self.max_conns
            has_room = [s for s in cands if s.inflight < cap]
            self.full = not has_room and bool(cands)
            cands = has_room
        if not cands:
            # (Only here, on the way to a 503: is a server coming that the request may wait for?)
            self.coming = not self.full and self.pool.coming(now, tried)
            return None, False
        if self.affinity is not None:
            named = self.affinity.server_from(head.header(b"cookie"))
            s = sticky_server(named, cands)
            if s is not None:
                return s, False
            chosen = self.strategy.pick(cands, self.key_for(head), now)
            if chosen is not None:   # the cookie will name it: count it for /status
                record_sticky(self.pool.get(named) if named else None, chosen)
            return chosen, True
        return self.strategy.pick(cands, self.key_for(head) if self.key_kind else None, now), False


# Where an exchange is in its life (`Exchange.state`). It moves forward only, except that a
# response refused after its head was built (a coding an HTTP/1.0 client cannot take) goes back
# from RESPONDING to ROUTING to be answered 502. Whether the request body has been read whole is
# the other side's fact, kept apart (`request_done`): a response may start before it.
WAITING: Final = 0      # parsed, behind an earlier request of the connection (pipelining)
ROUTING: Final = 1      # started: edge guards, the wait queue, connecting, waiting for the head
RESPONDING: Final = 2   # the response head went to the client; its body follows
TUNNEL: Final = 3       # the server switched protocols (101): bytes both ways, no more HTTP
DONE: Final = 4         # answered and accounted, or the client left: nothing more happens


class Exchange(UpstreamEvents):
    """One request/response through the proxy (see module docstring)."""

    # Per-request defaults live on the class: a request sets only what changes (cheaper than
    # assigning every attribute in __init__ on the hot path).
    server: Server | None = None
    conn: UpstreamConnection | None = None
    pending_bytes = 0
    replay_bytes = 0
    sent_bytes = 0                 # request bytes written to the current upstream
    request_done = False
    state = WAITING
    t_start = 0.0
    deadline = 0.0                 # upstream response deadline (0 = not waiting)
    read_mark = -1                 # body_out at the last tick (timeouts.upstream_read)
    read_deadline = 0.0            # the body must have moved by then
    status = 0
    body_in = 0
    # body_out (response bytes relayed) comes from UpstreamEvents, the framing fields
    # (content_length, chunked_out, close, ...) from ResponseContext.
    set_cookie = False
    failure: type[UpstreamFailed] | None = None   # how the last server tried failed (errors.py)
    sent_continue = False
    stale_retried = False
    cold = False                   # waited for a server to start or come back (a cold start)
    # Lists created only when needed (most requests have no body and no retry).
    tried: tuple[Server, ...] = ()          # servers attempted, in order
    pending: list[bytes] | None = None      # framed body bytes not yet written upstream
    replay: list[bytes] | tuple[()] | None = ()  # body bytes written so far (None: too big to replay)

    def __init__(self, proto: Downstream, ctx: ProxyContext, head: RequestHead, info: RequestInfo,
                 method: bytes, keep_alive: bool, client_http11: bool) -> None:
        self.proto = proto
        self.ctx = ctx
        self.head = head
        self.info = info
        self.method = method
        self.keep_alive = keep_alive
        self.client_http11 = client_http11

    # -- start: guards, then dispatch ----------------------------------------------------------

    def start(self, now: float) -> None:
        """Called by the client protocol when this request reaches the front of the line."""
        self.state = ROUTING
        self.t_start = now
        ctx = self.ctx
        ctx.hot_requests += 1   # counters["requests"] (Balancer.fold_counters); the retry budget's deposit
        proto = self.proto
        if proto.redirect_https is not None:
            self.reject_with(Rejection(308, [(b"Location", proto.redirect_https(self.head))],
                                       b"moved to https\n"))
            return
        if ctx.guards:
            for guard in ctx.guards:
                result = guard.check(self.head)
                if result is None:
                    continue
                if isinstance(result, Rejection):
                    self.reject_with(result)
                    return
                ctx.spawn(self._await_guard(result, ctx.guards.index(guard) + 1))
                return
        self.dispatch(now)

    async def _await_guard(self, awaitable: Awaitable[Rejection | None], next_index: int) -> None:
        try:
            result = await awaitable
        except Exception:   # a guard store failing must not kill the connection silently
            self.ctx.log.exception("edge guard failed")
            result = None
        if self.state == DONE:
            return
        if result is not None:
            self.reject_with(result)
            self.proto.flush()
            return
        for guard in self.ctx.guards[next_index:]:
            said = guard.check(self.head)
            if said is None:
                continue
            if isinstance(said, Rejection):
                self.reject_with(said)
                self.proto.flush()
                return
            result = await said
            if self.state == DONE:
                return
            if result is not None:
                self.reject_with(result)
                self.proto.flush()
                return
        self.dispatch()
        self.proto.flush()

    def dispatch(self, now: float | None = None) -> None:
        """Pick a server and get a connection to it (first attempt or retry)."""
        ctx = self.ctx
        if now is None:
            now = monotonic()
        waiting = ctx.waiting
        if waiting.entries and not self.tried:
            serve_waiters(ctx, now)   # (a reload may have raised the cap or removed the queue)
            # Others still wait for a slot: join the line behind them. (When only retries wait,
            # for servers they have not tried yet, a server with room serves this one now.)
            if waiting.entries and not ctx.router.has_room(now):
                if not self._wait(now):
                    self.answer_error(503)
                return
        router = ctx.router
        server, set_cookie = router.pick(self.head, self.tried, now)
        if server is None:
            # Every server it may still use is at its cap, or none is in rotation yet but one
            # is starting or may recover: wait for it (a retry too, like HAProxy's redispatch),
            # unless the queue is off or full.
            if not ((router.full or router.coming) and self._wait(now)):
                self.answer_no_server()
            elif not router.full:
                self.cold = True
            return
        self.use_server(server, set_cookie, now)

    def _wait(self, now: float) -> bool:
        """Join the wait queue (False: it is full or off)."""
        ctx = self.ctx
        s = ctx.settings
        if not ctx.waiting.push(self, now + s.queue_s, s.queue_size):
            return False
        ctx.counters["queued"] += 1
        return True

    def gone(self) -> bool:
        """Answered already, or the client left (a waiter's place is then void)."""
        return self.state == DONE

    def answer_no_server(self) -> None:
        """No server left to try: 503 for a first attempt; for a retry, what the last failure
        was (504 connect timeout, else 502)."""
        if self.tried:
            self.answer_error(self.failure.status if self.failure is not None else 502)
        else:
            self.answer_error(503)

    def use_server(self, server: Server, set_cookie: bool, now: float) -> None:
        """Send the request to `server` (picked by `dispatch`, or by the wait queue)."""
        ctx = self.ctx
        self.set_cookie = set_cookie
        self.server = server
        self.tried = (*self.tried, server) if self.tried else (server,)
        server.inflight += 1
        server.requests += 1
        info = self.info
        if info.expect_continue and not self.sent_continue and not self.request_done:
            self.sent_continue = True
            self.proto.queue(CONTINUE_100)
        upool = ctx.upstreams.get(server) or ctx.upstream_pool(server)
        # A request that must not be replayed only reuses a connection that was busy very recently:
        # an older one may have been closed by the server's keep-alive timeout (gunicorn: 2 s).
        conn = upool.acquire_idle() if idempotent(self.method) else upool.acquire_idle(now - SAFE_REUSE_S)
        if conn is not None:
            self.on_connected(conn)
        else:
            upool.connect(self)

    # -- upstream connection established --------------------------------------------------------

    def on_connected(self, conn: UpstreamConnection) -> None:
        if self.state == DONE or self.server is None or conn.pool.server is not self.server:
            conn.pool.release(conn, monotonic())
            return
        self.conn = conn
        conn.bind(self, self.ctx.settings.response_rewriter, self.proto.write_paused)
        transport = conn.transport
        assert transport is not None
        if self.replay:
            # Retry: what the failed server had already received goes first.
            chunks = [self.info.head_bytes, *self.replay, *(self.pending or ())]
        elif self.pending:
            chunks = [self.info.head_bytes, *self.pending]
        else:
            chunks = None
        if chunks is None:
            transport.write(self.info.head_bytes)
            self.sent_bytes = len(self.info.head_bytes)
        else:
            transport.writelines(chunks)
            self.sent_bytes = sum(map(len, chunks))
            if self.replay is not None and self.pending:
                for c in self.pending:
                    self._keep_for_replay(c)
            self.pending = None
            if self.pending_bytes:
                self.pending_bytes = 0
                self.proto.resume_reading(PAUSE_BUFFER)
        if self.request_done:
            self.deadline = monotonic() + self.ctx.settings.upstream_response_s

    def on_internal_error(self) -> None:
        """A bug surfaced while sending this request: answer 502 (or cut a started response)
        and close the client connection, rather than leave the request hanging."""
        self.ctx.counters["internal_errors"] += 1
        if self.state == DONE:
            return
        if self.state >= RESPONDING:
            self.proto.abort()
            return
        self.keep_alive = False
        self.answer_error(502)
        self.proto.flush()

    def on_connect_failed(self, timed_out: bool) -> None:
        if self.state == DONE:
            return
        self._fail_before_response(ConnectTimeout if timed_out else ConnectRefused)
        self.proto.flush()

    # -- request body from the client ---------------------------------------------------------

    def on_client_body(self, body: bytes) -> None:
        """Called by the client protocol for every body piece (already de-chunked)."""
        self.body_in += len(body)
        if self.info.chunked:
            framed: list[bytes] = [b"%x\r\n" % len(body), body, CRLF]
        else:
            framed = [body]
        self._send_upstream(framed)

    def on_tunnel_client_data(self, data: bytes) -> None:
        self.body_in += len(data)
        self._send_upstream([data])

    def _send_upstream(self, framed: list[bytes]) -> None:
        conn = self.conn
        if conn is not None and conn.transport is not None and not conn.closed:
            if len(framed) == 1:
                conn.transport.write(framed[0])
            else:
                conn.transport.writelines(framed)
            for c in framed:
                self.sent_bytes += len(c)
                if self.replay is not None:
                    self._keep_for_replay(c)
            return
        if self.state == DONE:
            return
        for c in framed:
            if self.pending is None:
                self.pending = [c]
            else:
                self.pending.append(c)
            self.pending_bytes += len(c)
        if self.pending_bytes > BUFFER_HIGH_BYTES:
            self.proto.pause_reading(PAUSE_BUFFER)

    def body_pending(self) -> bool:
        """Is part of the request body still to be read from the client?"""
        return not self.request_done and (self.info.chunked or self.info.content_length > 0)

    def _keep_for_replay(self, chunk: bytes) -> None:
        if self.replay is None:   # already over REPLAY_MAX_BYTES: this request is not replayed
            return
        self.replay_bytes += len(chunk)
        if self.replay_bytes > REPLAY_MAX_BYTES:
            self.replay = None
        elif not self.replay:
            self.replay = [chunk]
        else:
            self.replay.append(chunk)

    def on_request_complete(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        """Called by the client protocol when the request body ended (with the trailer fields of
        a chunked body, if it had any)."""
        self.request_done = True
        if self.state == DONE:
            return
        if self.info.chunked:
            self._send_upstream([last_chunk(trailers, self.ctx.settings.request_rewriter.trailer_forbidden)
                                 if trailers else LAST_CHUNK])
        if self.conn is not None and self.state < RESPONDING:
            # A body-less request completes in the read that started it: t_start is "now".
            now = self.t_start if not self.body_in else monotonic()
            self.deadline = now + self.ctx.settings.upstream_response_s

    # -- response from the upstream -------------------------------------------------------------

    def on_upstream_head(self, conn: UpstreamConnection, status: int, head: bytes, flags: int,
                         cut: list[int] | None = None) -> None:
        """Called by the upstream connection with the raw response head (status line + header
        lines, each ending in CRLF; validated by llhttp) and what its names mean to the
        rewriter (`ResponseRewriter.classify` bits)."""
        self.deadline = 0.0
        self.status = status
        self.state = RESPONDING
        proto = self.proto
        no_body = self.method == b"HEAD" or status in (204, 304)
        if no_body:
            self.no_body = True
        if response_closes(self.keep_alive, proto.closing, self.info.upgrade, status):
            self.close = True
        server = self.server
        assert server is not None
        if self.set_cookie and self.ctx.router.affinity is not None:
            self.extra = [b"Set-Cookie: " + self.ctx.router.affinity.set_cookie_header(
                server.name, self.head.scheme == "https") + CRLF]
        if proto.https:
            self.https = True
        self.date_line = self.ctx.date.line
        self.server_name = server.name
        rw = conn.rewriter
        assert rw is not None
        rw.rewrite_raw(status, head, flags, self, proto.wbuf, cut)
        if self.te_codings and not self.client_http11:
            # A transfer coding (gzip, ...) cannot be sent to an HTTP/1.0 client, and dropping
            # the label would hand it a coded body as if it were the content.
            proto.wbuf.pop()
            self.state = ROUTING
            self.conn = None
            conn.close()
            self.on_upstream_invalid(conn)
            return
        if self.close:
            self.keep_alive = False
        if no_body and status != 101 and self.method == b"HEAD":
            # httptools cannot be told a response answers HEAD: finish now, retire the connection.
            self.conn = None
            conn.close()
            self._complete(ok=status < 500)

    def on_upstream_body(self, body: bytes) -> None:
        n = len(body)
        self.body_out += n
        if self.chunked_out:
            self.proto.queue_many((b"%x\r\n" % n, body, CRLF))
        else:
            self.proto.queue_body(body)

    def on_upstream_complete(self, conn: UpstreamConnection, reusable: bool) -> None:
        """Called by the upstream connection after the read in which the response ended.
        `reusable`: the server keeps the connection and nothing followed the response's last
        byte in that read."""
        if self.chunked_out:
            # Re-chunked for the client: the server's trailer fields (if it sent a chunked body
            # with some) follow the last chunk, less those a trailer must not carry.
            t = conn.trailers
            self.proto.queue(last_chunk(t) if t else LAST_CHUNK)
        self.conn = None
        now = monotonic()
        # Back to the pool only at a provable message boundary: the whole request was sent, the
        # response ended with nothing after it, the server keeps the connection, and it was not
        # an upgrade the server refused (it may still be waiting for the other protocol).
        if reusable and self.request_done and not self.info.upgrade:
            conn.pool.release(conn, now)
        else:
            conn.close()
            self.keep_alive = self.keep_alive and not self.body_pending()
        self._account(self.status < 500, True, now)
        self.proto.exchange_done(self, now)

    def on_upstream_upgraded(self, rest: bytes) -> None:
        """The server answered 101: from now on bytes are spliced both ways."""
        self.state = TUNNEL
        if rest:
            self.body_out += len(rest)
            self.proto.queue(rest)
        self.proto.start_tunnel(self)

    def on_tunnel_upstream_data(self, data: bytes) -> None:
        self.body_out += len(data)
        self.proto.write_now(data)

    def on_upstream_read_done(self) -> None:
        self.proto.flush()

    def on_upstream_write_blocked(self, blocked: bool) -> None:
        """The server's socket is full: stop reading the client until it drains."""
        if blocked:
            self.proto.pause_reading(PAUSE_UPSTREAM)
        else:
            self.proto.resume_reading(PAUSE_UPSTREAM)

    # -- told by the client protocol -------------------------------------------------------------

    def on_client_write_blocked(self, blocked: bool) -> None:
        """The client stopped reading its answer (True) or caught up: stop or resume reading the
        server, so a slow reader pins at most one upstream read."""
        conn = self.conn
        if conn is not None:
            if blocked:
                conn.pause_reading()
            else:
                conn.resume_reading()

    def forbid_replay(self) -> None:
        """What follows this request on the connection is not HTTP (an Upgrade): never replay it."""
        self.replay = None

    def end_tunnel(self) -> None:
        """The client closed a tunnel: close the server's side and account the exchange."""
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.close()
        self._account(ok=True)

    def check_timers(self, now: float, client_write_paused: bool) -> bool:
        """Called by the client protocol's timer check (the balancer's tick) while this is the
        request being answered; True when a deadline passed and the exchange answered or cut."""
        if self.deadline and now > self.deadline:
            self.on_upstream_timeout()
            self.proto.flush()
            return True
        if RESPONDING <= self.state < DONE:
            # A response body must keep moving (nginx's proxy_read_timeout): progress is
            # measured per tick from the bytes relayed, so the body path reads no clock.
            if self.body_out != self.read_mark or not self.read_deadline:
                self.read_mark = self.body_out
                self.read_deadline = now + self.ctx.settings.upstream_read_s
            elif now > self.read_deadline:
                self.on_read_timeout(client_write_paused)
                return True
        return False

    def on_upstream_lost(self, conn: UpstreamConnection, reset: bool = False) -> None:
        """The upstream connection closed while bound to this exchange (`reset`: not a clean
        close, so a body delimited by the close was cut, not ended)."""
        self.conn = None
        if self.state == DONE:
            return
        if self.state == TUNNEL:
            self.proto.close()
            self._account(ok=True)
            return
        if self.state == RESPONDING:
            if self.content_length < 0 and not self.upstream_chunked and not self.no_body and not reset:
                # Body delimited by the close (RFC 9112 §6.3 rule 8): that was its end.
                if self.chunked_out:
                    self.proto.queue(LAST_CHUNK)
                self.keep_alive = self.keep_alive and not self.body_pending()
                self._complete(ok=True)
                self.proto.flush()   # (called by the loop, not inside a read: nothing else flushes)
                return
            # Cut in the middle of a response we already started: the client must see a cut too.
            self.ctx.counters["upstream_aborted"] += 1
            self._account(ok=False)
            self.proto.abort()
            return
        if self.server is not None and stale_reuse(conn.uses, conn.got_bytes, self.stale_retried,
                                                   self.replay is not None, idempotent(self.method)):
            self.stale_retried = True
            self.ctx.counters["stale_connection_retries"] += 1
            self.sent_bytes = 0
            self.ctx.upstream_pool(self.server).connect(self)
            return
        self._fail_before_response(UpstreamReset if conn.got_bytes or self.sent_bytes else UpstreamClosed)
        self.proto.flush()

    def on_upstream_invalid(self, conn: UpstreamConnection) -> None:
        self.conn = None
        if self.state == DONE:
            return
        self._failed(InvalidResponse)
        if self.state >= RESPONDING:
            self.ctx.counters["upstream_aborted"] += 1
            self._account(ok=False)
            self.proto.abort()
            return
        self._release_server(ok=False)
        self.answer_error(InvalidResponse.status)

    def on_read_timeout(self, client_write_paused: bool) -> None:
        """Called by the client protocol's timer check: the response body did not move for
        `timeouts.upstream_read`. The response has started, so the client must see a cut. When
        the client was not reading (its socket full), the fault is its own, not the server's."""
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.close()
        if client_write_paused:
            self.ctx.counters["client_write_timeout"] += 1
            self._account(ok=True)
        else:
            self.ctx.counters["upstream_read_timeout"] += 1
            self._failed(ReadTimeout)
            self._account(ok=False)
        self.proto.abort()

    def on_upstream_timeout(self) -> None:
        """Called by the client protocol's timer check: no response head in time (504)."""
        self.deadline = 0.0
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.close()
        self._failed(ResponseTimeout)
        self._release_server(ok=False)
        self.answer_error(ResponseTimeout.status)

    # -- failure, retry, error answers ----------------------------------------------------------

    def _failed(self, failure: type[UpstreamFailed]) -> None:
        """The one place an upstream failure is recorded: the event's reason, and (kept in
        `failure`) the status the client gets if no retry saves the request."""
        self.failure = failure
        self.ctx.note_failure(self.server, failure)

    def _fail_before_response(self, failure: type[UpstreamFailed]) -> None:
        ctx = self.ctx
        self._failed(failure)
        self._release_server(ok=False)
        if may_retry(self.sent_bytes, self.replay is not None, idempotent(self.method), len(self.tried),
                     ctx.settings.retries):
            now = monotonic()
            ctx.deposit_requests(now)
            if ctx.retry_budget.allow_retry(now):
                ctx.counters["retries"] += 1
                self.sent_bytes = 0
                self.deadline = 0.0   # (no response deadline while it may wait for a slot)
                self.dispatch()
                return
            ctx.counters["retry_budget_exhausted"] += 1
        self.answer_error(failure.status)

    def _release_server(self, ok: bool) -> None:
        server = self.server
        if server is None:
            return
        self.server = None
        server.inflight -= 1
        if not ok:
            server.failures += 1
        if ok and not server.consecutive_failures and not server.ejections:
            return   # nothing for the outlier detector to reset or decay
        ctx = self.ctx
        if ctx.outlier.process_outcome(server, ok, monotonic(), ctx.pool.servers):
            ctx.router.invalidate()
            ctx.pool.emit(PoolEvent.EJECTED, server)

    def reject_with(self, rej: Rejection) -> None:
        """Answer with a Rejection (edge guard, redirect) without contacting any server."""
        self.status = rej.status
        if self.method != b"HEAD":
            self.body_out = len(rej.body)
        close = own_answer_closes(self.keep_alive, self.body_pending(), self.proto.closing)
        self.ctx.counters[f"rejected_{rej.status}"] += 1
        self.proto.queue(simple_response(rej.status, rej.body, self.ctx.date.line, close, rej.headers,
                                         not self.client_http11, self.proto.own_lines(),
                                         self.method == b"HEAD"))
        self.keep_alive = not close
        self._finish()

    def answer_error(self, status: int) -> None:
        """Answer with taxiway's own error page (no response byte was sent yet)."""
        self.status = status
        if self.method != b"HEAD":
            self.body_out = len(error_body(status))
        ctx = self.ctx
        ctx.counters[f"error_{status}"] += 1
        close = own_answer_closes(self.keep_alive, self.body_pending(), self.proto.closing)
        extra = ctx.settings.retry_after if status == 503 else ()
        self.proto.queue(error_response(status, ctx.date.line, close, extra, not self.client_http11,
                                        self.proto.own_lines(), self.method == b"HEAD"))
        self.keep_alive = not close
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self._finish()

    # -- the end ------------------------------------------------------------------------------

    def _complete(self, ok: bool) -> None:
        now = monotonic()
        self._account(ok, True, now)
        self.proto.exchange_done(self, now)

    def _finish(self) -> None:
        if self.state == DONE:
            return
        self._account(ok=True, count_server=False)
        self.proto.exchange_done(self)

    def _account(self, ok: bool, count_server: bool = True, now: float = 0.0) -> None:
        """Everything measured about one request, exactly once."""
        if self.state == DONE:
            return
        self.state = DONE
        self.deadline = 0.0
        ctx = self.ctx
        if not now:
            now = monotonic()
        server = self.server
        if server is not None:
            if count_server:
                server.process_latency(now - self.t_start, now)
                server.bytes_in += self.body_in     # HAProxy's bin/bout: in = request,
                server.bytes_out += self.body_out   # out = response, as in the access log
            if ok and not server.consecutive_failures and not server.ejections:
                # `_release_server`'s common case inlined (hot path): nothing for the outlier detector.
                self.server = None
                server.inflight -= 1
            else:
                self._release_server(ok)
        status = self.status
        if 200 <= status < 300:
            ctx.hot_2xx += 1   # counters["responses_2xx"] (Balancer.fold_counters)
        else:
            ctx.counters[_CLASS_KEYS[status // 100] if 0 < status < 600 else "responses_other"] += 1
        if ctx.access_log is not None:
            ctx.access_log.record(self.head, self.info, self.method, status,
                                  server.name if server is not None else
                                  (self.tried[-1].name if self.tried else None),
                                  self.body_out, self.body_in, self.t_start, now)
        if self.cold:
            ctx.record_cold_start(now - self.t_start, ok)
        if ctx.waiting.entries:   # the slot this request held goes to the oldest waiter
            serve_waiters(ctx, now)

    def abort(self) -> None:
        """Called by the client protocol when the client went away mid-request."""
        if self.state == DONE:
            return
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.close()
        if self.server is not None:
            self.ctx.counters["client_aborted"] += 1
            server = self.server
            self.server = None
            server.inflight -= 1
        self.state = DONE
        if self.ctx.waiting.entries:
            serve_waiters(self.ctx, monotonic())


_CLASS_KEYS: Final[dict[int, str]] = {
    1: "responses_1xx", 2: "responses_2xx", 3: "responses_3xx", 4: "responses_4xx", 5: "responses_5xx",
}


def serve_waiters(ctx: ProxyContext, now: float) -> None:
    """Hand free slots to waiting requests, oldest first: the queue decides (waitqueue.py),
    this carries each decision out before the next is made."""
    q = ctx.waiting
    if q.draining:   # (an answer given below finishes an exchange, which would drain again)
        return
    q.draining = True
    try:
        for ex, server, set_cookie in q.drain(ctx.router, now):
            if server is None:
                ex.answer_no_server()
            else:
                ex.use_server(server, set_cookie, now)
            ex.proto.flush()
    finally:
        q.draining = False


def expire_waiters(ctx: ProxyContext, now: float) -> None:
    """Called by the tick: 503 for requests that waited `timeouts.queue`, then retry the head."""
    q = ctx.waiting
    q.draining = True
    try:
        for ex in q.expired(now):
            ctx.counters["queue_timeout"] += 1
            ex.answer_error(503)
            ex.proto.flush()
    finally:
        q.draining = False
    if q.entries:
        serve_waiters(ctx, now)
