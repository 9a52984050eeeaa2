"""`Balancer`: the load balancer as one object: listeners, pool, router, counters, reload.

Rules of this module (driver):
1. Everything other components read lives here as plain attributes (`pool`, `counters`, `events`,
   `connections`, `started_at`, `guards`): the admin API, the autoscaler and `taxiway up` use them
   directly on the same event loop.
2. Per-request settings are precomputed once per config in `Settings` and swapped whole on reload,
   so the hot path reads `bal.settings.x` and never parses config values.
3. One tick (`TICK_S`) drives every coarse timer: client deadlines, idle upstream connections,
   the cached Date header, access-log flushing, removal of drained servers.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import random
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

from taxiway.balancing.health import OutlierDetector, RetryBudget
from taxiway.balancing.model import Pool, PoolEvent, Server
from taxiway.config import Config, address_family, parse_server_url, split_hostport
from taxiway.errors import ConfigError, UpstreamFailed
from taxiway.proxy.accesslog import AccessLog
from taxiway.proxy.forward import Router, expire_waiters, serve_waiters
from taxiway.proxy.handover import Inherited
from taxiway.proxy.healthcheck import HealthChecker
from taxiway.proxy.heap import TrimPolicy, load_malloc_trim
from taxiway.proxy.http1 import DateCache, RequestHead
from taxiway.proxy.server import ClientProtocol, ListenerContext
from taxiway.proxy.settings import Settings
from taxiway.proxy.upstream import UpstreamPool
from taxiway.proxy.waitqueue import WaitQueue
from taxiway.security.edge import EdgeGuard

log = logging.getLogger("taxiway.proxy")

TICK_S: Final = 0.25
BACKLOG: Final = 2048
ACCEPT_BATCH: Final = 64   # HTTPS connections taken per wakeup of the acceptor
# accept() errors that mean "out of descriptors or memory": back off instead of spinning
_OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def pool_event_detail(event: PoolEvent, server: Server, now: float) -> str:
    """What an operator reading `/status` events wants next to a pool event: where the server
    is and what the event means for its traffic (the cause of a health transition is the
    `health` event just before it)."""
    where = f"{server.address}, {'static' if server.static else 'pool'}"
    if event is PoolEvent.ADDED:
        return f"{where}, weight {server.weight}" + ("" if server.ready else "; not ready yet")
    if event is PoolEvent.READY:
        return f"{where}: taking traffic"
    if event is PoolEvent.DOWN:
        return f"{where}: failing health checks, no new requests"
    if event is PoolEvent.EJECTED:
        return (f"{where}: {server.consecutive_failures} failures in a row; out for "
                f"{max(0.0, server.ejected_until - now):.1f}s (ejection {server.ejections})")
    if event is PoolEvent.DRAINING:
        return f"{where}: no new requests, {server.inflight} in flight"
    if event is PoolEvent.REMOVED:
        return f"{where}: left the pool"
    return f"{where}, weight {server.weight}"   # CHANGED (a reload)


def server_from_config(url: str, name: str | None, weight: int, key: str, slow_start_s: float) -> Server:
    host, port = parse_server_url(url, key)
    return Server(name=name or f"{host}:{port}", host=host, port=port, weight=weight,
                  slow_start_s=slow_start_s, static=True)


class Balancer(ListenerContext):
    """The load balancer. See the module docstring and docs/balancer.md.

    It is the `ListenerContext` its client connections read and the `forward.ProxyContext` its
    requests share: those two declare, field by field, all the layers below may use of it."""

    def __init__(self, cfg: Config, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.log = log
        self.pool = Pool()
        # Named event counters. A defaultdict, not a Counter: `Counter` is a Python subclass of
        # dict whose item access goes through slot wrappers, several times slower per `+= 1`.
        self.counters = collections.defaultdict(int)
        # The two counts every request bumps are native ints (a dict item increment costs ~10x
        # more); `fold_counters` adds them to `counters`: the tick does, and every reader first.
        self.hot_requests = 0
        self.hot_2xx = 0
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        self.connections = 0
        self.paused_writers = 0          # client connections whose reading made taxiway wait
        self.heap_policy = TrimPolicy()
        self._malloc_trim = load_malloc_trim()
        self.started_at = time.time()
        # The process to signal for a reload or an upgrade (/status "pid"): this one, or the
        # parent of `balancer.workers` (proxy/command.py sets it in a worker).
        self.control_pid = os.getpid()
        # Set by `taxiway up` (the autoscaler): the "autoscale" section of /status.
        self.autoscale_status: Callable[[], dict[str, Any]] | None = None
        self.guards = []
        self.protocols = set()
        self.per_client: dict[str, int] = {}
        self.rng = random.Random(cfg.balancer.seed)
        self.settings = Settings(cfg)
        self.router = Router(cfg, self.pool, self.rng)
        self.waiting = WaitQueue()
        # Requests that waited for a server to start or come back, arrival to answer (/status).
        self.cold_start: dict[str, float | int | None] = {"requests": 0, "failed": 0, "last_s": None,
                                                          "max_s": 0.0, "at": None}
        self.outlier = OutlierDetector(cfg.outlier)
        self.retry_budget = RetryBudget(cfg.balancer.retry_budget)
        self._budget_counted = 0    # counters["requests"] already deposited in the retry budget
        self.date = DateCache()
        self.date.refresh(time.time())
        self.access_log = AccessLog(cfg.access_log.path) if cfg.access_log.enabled else None
        self.upstreams = {}
        self.bound_http_port: int | None = None
        self.bound_https_port: int | None = None
        self.health: HealthChecker | None = None
        self._listeners: list[asyncio.Server] = []
        self._tls_sockets: list[socket.socket] = []          # the HTTPS listener (_accept_tls)
        self._acceptors: list[asyncio.Task[None]] = []
        self._ssl_ctx: ssl.SSLContext | None = None
        self._handshakes: set[asyncio.Task[None]] = set()  # TLS handshakes under way
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tick_handle: asyncio.TimerHandle | None = None
        self._to_remove: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.edge_guard: EdgeGuard | None = None
        self._install_edge_guard(cfg)
        self.pool.subscribe(self._on_pool_event)
        now = time.monotonic()
        for i, sc in enumerate(cfg.servers):
            self.pool.add(server_from_config(sc.url, sc.name, sc.weight, f"servers[{i}].url",
                                             float(cfg.balancer.slow_start)), now)

    def _install_edge_guard(self, cfg: Config) -> None:
        """API keys and rate limits from security/ (EdgeGuard), when the config asks for them."""
        self._swap_edge_guard(EdgeGuard.from_config(cfg))

    def _swap_edge_guard(self, new: EdgeGuard | None) -> None:
        old = self.edge_guard
        if old is not None:
            self.guards.remove(old)
            if self._loop is not None:
                self.spawn(old.close())
        self.edge_guard = new
        if new is not None:
            self.guards.append(new)

    # -- events -------------------------------------------------------------------------------

    def event(self, kind: str, server: str | None = None, detail: str = "") -> None:
        self.events.append({"at": time.time(), "kind": kind, "server": server, "detail": detail})

    def _on_pool_event(self, event: PoolEvent, server: Server) -> None:
        now = time.monotonic()
        self.event(event.value, server.name, pool_event_detail(event, server, now))
        self.router.invalidate()
        if self.waiting.entries and event is not PoolEvent.ADDED and self._loop is not None:
            # A server became ready (the requests that waited for it go now), or left: those
            # that waited for nothing else to come are answered now, not at their deadline.
            # (Soon, not here: whoever changed the pool finishes first.)
            self._loop.call_soon(self._serve_waiters)
        if event is PoolEvent.EJECTED:
            log.warning("server %s ejected until +%.1fs", server.name,
                        server.ejected_until - time.monotonic())
        elif event is PoolEvent.REMOVED:
            up = self.upstreams.pop(server, None)
            if up is not None:
                up.close()
            self.outlier.forget(server)
        elif event is PoolEvent.DRAINING:
            up = self.upstreams.get(server)
            if up is not None:
                up.close_idle()

    def _serve_waiters(self) -> None:
        if self.waiting.entries:
            serve_waiters(self, time.monotonic())

    def fold_counters(self) -> collections.defaultdict[str, int]:
        """`counters`, up to date: the hot counts (requests, 2xx responses) added in. Admin
        readers and tests call this rather than reading `counters` directly."""
        c = self.counters
        if self.hot_requests:
            c["requests"] += self.hot_requests
            self.hot_requests = 0
        if self.hot_2xx:
            c["responses_2xx"] += self.hot_2xx
            self.hot_2xx = 0
        return c

    def deposit_requests(self, now: float) -> None:
        """Feed the retry budget the requests counted since the last call (per tick and before a
        retry decision: cheaper than a budget update per request, same decisions)."""
        total = self.fold_counters()["requests"]
        n = total - self._budget_counted
        self._budget_counted = total
        if n > 0:   # (< 0: someone reset the counters; nothing to deposit)
            self.retry_budget.process_requests(n, now)

    def note_failure(self, server: Server | None, failure: type[UpstreamFailed]) -> None:
        self.counters["upstream_failures"] += 1
        self.event("upstream_failure", server.name if server is not None else None, failure.reason)

    # -- connection limits (both listeners) -----------------------------------------------------

    def admit(self, ip: str) -> bool:
        """Count a new client connection from `ip`, or refuse it (False: the caller closes it)
        when `limits.max_connections` or `limits.max_connections_per_client` is reached. Every
        admitted connection is `release`d exactly once."""
        s = self.settings
        self.counters["connections_total"] += 1
        n = self.per_client.get(ip, 0)
        if self.connections >= s.max_connections or \
                (s.max_connections_per_client and n >= s.max_connections_per_client):
            self.counters["connections_refused"] += 1
            return False
        self.connections += 1
        self.per_client[ip] = n + 1
        return True

    def release(self, ip: str) -> None:
        """An admitted connection is gone."""
        self.connections -= 1
        n = self.per_client.get(ip, 1) - 1
        if n <= 0:
            self.per_client.pop(ip, None)
        else:
            self.per_client[ip] = n

    async def _accept_tls(self, lsock: socket.socket, ssl_ctx: ssl.SSLContext) -> None:
        """The HTTPS listener: accept, admit by peer address, then hand the socket to a TLS
        handshake bounded by `timeouts.client_header`. Accepting here (not `create_server(ssl=)`,
        whose protocol first hears of a connection after its handshake) makes a connection count
        against the limits and in /status from its first moment: a ClientHello that never comes
        used to hold a socket for uvloop's 60 s, unseen."""
        loop = asyncio.get_running_loop()
        next_warning = 0.0
        while True:
            try:
                sock, addr = await loop.sock_accept(lsock)
                batch = [(sock, addr)]
                # sock_accept takes one connection per wakeup: take what else is waiting too
                # (as the HTTP listener does), so a burst does not fill the backlog.
                while len(batch) < ACCEPT_BATCH:
                    try:
                        batch.append(lsock.accept())
                    except (BlockingIOError, InterruptedError):
                        break
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:   # keep the listener, slow down, say so rarely
                    now = time.monotonic()
                    if now >= next_warning:
                        log.warning("HTTPS accept failed: %s (retrying every 0.1 s)", exc)
                        next_warning = now + 10.0
                    await asyncio.sleep(0.1)
                continue   # (ECONNABORTED and the like: that client is gone, take the next)
            for sock, addr in batch:
                ip = str(addr[0])
                if not self.admit(ip):
                    sock.close()
                    continue
                sock.setblocking(False)
                task = loop.create_task(self._handshake(sock, ip, ssl_ctx))
                self._handshakes.add(task)
                task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, sock: socket.socket, ip: str, ssl_ctx: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(
                lambda: ClientProtocol(self, "https", admitted=True), sock, ssl=ssl_ctx,
                ssl_handshake_timeout=self.settings.client_header_s)
        except asyncio.CancelledError:   # (stop: the connection is given up, its count too)
            self.release(ip)
            sock.close()
            raise
        except Exception as exc:   # (SSLError, OSError, a timeout: the client failed its handshake)
            self.counters["tls_handshake_failed"] += 1
            log.debug("TLS handshake with %s failed: %r", ip, exc)
            self.release(ip)
            sock.close()

    def upstream_pool(self, server: Server) -> UpstreamPool:
        up = self.upstreams.get(server)
        if up is None:
            loop = self._loop or asyncio.get_running_loop()
            up = self.upstreams[server] = UpstreamPool(server, loop, self.settings.upstream_pool_size,
                                                       self.settings.connect_s)
        return up

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        loop = self._loop or asyncio.get_running_loop()
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, inherited: Inherited | None = None, accept: bool = True) -> None:
        """Bind the listeners, start the tick and the health checker. (The admin API is the
        command's: `admin.api.serve_admin`.)

        `inherited`: the listening sockets a predecessor handed over (proxy/handover.py), used
        instead of binding. `accept=False` holds the connections in the kernel's accept queue
        until `accept_now()`: a successor takes none before its app servers are ready.
        """
        loop = self._loop = asyncio.get_running_loop()
        cfg = self.cfg
        reuse_port = cfg.balancer.workers > 1
        if cfg.listen.https is not None and cfg.listen.tls is not None:
            from taxiway.security.tls import make_server_context

            ssl_ctx = make_server_context(cfg.listen.tls)
            host, port = split_hostport(cfg.listen.https, "listen.https")
            lsock = inherited.socket("https") if inherited is not None else None
            if lsock is None:
                lsock = socket.create_server((host, port), family=address_family(host), backlog=BACKLOG,
                                             reuse_port=reuse_port)
            lsock.setblocking(False)
            self._tls_sockets.append(lsock)
            self._ssl_ctx = ssl_ctx
            self.bound_https_port = int(lsock.getsockname()[1])
        if cfg.listen.http is not None:
            redirect = self._redirect_location if (cfg.listen.redirect_to_https and self.bound_https_port) \
                else None
            host, port = split_hostport(cfg.listen.http, "listen.http")
            sock = inherited.socket("http") if inherited is not None else None
            if sock is not None:
                srv = await loop.create_server(lambda: ClientProtocol(self, "http", redirect), sock=sock,
                                               backlog=BACKLOG, start_serving=accept)
            else:
                srv = await loop.create_server(lambda: ClientProtocol(self, "http", redirect), host, port,
                                               backlog=BACKLOG, reuse_port=reuse_port, start_serving=accept)
            self._listeners.append(srv)
            self.bound_http_port = _bound_port(srv)
        if accept:
            await self.accept_now()
        self._tick_handle = loop.call_later(TICK_S, self._tick)
        if cfg.health.enabled:
            self.health = HealthChecker(self)
            self.health.start()
        self.event("started", None, " ".join(
            f"{scheme} port {port}" for scheme, port in (("http", self.bound_http_port),
                                                         ("https", self.bound_https_port))
            if port is not None))

    async def accept_now(self) -> None:
        """Begin accepting on every listener (`start(accept=False)` held them)."""
        loop = self._loop or asyncio.get_running_loop()
        for srv in self._listeners:
            if not srv.is_serving():
                await srv.start_serving()
        if not self._acceptors and self._ssl_ctx is not None:
            self._acceptors.extend(loop.create_task(self._accept_tls(lsock, self._ssl_ctx))
                                   for lsock in self._tls_sockets)

    def listening_fds(self) -> dict[str, int]:
        """The listeners' descriptors by name ("http", "https"), for a successor to inherit."""
        out = {}
        if self._listeners:
            out["http"] = _listener_fd(self._listeners[0])
        if self._tls_sockets:
            out["https"] = self._tls_sockets[0].fileno()
        return out

    def _redirect_location(self, head: RequestHead) -> bytes:
        host = (head.header(b"host") or b"localhost").decode("latin-1")
        if host.startswith("["):
            host = host[: host.index("]") + 1]
        else:
            host = host.rpartition(":")[0] or host if host.count(":") == 1 else host
        port = self.bound_https_port
        hostport = host if port == 443 else f"{host}:{port}"
        return f"https://{hostport}{head.target}".encode("latin-1")

    async def stop(self, deadline_s: float | None = None, idle_linger_s: float = 0.0) -> None:
        """Graceful: stop accepting, let in-flight requests finish (up to the deadline), close.

        `idle_linger_s`: an idle keep-alive connection stays open that long for one more request
        (answered with `Connection: close`) instead of being closed at once. For a handover to a
        successor: closing an idle connection races with the request its client may be sending
        right then, which the client sees as a failure; a busy client's next request instead
        tells it to reconnect, and it reaches the successor.
        """
        if deadline_s is None:
            deadline_s = float(self.cfg.timeouts.shutdown)
        for srv in self._listeners:
            srv.close()
        self._listeners = []
        for task in [*self._acceptors, *self._handshakes]:
            task.cancel()   # (no new connection may appear while the others drain)
        self._acceptors = []
        for lsock in self._tls_sockets:
            lsock.close()
        self._tls_sockets = []
        for p in list(self.protocols):
            p.shutdown(idle_linger_s)
        end = time.monotonic() + deadline_s
        while self.protocols and time.monotonic() < end:
            await asyncio.sleep(0.05)
        for p in list(self.protocols):
            p.abort()
        if self.health is not None:
            try:
                await self.health.stop()
            except Exception:
                log.exception("stopping the health checker")
        if self.edge_guard is not None:
            try:
                await self.edge_guard.close()
            except Exception:
                log.exception("closing the edge guard")
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        for up in self.upstreams.values():
            up.close()
        for t in list(self._tasks):
            t.cancel()
        if self.access_log is not None:
            self.access_log.close()
        self.event("stopped")

    def _tick(self) -> None:
        assert self._loop is not None
        self._tick_handle = self._loop.call_later(TICK_S, self._tick)
        now = time.monotonic()
        self.date.refresh(time.time())
        self.deposit_requests(now)
        for p in list(self.protocols):
            try:
                p.check_timers(now)
            except Exception:
                log.exception("timer check failed")
                p.abort()
        if self.waiting.entries:
            expire_waiters(self, now)
        idle_s = self.settings.upstream_idle_s
        for up in self.upstreams.values():
            up.sweep(now, idle_s)
        if self._to_remove:
            for name in list(self._to_remove):
                s = self.pool.get(name)
                if s is None or s.inflight <= 0:
                    self._to_remove.discard(name)
                    if s is not None:
                        self.remove_server(name)
        if self.access_log is not None:
            self.access_log.flush()
        if self._malloc_trim is not None and self.heap_policy.should_trim(self.paused_writers, now):
            # A burst of slow readers is over: give its buffers back (heap.py), off the loop.
            self.counters["heap_trims"] += 1
            self._loop.run_in_executor(None, self._malloc_trim)

    # -- pool management (autoscaler, reload) -------------------------------------------------

    def add_server(self, server: Server) -> None:
        self.pool.add(server, time.monotonic())

    def drain_server(self, name: str) -> None:
        self.pool.drain(name)

    def remove_server(self, name: str) -> None:
        self.pool.remove(name)

    def record_cold_start(self, seconds: float, ok: bool) -> None:
        c = self.cold_start
        c["requests"] = int(c["requests"] or 0) + 1
        c["last_s"] = round(seconds, 3)
        c["max_s"] = round(max(float(c["max_s"] or 0.0), seconds), 3)
        c["at"] = round(time.time(), 3)
        if not ok:
            c["failed"] = int(c["failed"] or 0) + 1

    def queued(self) -> int:
        """Requests waiting for a server (the autoscaler's demand when no server is ready)."""
        return self.waiting.live() if self.waiting.entries else 0

    def reload(self, cfg: Config) -> None:
        """Apply a new config (SIGHUP): servers added, drained+removed, reweighted; settings swapped.

        Listener addresses cannot change without a restart (logged). Connections stay open.
        """
        old = self.cfg
        if (cfg.listen, cfg.admin) != (old.listen, old.admin):
            log.warning("reload: listen/admin addresses change only on restart; kept the old ones")
        # Build everything that can fail first, then swap: a reload either applies whole or not
        # at all (a half-applied config is worse than either).
        settings = Settings(cfg, self.settings.request_rewriter)
        router = Router(cfg, self.pool, self.rng) \
            if (cfg.balancer, cfg.affinity, cfg.limits.upstream_max_connections) \
            != (old.balancer, old.affinity, old.limits.upstream_max_connections) else self.router
        guard_changed = (cfg.ratelimit, cfg.apikeys) != (old.ratelimit, old.apikeys)
        new_guard = None
        if guard_changed:
            new_guard = EdgeGuard.from_config(cfg)
        log_changed = cfg.access_log != old.access_log
        try:
            access_log = AccessLog(cfg.access_log.path) \
                if log_changed and cfg.access_log.enabled else None
        except OSError as exc:
            if new_guard is not None:
                self.spawn(new_guard.close())
            raise ConfigError("access_log.path", f"a writable file ({exc.strerror})",
                              cfg.access_log.path) from None
        self.cfg = cfg
        self.settings = settings
        self.router = router
        if cfg.outlier != old.outlier:
            self.outlier = OutlierDetector(cfg.outlier)
        if cfg.balancer.retry_budget != old.balancer.retry_budget:
            self.retry_budget = RetryBudget(cfg.balancer.retry_budget)
            self._budget_counted = self.fold_counters()["requests"]
        if guard_changed:
            self._swap_edge_guard(new_guard)
        if log_changed:
            if self.access_log is not None:
                self.access_log.close()
            self.access_log = access_log
        for up in self.upstreams.values():
            up.max_idle = self.settings.upstream_pool_size
            up.connect_timeout_s = self.settings.connect_s
        now = time.monotonic()
        wanted: dict[str, Server] = {}
        for i, sc in enumerate(cfg.servers):
            s = server_from_config(sc.url, sc.name, sc.weight, f"servers[{i}].url",
                                   float(cfg.balancer.slow_start))
            wanted[s.name] = s
        for s in list(self.pool):
            if s.static and s.name not in wanted and not s.draining:
                self.drain_server(s.name)
                self._to_remove.add(s.name)
        for name, new in wanted.items():
            cur = self.pool.get(name)
            if cur is None:
                self.pool.add(new, now)
                continue
            changed = False
            if cur.draining:
                cur.draining = False
                self._to_remove.discard(name)
                cur.joined_at = now
                changed = True
            if (cur.host, cur.port) != (new.host, new.port):
                cur.host, cur.port = new.host, new.port
                old_up = self.upstreams.get(cur)
                if old_up is not None:
                    old_up.close_idle()
                changed = True
            if cur.weight != new.weight or cur.slow_start_s != new.slow_start_s:
                cur.weight = new.weight
                cur.slow_start_s = new.slow_start_s
                changed = True
            if changed:
                self.pool.emit(PoolEvent.CHANGED, cur)
        self.router.invalidate()
        self.event("reload", None, f"{len(wanted)} static server(s)")
        log.info("config reloaded: %d static server(s)", len(wanted))


def _listener_fd(srv: Any) -> int:
    """The descriptor of a listener's (first) socket; untyped for the reason of `_bound_port`."""
    return int(srv.sockets[0].fileno())


def _bound_port(srv: Any) -> int:
    """The port a listener got (uvloop's server keeps its sockets in a list, asyncio's in a
    tuple: compiled code checks declared types, so read it untyped)."""
    return int(srv.sockets[0].getsockname()[1])
