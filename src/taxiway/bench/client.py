"""One virtual user and its connection: the protocol callbacks on the hot path.

Rules of this file: callbacks do O(1) work and never await (uvicorn's protocol pattern turned
around for a client). Only the login flow and (re)connecting are coroutines, once per connection.
The `Engine` (load.py) owns counters and decides what a user does next; a user only knows how to
connect, log in, send and close. It reaches the engine through `EngineView`, the part of it this
module may use, so load.py imports this module and never the other way round.
"""

from __future__ import annotations

import asyncio
import random
import re
import ssl
from collections import deque
from time import perf_counter
from typing import Protocol

import httptools

from taxiway.bench.scenario import (
    Request,
    Scenario,
    build_request,
    cookie_header,
    extract_token,
    login_form_body,
    parse_set_cookie,
    pick,
)
from taxiway.bench.schedule import ArrivalSchedule
from taxiway.bench.target import Target


class EngineView(Protocol):
    """What a user and its connection read and tell of the run they belong to (load.Engine)."""

    # The run, fixed at its start.
    scenario: Scenario
    target: Target
    timeout_s: float
    loop: asyncio.AbstractEventLoop
    rng: random.Random
    ssl_ctx: ssl.SSLContext | None
    conn_cls: type[Connection]
    login_page: Request | None
    fixed_request: bytes | None
    served_by_re: re.Pattern[bytes] | None
    schedule: ArrivalSchedule | None
    max_requests: int | None
    # Its state, shared by every user (the event loop's one thread: no locks).
    finished: asyncio.Event
    stopped: bool
    backlog: deque[float]
    in_flight: int
    issued: int
    bytes_in: int

    def process_response(self, conn: Connection) -> None: ...
    def process_failure(self, conn: Connection, kind: str) -> None: ...
    def process_connect_failure(self) -> None: ...
    def count_error(self, kind: str) -> None: ...
    def user_ready(self, user: VirtualUser) -> None: ...

RECONNECT_BACKOFF_S = 0.05   # after a failure: quick, but never a hot loop against a dead server
LOGIN_RETRY_S = 1.0


class Pending:
    """Per-request state: when it was due, when it went out, and who waits for it (login only)."""

    __slots__ = ("body", "intended", "sent", "waiter")

    def __init__(self, intended: float, sent: float) -> None:
        self.intended = intended
        self.sent = sent
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: bytearray | None = None


class Connection(asyncio.Protocol):
    """One keep-alive connection of one user. No header callbacks: the fastest parse.

    The served-by header is found with one regex search over each response's first chunk instead
    of httptools' per-header callbacks (one C call instead of a Python call per header: that alone
    is worth ~40% of the request rate against nginx).
    """

    def __init__(self, user: VirtualUser) -> None:
        # Shared
        self.engine = user.engine
        self.served_by_re = user.engine.served_by_re
        # Per-connection
        self.user = user
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closing = False
        # Per-request
        self.pending: Pending | None = None
        self.served_by: bytes = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.engine.bytes_in += len(data)
        if self.served_by_re is not None and not self.served_by:
            m = self.served_by_re.search(data)
            if m is not None:
                self.served_by = m.group(1)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.engine.process_failure(self, "protocol")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closing:
            self.engine.process_failure(self, "reset")

    def on_message_complete(self) -> None:
        self.engine.process_response(self)


class CookieConnection(Connection):
    """Adds Set-Cookie and body callbacks: for scenarios (cookie jars, the login flow's page)."""

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.user.jar is not None and name.lower() == b"set-cookie":
            parsed = parse_set_cookie(value)
            if parsed is not None:
                if parsed[1] is None:
                    self.user.jar.pop(parsed[0], None)
                else:
                    self.user.jar[parsed[0]] = parsed[1]
                self.user.cookie = cookie_header(self.user.jar)

    def on_body(self, body: bytes) -> None:
        p = self.pending
        if p is not None and p.body is not None:
            p.body.extend(body)


