"""The load generator driver: virtual users on raw asyncio protocols (uvloop + httptools).

Why not aiohttp/httpx: the generator must not be the bottleneck (target: half of wrk's rate on
one core). So the hot path is uvicorn's protocol-callback pattern turned around: one
`asyncio.Protocol` per connection (client.py), httptools parses responses, request bytes are
precomputed by the scenario, and when a response completes the callback writes the next request
directly: no task, no future, no await per request. Latencies are buffered as integers and
recorded into HDR histograms once a second (`results.record_batch`). In the plain closed-loop case
(`fast_bytes`) `process_response` even reuses the pending-request object and writes the same
bytes again.

Modes:
1. closed loop (`users`): each virtual user owns one keep-alive connection and sends its next request
   when the previous answer arrived (plus think time). Ramp stages change the number of users.
2. open loop (`rate`): `schedule.ArrivalSchedule` fixes each request's intended send time; a ticker
   moves due requests into a backlog and idle connections take from it. Latency is measured from
   the intended time (coordinated omission corrected); service time from the actual send.

Failures are classified, never dropped: connect (refused, unreachable), timeout (no answer within
`timeout_s`), reset (closed mid-request), protocol (not HTTP), login (scenario login flow failed),
and every HTTP status is counted by code.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter

from taxiway.bench.client import RECONNECT_BACKOFF_S, Connection, CookieConnection, VirtualUser
from taxiway.bench.results import RunResult, Second, record_batch
from taxiway.bench.scenario import Scenario, build_request
from taxiway.bench.schedule import ArrivalSchedule, Stage, target_at, total_duration
from taxiway.bench.target import Target

DISPATCH_TICK_S = 0.001


@dataclass(frozen=True)
class LoadSpec:
    """Everything one run needs; picklable so `--processes` can hand a share to each child."""

    target: Target
    scenario: Scenario
    users: int = 10                      # closed loop: virtual users; open loop: connections
    rate: float | None = None            # requests/s: open loop
    stages: tuple[Stage, ...] | None = None
    duration_s: float | None = 10.0
    max_requests: int | None = None
    warmup_s: float = 0.0
    timeout_s: float = 10.0
    served_by_header: str = "X-Served-By"
    insecure: bool = False
    seed: int | None = None
    share: tuple[int, int] = (0, 1)      # (index, count) of this process under --processes

    def is_open_loop(self) -> bool:
        return self.rate is not None


class Engine:
    """Runs one load spec in the current event loop. Create, then `await run()`."""

    def __init__(self, spec: LoadSpec, on_second: Callable[[Second], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.spec = spec
        self.scenario = spec.scenario
        self.target = spec.target
        self.timeout_s = spec.timeout_s
        self.loop = asyncio.get_running_loop()
        self.rng = random.Random(spec.seed)
        self.on_second = on_second
        self.should_stop = should_stop
        self.served_by_re: re.Pattern[bytes] | None = None
        if spec.served_by_header:
            name = re.escape(spec.served_by_header.encode("latin-1"))
            self.served_by_re = re.compile(rb"\r\n" + name + rb"[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
        self.conn_cls: type[Connection] = CookieConnection if spec.scenario.cookies else Connection
        self.ssl_ctx: ssl.SSLContext | None = None
        if spec.target.scheme == "https":
            self.ssl_ctx = ssl.create_default_context()
            if spec.insecure:
                self.ssl_ctx.check_hostname = False
                self.ssl_ctx.verify_mode = ssl.CERT_NONE
        login = spec.scenario.login
        self.login_page = build_request("GET", login.page, spec.target.host_header) if login else None
        self.finished = asyncio.Event()
        self.stopped = False      # == finished.is_set(), read on the hot path without a method call
        # One request kind and no cookies: the same bytes every time (the wrk case).
        only = spec.scenario.requests[0]
        self.fixed_request: bytes | None = (only.encode() if len(spec.scenario.requests) == 1
                                            and not spec.scenario.cookies else None)
        closed_simple = (not spec.is_open_loop() and spec.max_requests is None
                         and not spec.scenario.has_think_time())
        self.fast_bytes = self.fixed_request if closed_simple else None
        self._statuses: dict[int, int] = {}
        self._served: dict[bytes, int] = {}
        self.result = RunResult(mode="open" if spec.is_open_loop() else "closed", target=spec.target.url)
        self.users: list[VirtualUser] = []
        self.idle: list[VirtualUser] = []
        self.backlog: deque[float] = deque()
        self.max_requests = spec.max_requests if not spec.is_open_loop() else None
        self.issued = 0
        self.done = 0
        self.in_flight = 0
        self.bytes_in = 0
        self.measuring = False
        self._lat: list[int] = []
        self._svc: list[int] = []
        self._sec_completed = 0
        self._sec_errors = 0
        self.t0 = 0.0
        self.t_measure = 0.0
        self.schedule: ArrivalSchedule | None = None

    # -- outcomes (called from protocol callbacks)
    def process_response(self, conn: Connection) -> None:
        """Called by a connection when a response is complete: record it, send the next one."""
        t = perf_counter()
        p = conn.pending
        if p is None:
            return  # an unsolicited response: ignore, the next request resynchronises
        parser = conn.parser
        code = parser.get_status_code()
        if self.measuring:
            self._lat.append(int((t - p.intended) * 1_000_000))
            self._svc.append(int((t - p.sent) * 1_000_000))
            st = self._statuses
            st[code] = st.get(code, 0) + 1
            self._sec_completed += 1
            if code >= 400:
                self._sec_errors += 1
            if conn.served_by:
                sb = self._served
                sb[conn.served_by] = sb.get(conn.served_by, 0) + 1
        conn.served_by = b""
        # Fast path (the wrk case): closed loop, one request kind, no think time, keep-alive.
        # Reuse the pending object and write the same bytes again: no further calls.
        fixed = self.fast_bytes
        if fixed is not None and p.waiter is None and parser.should_keep_alive() and not self.stopped:
            transport = conn.transport
            if transport is not None and not conn.user.retiring:
                p.intended = p.sent = perf_counter()
                transport.write(fixed)
                return
        conn.pending = None
        user = conn.user
        if not parser.should_keep_alive():
            user.close()
        if p.waiter is not None:
            if not p.waiter.done():
                p.waiter.set_result((code, bytes(p.body or b"")))
            return
        self.in_flight -= 1
        self.done += 1
        if self.max_requests is not None and self.done >= self.max_requests:
            self.finish()
            return
        self._next_for(user)

    def process_failure(self, conn: Connection, kind: str) -> None:
        """Called by a connection when it broke (`kind`: reset, protocol) or by the sweeper (timeout)."""
        p = conn.pending
        conn.pending = None
        user = conn.user
        if user.conn is conn:
            user.close()
        else:
            conn.closing = True
            if conn.transport is not None:
                conn.transport.close()
        if p is None:
            # Nothing was asked (e.g. the server closed an idle keep-alive connection): not an
            # error; take the user off the idle list and reconnect it quietly.
            if user in self.idle:
                self.idle.remove(user)
            if not self.stopped and not user.retiring and user.conn is None:
                user.start()
            return
        self.count_error(kind)
        if p.waiter is not None:
            if not p.waiter.done():
                p.waiter.set_exception(ConnectionError(kind))
            return
        self.in_flight -= 1
        self.done += 1
        if self.max_requests is not None and self.done >= self.max_requests:
            self.finish()
            return
        user.start(RECONNECT_BACKOFF_S)

    def process_connect_failure(self) -> None:
        """A connect failed. With -n it counts as an attempt, so a dead target cannot hang the run."""
        self.count_error("connect")
        if self.max_requests is not None and not self.stopped:
            self.done += 1
            self.issued += 1
            if self.done >= self.max_requests:
                self.finish()

    def count_error(self, kind: str) -> None:
        if self.measuring and not self.stopped:  # a connect still failing after the end is not measured
            self.result.errors[kind] += 1
            self._sec_errors += 1

    def _next_for(self, user: VirtualUser) -> None:
        if self.stopped or user.retiring:
            user.close()
            return
        if user.conn is None:
            user.start()
            return
        if self.schedule is not None:
            if self.backlog:
                user.send(self.backlog.popleft())
            else:
                self.idle.append(user)
            return
        lo, hi = self.scenario.think_time_s
        if hi > 0:
            think = lo if lo == hi else self.rng.uniform(lo, hi)
            self.loop.call_later(think, user.send_now)
        else:
            user.send_now()

    def user_ready(self, user: VirtualUser) -> None:
        """Called when a user is connected (and logged in): start its request chain."""
        if self.schedule is not None:
            if self.backlog:
                user.send(self.backlog.popleft())
            else:
                self.idle.append(user)
        else:
            user.send_now()

    # -- control
    def finish(self) -> None:
        self.stopped = True
        self.finished.set()

    def stop(self) -> None:
        """Ctrl-C: end now and keep what was measured."""
        self.result.interrupted = True
        self.finish()

    def _set_users(self, n: int) -> None:
        alive = [u for u in self.users if not u.retiring]
        for _ in range(n - len(alive)):
            u = VirtualUser(self)
            self.users.append(u)
            u.start()
        for u in alive[n:] if n < len(alive) else []:
            u.retiring = True
            if u.conn is None or u.conn.pending is None:
                u.close()
        self.users = [u for u in self.users if not u.retiring or (u.conn and u.conn.pending)]

    def _my_share(self, total: int) -> int:
        """This process's part of `total` users: the parts of all processes add up to `total`."""
        i, n = self.spec.share
        return (total + n - 1 - i) // n

    def _dispatch(self) -> None:
        """Open loop ticker: move due arrivals into the backlog, feed idle connections.

        It wakes at the next intended time, but at most once per DISPATCH_TICK_S: the loop's timers
        have 1 ms resolution, and waking for every request at high rates would spin. A request
        sent up to a tick late is measured from its intended time, so the delay is not hidden.
        """
        if self.stopped or self.schedule is None:
            return
        now = perf_counter()
        t0 = self.t0
        for rel in self.schedule.take_due(now - t0):
            self.backlog.append(t0 + rel)
        backlog, idle = self.backlog, self.idle
        while backlog and idle:
            u = idle.pop()
            if u.conn is None or u.conn.transport is None:
                continue
            u.send(backlog.popleft())
        nxt = self.schedule.peek()
        if nxt is None:
            if not backlog and self.in_flight <= 0:
                self.finish()
            else:
                self.loop.call_later(0.01, self._dispatch)
            return
        self.loop.call_later(max(DISPATCH_TICK_S, t0 + nxt - perf_counter()), self._dispatch)

    def _sweep(self) -> None:
        """Every quarter second: time out slow requests, honour an external stop, ramp users."""
        if self.finished.is_set():
            return
        now = perf_counter()
        if self.should_stop is not None and self.should_stop():
            self.stop()
            return
        deadline = now - self.timeout_s
        for u in list(self.users):
            c = u.conn
            if c is not None and c.pending is not None and c.pending.sent < deadline:
                self.process_failure(c, "timeout")
        if self.spec.stages is not None and not self.spec.is_open_loop():
            self._set_users(self._my_share(round(target_at(self.spec.stages, now - self.t0))))
        self.loop.call_later(0.25, self._sweep)

    def _start_measuring(self) -> None:
        """Called when the warm-up is over (at once without one): reset and start the timeline."""
        self.measuring = True
        self.t_measure = perf_counter()
        self._lat, self._svc = [], []
        self._statuses, self._served = {}, {}
        self._sec_completed = self._sec_errors = 0
        self.loop.call_later(1.0, self._tick, 1)

    def _tick(self, n: int) -> None:
        """Once a second: record buffered latencies, append to the timeline, report progress."""
        if self.finished.is_set():
            return
        self._flush(n)
        # Aim at the next whole second of the measurement (no drift from callback delays).
        self.loop.call_later(max(0.0, self.t_measure + n + 1 - perf_counter()), self._tick, n + 1)

    def _flush(self, t: int) -> None:
        lat, svc = self._lat, self._svc
        self._lat, self._svc = [], []
        self.result.statuses.update(self._statuses)
        for key, n in self._served.items():
            self.result.served_by[key.decode("latin-1").strip()] += n
        self._statuses, self._served = {}, {}
        record_batch(self.result.latency, lat)
        record_batch(self.result.service, svc)
        sec = Second(t=t, completed=self._sec_completed, errors=self._sec_errors,
                     users=sum(1 for u in self.users if not u.retiring))
        if lat:
            lat.sort()
            sec.p99_ms = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000
            sec.p50_ms = lat[len(lat) // 2] / 1000
        self._sec_completed = self._sec_errors = 0
        if t > 0 or sec.completed or sec.errors:
            self.result.timeline.append(sec)
        self.result.elapsed_s = perf_counter() - self.t_measure
        if self.on_second is not None:
            self.on_second(sec)

    def _end_time(self) -> float | None:
        s = self.spec
        if s.stages is not None:
            return total_duration(s.stages) + (0.5 if s.is_open_loop() else 0.0)
        if s.duration_s is None:
            return None
        return s.warmup_s + s.duration_s

    async def run(self) -> RunResult:
        s = self.spec
        self.t0 = perf_counter()
        self.t_measure = self.t0
        if s.is_open_loop():
            total = None if s.duration_s is None else s.warmup_s + s.duration_s
            self.schedule = ArrivalSchedule(rate=s.rate if s.stages is None else None,
                                            stages=s.stages, duration_s=total, limit=s.max_requests)
        if s.stages is not None and not s.is_open_loop():
            self._set_users(0)
        else:
            self._set_users(s.users)
        if self.schedule is not None:
            self._dispatch()
        self.loop.call_later(0.25, self._sweep)
        if s.warmup_s > 0:
            self.loop.call_later(s.warmup_s, self._start_measuring)
        else:
            self._start_measuring()
        end = self._end_time()
        if end is not None:
            self.loop.call_later(end, self.finish)
        try:
            await self.finished.wait()
        finally:
            self.finish()
            if self.measuring and (self._lat or self._sec_errors):
                last = self.result.timeline[-1].t if self.result.timeline else 0
                self._flush(max(last + 1, math.ceil(perf_counter() - self.t_measure)))
            self.result.elapsed_s = perf_counter() - self.t_measure if self.measuring else 0.0
            self.result.bytes_received = self.bytes_in
            self.result.unsent = len(self.backlog)
            self.result.in_flight = sum(1 for u in self.users if u.conn is not None and u.conn.pending)
            for u in self.users:
                u.close()
                if u.task is not None and not u.task.done():
                    u.task.cancel()
            await asyncio.sleep(0)
        return self.result