class VirtualUser:
    """A virtual user: a connection, a cookie jar, and whether it is still wanted."""

    def __init__(self, engine: EngineView) -> None:
        self.engine = engine
        self.conn: Connection | None = None
        self.jar: dict[str, str] | None = {} if engine.scenario.cookies else None
        self.cookie = b""
        self.logged_in = engine.scenario.login is None
        self.retiring = False
        self.task: asyncio.Task[None] | None = None

    def start(self, delay_s: float = 0.0) -> None:
        if not self.engine.finished.is_set():
            self.task = self.engine.loop.create_task(self._establish(delay_s))

    async def _establish(self, delay_s: float) -> None:
        """Connect (and log in) until it works, then hand the user to the hot path."""
        eng = self.engine
        if delay_s:
            await asyncio.sleep(delay_s)
        while not eng.finished.is_set() and not self.retiring:
            if not await self._connect():
                await asyncio.sleep(RECONNECT_BACKOFF_S)
                continue
            if not self.logged_in:
                try:
                    await self._login()
                except LoginFailed:
                    eng.count_error("login")
                    self.close()
                    await asyncio.sleep(LOGIN_RETRY_S)
                    continue
                except ConnectionError:  # already counted (reset, timeout, connect)
                    self.close()
                    await asyncio.sleep(RECONNECT_BACKOFF_S)
                    continue
            if self.conn is None or self.conn.transport is None:
                continue  # the login's last answer closed the connection (Connection: close)
            eng.user_ready(self)
            return

    async def _connect(self) -> bool:
        eng = self.engine
        t = eng.target
        try:
            _, proto = await asyncio.wait_for(
                eng.loop.create_connection(lambda: eng.conn_cls(self), t.host, t.port, ssl=eng.ssl_ctx,
                                           server_hostname=t.host if eng.ssl_ctx else None),
                timeout=eng.timeout_s)
        except (OSError, TimeoutError, ssl.SSLError):
            eng.process_connect_failure()
            return False
        self.conn = proto  # type: ignore[assignment]
        return True

    async def _fetch(self, data: bytes) -> tuple[int, bytes]:
        """Used only by the login flow: send, await the answer (status, body)."""
        conn = self.conn
        if conn is None or conn.transport is None:
            if not await self._connect():
                raise ConnectionError("connect failed")
            conn = self.conn
        assert conn is not None and conn.transport is not None
        t = perf_counter()
        p = Pending(t, t)
        p.waiter = self.engine.loop.create_future()
        p.body = bytearray()
        conn.pending = p
        conn.transport.write(data)
        return await p.waiter

    async def _login(self) -> None:
        eng = self.engine
        login = eng.scenario.login
        assert login is not None and eng.login_page is not None
        status, body = await self._fetch(eng.login_page.encode(self.cookie))
        token = extract_token(login.token_pattern, body)
        if status >= 400 or token is None:
            raise LoginFailed()
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "Referer": eng.target.origin + login.page}
        if login.token_header:
            headers[login.token_header] = token
        req = build_request("POST", login.post, eng.target.host_header, headers,
                            login_form_body(login, token))
        status, _ = await self._fetch(req.encode(self.cookie))
        if status >= 400:
            raise LoginFailed()
        self.logged_in = True

    def send(self, intended: float) -> None:
        """Write the next request on this user's connection (called from callbacks, never awaits)."""
        conn = self.conn
        eng = self.engine
        if conn is None or conn.transport is None:
            if eng.schedule is not None:
                eng.backlog.appendleft(intended)  # not lost: the next free connection takes it
            self.start()
            return
        data = eng.fixed_request
        if data is None:
            req = pick(eng.scenario, eng.rng.random())
            data = req.encode(self.cookie) if self.cookie else req.encode()
        conn.pending = Pending(intended, perf_counter())
        eng.in_flight += 1
        conn.transport.write(data)

    def send_now(self) -> None:
        eng = self.engine
        if self.retiring or eng.stopped:
            self.close()
            return
        if self.conn is None or self.conn.transport is None:
            self.start()  # reconnect first; the request is issued once connected (counts stay exact)
            return
        if eng.max_requests is not None:
            if eng.issued >= eng.max_requests:
                return
            eng.issued += 1
        self.send(perf_counter())

    def close(self) -> None:
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.closing = True
            if conn.transport is not None:
                conn.transport.close()


class LoginFailed(Exception):
    pass


