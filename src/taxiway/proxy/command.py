"""`taxiway lb --config FILE`: run the load balancer until SIGTERM.

Signals: SIGTERM/SIGINT stop accepting and finish in-flight requests (timeouts.shutdown), then exit
0; SIGHUP reloads the config file (a bad file is logged and the running config kept).
With `balancer.workers = N > 1` the parent starts N worker processes that each bind the listen
address with SO_REUSEPORT (the kernel spreads connections) and forwards signals to them. Each
worker has its own balancer state (in-flight counts, EWMA, round-robin position, health); only
worker 0 runs the admin API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
import uvloop

from taxiway import BUILD
from taxiway.config import Config, address_family, load_config, split_hostport
from taxiway.errors import ConfigError, TaxiwayError
from taxiway.proxy import handover
from taxiway.proxy.handover import Inherited

if TYPE_CHECKING:
    from taxiway.admin.api import AdminServer
    from taxiway.proxy.app import Balancer

HELP = ("Run the load balancer: HTTP/1.1 reverse proxy with keep-alive pools, retries, health "
        "checks. SIGTERM drains and exits; SIGHUP reloads the config file.")

log = logging.getLogger("taxiway.proxy")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="taxiway.toml", help="TOML file (default ./taxiway.toml)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if cfg.pool is not None:
        raise ConfigError("pool", "no [pool] section: `taxiway lb` runs static [[servers]] only; "
                          "`taxiway up` runs a pool", source=args.config)
    if not cfg.servers:
        log.warning("%s: no [[servers]]: every request will get 503 until a reload adds one", args.config)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cfg.balancer.workers > 1:
        return _run_workers(cfg, args.config)
    return serve(cfg, args.config, 0, handover.inherited())


_CONTROL_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2}


def serve(cfg: Config, config_path: str | None, worker: int = 0,
          inherited: Inherited | None = None) -> int:
    """Run one balancer on a uvloop loop until SIGTERM/SIGINT. Returns the exit status.
    `inherited`: listening sockets to use instead of binding (a predecessor's, or a worker's
    from its parent)."""
    return uvloop.run(_main(cfg, config_path, worker, inherited))


async def _main(cfg: Config, config_path: str | None, worker: int, inherited: Inherited | None) -> int:
    from taxiway.proxy.app import Balancer

    bal = Balancer(cfg, config_path)
    if cfg.balancer.workers > 1:
        bal.control_pid = os.getppid()
    admin = await start_with_admin(bal, cfg, inherited)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if config_path is not None:
        loop.add_signal_handler(signal.SIGHUP, _reload, bal, config_path, worker)
    upgrade = Upgrade(bal, admin, UPGRADE_READY_S, stop.set)
    # One process: SIGUSR2 starts an upgrade. A worker: its parent has handed our sockets to a
    # successor's worker, which accepts already; drain and exit.
    loop.add_signal_handler(signal.SIGUSR2, upgrade.trigger if cfg.balancer.workers == 1 else upgrade.release)
    # A worker is forked with these signals blocked (see _run_workers): one that arrived while it
    # was starting is delivered now, to the handlers above, instead of killing it half-started.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _CONTROL_SIGNALS)
    where = []
    if cfg.listen.http is not None:
        where.append(f"http://{split_hostport(cfg.listen.http, 'listen.http')[0]}:{bal.bound_http_port}")
    if cfg.listen.https is not None:
        host = split_hostport(cfg.listen.https, "listen.https")[0]
        where.append(f"https://{host}:{bal.bound_https_port}")
    print(f"taxiway lb{f' worker {worker}' if worker else ''}: listening on {' '.join(where)} "
          f"({cfg.balancer.strategy}, {len(bal.pool)} server(s); hot path {BUILD})",
          file=sys.stderr, flush=True)
    if inherited is not None:
        inherited.close()
        inherited.ready()
    await stop.wait()
    log.info("stopping: finishing in-flight requests (up to %.0fs)", float(cfg.timeouts.shutdown))
    try:
        await bal.stop(float(cfg.timeouts.shutdown), upgrade.idle_linger_s())
    finally:
        if admin is not None:   # (last: /status shows the drain)
            await admin.close()
    return 0


UPGRADE_READY_S = 60.0   # `taxiway lb`: how long a successor may take to accept


class Upgrade:
    """SIGUSR2 (`taxiway upgrade`): hand this process's listeners to a successor
    (proxy/handover.py). Once the successor accepts, `on_done` runs and the caller drains and
    exits as on SIGTERM; a failed successor leaves this process serving, with the reason logged
    and in the events."""

    def __init__(self, bal: Balancer, admin: AdminServer | None, timeout_s: float,
                 on_done: Callable[[], None], env: Callable[[], dict[str, str]] | None = None) -> None:
        self.bal, self.admin, self.timeout_s = bal, admin, timeout_s
        self.on_done = on_done
        self.env = env
        self.successor: int | None = None    # its pid, once it accepts
        self.released = False                 # a worker whose parent handed its sockets over
        self._task: asyncio.Task[None] | None = None

    def release(self) -> None:
        self.released = True
        self.on_done()

    def trigger(self) -> None:
        if self.successor is not None or (self._task is not None and not self._task.done()):
            log.warning("upgrade: one is under way already; this signal is ignored")
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._hand_over()
        except Exception as exc:   # an upgrade must never take the running balancer down
            log.exception("upgrade failed, still serving")
            self.bal.event("upgrade_failed", None, f"{type(exc).__name__}: {exc}")

    async def _hand_over(self) -> None:
        fds = self.bal.listening_fds()
        admin_fd = self.admin.fileno() if self.admin is not None else None
        if admin_fd is not None:
            fds["admin"] = admin_fd
        log.info("upgrade: starting a new taxiway with this one's listeners (%s)", ", ".join(fds))
        self.bal.event("upgrade", None, "starting a new process with the listening sockets")
        pid, why = await handover.hand_over(fds, self.timeout_s, self.env() if self.env else None)
        if pid is None:
            log.error("upgrade failed, still serving: %s", why)
            self.bal.event("upgrade_failed", None, why or "")
            return
        log.info("upgrade: pid %d accepts now; this process finishes its requests and exits", pid)
        self.bal.event("upgraded", None, f"pid {pid} accepts now; pid {os.getpid()} drains and exits")
        self.successor = pid
        self.on_done()

    def idle_linger_s(self) -> float:
        """How long idle connections may stay for one more request while stopping (Balancer.stop):
        only when a successor will take their clients' next connection."""
        return handover.IDLE_LINGER_S if self.successor is not None or self.released else 0.0


async def start_with_admin(bal: Balancer, cfg: Config, inherited: Inherited | None = None,
                           accept: bool = True) -> AdminServer | None:
    """Start `bal`, then its admin listener (`admin.listen`), reporting a taken address by the
    setting that names it. Used by `taxiway lb` and `taxiway up`. `inherited`, `accept`: see
    `Balancer.start` (a successor uses its predecessor's sockets and accepts once ready)."""
    from taxiway.admin.api import serve_admin

    try:
        await bal.start(inherited, accept)
    except OSError as exc:
        raise listen_error(cfg, bal, exc) from None
    try:
        sock = inherited.socket("admin") if inherited is not None else None
        return await serve_admin(bal, cfg.admin, sock, accept)
    except OSError as exc:
        await bal.stop(0.0)
        raise _bind_failure("admin.listen", cfg.admin.listen or "", exc) from None
    except BaseException:
        await bal.stop(0.0)
        raise


def _listeners(cfg: Config) -> list[tuple[str, str]]:
    """(key, address) of every address taxiway binds, in the order it binds them."""
    out = [("listen.https", cfg.listen.https), ("listen.http", cfg.listen.http),
           ("admin.listen", cfg.admin.listen or None)]
    return [(key, addr) for key, addr in out if addr is not None]


def _bind_failure(key: str, addr: str, exc: OSError) -> TaxiwayError:
    """"admin.listen 127.0.0.1:9901: address already in use (...)": the setting to change, its
    value, and what the kernel said, in words that suggest the usual cause."""
    if exc.errno == errno.EADDRINUSE:
        reason = f"address already in use (another taxiway running? set {key} or stop it)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        reason = "address not available (no network interface here has that IP)"
    elif exc.errno == errno.EACCES:
        reason = "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    else:
        reason = str(exc.strerror or exc)
    return TaxiwayError(f"{key} {addr}: {reason}")


def listen_error(cfg: Config, bal: Balancer, exc: OSError) -> TaxiwayError:
    """The error for an OSError out of `bal.start()`, naming the setting whose address failed.

    Why this way: the OSError says "address already in use" but not which of two addresses.
    `Balancer.start` binds listen.https, then listen.http, recording each port once bound, so the
    first configured one without a bound port is the one that failed.
    """
    bound = {"listen.https": bal.bound_https_port, "listen.http": bal.bound_http_port}
    for key, addr in _listeners(cfg):
        if key not in bound:
            continue
        if bound[key] is None:
            return _bind_failure(key, addr, exc)
    return TaxiwayError(f"cannot listen: {exc.strerror or exc}")


def check_addresses_free(cfg: Config) -> None:
    """Raise the `listen_error` message now if an address is taken, by binding it for a moment.

    For `taxiway up` before pool.setup, which may run for minutes: the answer would otherwise come
    after it. Binds the way asyncio's servers do (SO_REUSEADDR), so a port in TIME_WAIT is free.
    """
    for key, addr in _listeners(cfg):
        host, port = split_hostport(addr, key)
        if port == 0:
            continue
        try:
            with socket.create_server((host, port), family=address_family(host)):
                pass
        except OSError as exc:
            raise _bind_failure(key, addr, exc) from None


def _reload(bal: object, config_path: str, worker: int) -> None:
    from taxiway.proxy.app import Balancer

    assert isinstance(bal, Balancer)
    try:
        cfg = load_config(config_path)
        if worker:
            cfg = msgspec.structs.replace(cfg, admin=msgspec.structs.replace(cfg.admin, listen=None))
        cfg = msgspec.structs.replace(cfg, listen=bal.cfg.listen)
        bal.reload(cfg)
    except ConfigError as exc:
        log.error("reload failed, keeping the running config: %s", exc)
        bal.event("reload_failed", None, str(exc))
    except Exception as exc:  # a reload must never take the running balancer down
        log.exception("reload failed, keeping the running config")
        bal.event("reload_failed", None, f"{type(exc).__name__}: {exc}")


def _bind_slots(cfg: Config, inherited: Inherited | None) -> list[dict[str, socket.socket]]:
    """The listening sockets of `balancer.workers` workers, bound here in the parent: per worker
    an SO_REUSEPORT socket for each of listen.https and listen.http (the kernel spreads connections
    over them), and the admin listener for worker 0. A predecessor's are used where it handed
    them over ("<worker>.<name>"); a ":0" port is the one the first socket got.

    Why the parent holds them: an upgrade hands each one to the successor's worker of the same
    number while the old worker still accepts on it, so no accept queue is ever closed with
    connections in it (what resets them in an SO_REUSEPORT handover).
    """
    from taxiway.proxy.app import BACKLOG

    n = cfg.balancer.workers
    slots: list[dict[str, socket.socket]] = [{} for _ in range(n)]
    keys = [("https", cfg.listen.https if cfg.listen.tls is not None else None), ("http", cfg.listen.http)]
    for key, addr in keys:
        if addr is None:
            continue
        host, port = split_hostport(addr, f"listen.{key}")
        for i in range(n):
            sock = inherited.socket(f"{i}.{key}") if inherited is not None else None
            if sock is None:
                try:
                    sock = socket.create_server((host, port), family=address_family(host), backlog=BACKLOG,
                                                reuse_port=True)
                except OSError as exc:
                    raise _bind_failure(f"listen.{key}", addr, exc) from None
            port = int(sock.getsockname()[1])
            slots[i][key] = sock
    if cfg.admin.listen:
        sock = inherited.socket("0.admin") if inherited is not None else None
        if sock is None:
            host, port = split_hostport(cfg.admin.listen, "admin.listen")
            try:
                sock = socket.create_server((host, port), family=address_family(host))
            except OSError as exc:
                raise _bind_failure("admin.listen", cfg.admin.listen, exc) from None
        slots[0]["admin"] = sock
    return slots


def _resolved(cfg: Config, slot: dict[str, socket.socket]) -> Config:
    """`cfg` with each listen address's port the one bound (":0" picked one)."""
    listen = cfg.listen
    for key in ("http", "https"):
        sock = slot.get(key)
        if sock is not None and getattr(listen, key) is not None:
            host = split_hostport(getattr(listen, key), f"listen.{key}")[0]
            port = sock.getsockname()[1]
            addr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            listen = msgspec.structs.replace(listen, **{key: addr})
    return msgspec.structs.replace(cfg, listen=listen)


class _Workers:
    """The parent of `balancer.workers` processes: forks them on the sockets it holds, forwards
    signals, reaps them, and runs an upgrade (SIGUSR2) by replacing them one by one."""

    def __init__(self, cfg: Config, config_path: str, slots: list[dict[str, socket.socket]]) -> None:
        self.cfg, self.config_path, self.slots = cfg, config_path, slots
        self.pids: dict[int, int] = {}       # pid -> worker number
        self.current: dict[int, int] = {}    # worker number -> its pid now
        self.status = 0
        self.upgrade_asked = False
        self.handed_over = False

    def fork(self, i: int) -> int:
        """Start worker `i` on slot i's sockets; returns the read end of a pipe on which it says
        `ready` once it accepts (EOF if it died first)."""
        wcfg = self.cfg if i == 0 else msgspec.structs.replace(
            self.cfg, admin=msgspec.structs.replace(self.cfg.admin, listen=None))
        r, w = os.pipe()
        # Forked with control signals blocked: the worker unblocks them once its own handlers are
        # installed (_main); until then one would run this parent's handlers in the child.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _CONTROL_SIGNALS)
        pid = os.fork()
        if pid == 0:
            os.close(r)
            code = 1
            try:
                fds = {key: sock.detach() for key, sock in self.slots[i].items()}
                for j, slot in enumerate(self.slots):
                    if j != i:
                        for sock in slot.values():
                            sock.close()
                code = serve(wcfg, self.config_path, i, Inherited(fds, w, None))
            except TaxiwayError as exc:
                print(f"taxiway: worker {i}: {exc}", file=sys.stderr)
            except BaseException:
                log.exception("worker %d failed", i)
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(w)
        self.pids[pid] = i
        self.current[i] = pid
        return r

    def reap(self) -> None:
        """Collect workers that exited. A worker that died on its own takes its sockets with it
        (the parent closes its copies), so the kernel stops sending it connections."""
        while self.pids:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.pids.clear()
                return
            if pid == 0:
                return
            i = self.pids.pop(pid, None)
            if i is None:
                continue   # (a successor that was stopped: handover.Successor.stop reaps it)
            if os.waitstatus_to_exitcode(st) != 0:
                self.status = 1
            if self.current.get(i) == pid:
                del self.current[i]
                if not self.handed_over:
                    for sock in self.slots[i].values():
                        sock.close()

    def upgrade(self) -> None:
        """Hand every socket to a successor `taxiway lb`; as its worker i accepts (`step i`),
        our worker i drains and exits. If the successor fails, workers already replaced are
        forked again, so every socket keeps an acceptor."""
        fds = {f"{i}.{key}": sock.fileno() for i, slot in enumerate(self.slots) for key, sock in slot.items()}
        replaced: list[int] = []

        def step(key: str) -> None:
            if key.isdigit() and int(key) in self.current:
                replaced.append(int(key))
                log.info("upgrade: worker %s of the new taxiway accepts; worker %s (pid %d) drains",
                         key, key, self.current[int(key)])
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.current[int(key)], signal.SIGUSR2)

        log.info("upgrade: starting a new taxiway lb with this one's listeners")
        pid, why = asyncio.run(handover.hand_over(fds, UPGRADE_READY_S * len(self.slots), None, step))
        if pid is None:
            log.error("upgrade failed, still serving: %s", why)
            for i in replaced:
                if self.current.get(i) is not None:
                    os.close(self.fork(i))
            return
        log.info("upgrade: pid %d accepts now; these workers finish their requests and exit", pid)
        self.handed_over = True
        for i, wpid in self.current.items():
            if i not in replaced:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(wpid, signal.SIGUSR2)
        for slot in self.slots:
            for sock in slot.values():
                sock.close()

    def forward(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGUSR2:
            self.upgrade_asked = True
            return
        for pid in list(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def run(self, inherited: Inherited | None) -> int:
        # Block control signals while forking: children inherit the mask and unblock once their
        # handlers are installed, and the parent once it can forward them. Without this a SIGTERM
        # during start-up kills a worker outright (exit by signal, not a drain).
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _CONTROL_SIGNALS)
        pipes = [self.fork(i) for i in range(len(self.slots))] if inherited is None else []
        if inherited is not None:
            # A successor: one worker at a time, each accepting before the old one of its number
            # is told to go (`step i`), so the sockets never lack an acceptor.
            for i in range(len(self.slots)):
                r = self.fork(i)
                if not _wait_ready(r, UPGRADE_READY_S):
                    inherited.failed(f"worker {i} did not start")
                    break
                inherited.say(f"step {i}")
            else:
                inherited.close()
                inherited.ready()
        for r in pipes:
            os.close(r)
        for signum in _CONTROL_SIGNALS:
            signal.signal(signum, self.forward)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        while self.pids:
            if self.upgrade_asked and not self.handed_over:
                self.upgrade_asked = False
                self.upgrade()
            self.reap()
            time.sleep(0.05)
        return self.status


def _wait_ready(r: int, timeout_s: float) -> bool:
    """Read a worker's `ready` line from its pipe (closed after); False on EOF or timeout."""
    lines = handover.Lines(r)
    try:
        return asyncio.run(lines.next_line(time.monotonic() + timeout_s)) == "ready"
    except TimeoutError:
        return False
    finally:
        lines.close()


def _run_workers(cfg: Config, config_path: str) -> int:
    inherited = handover.inherited()
    slots = _bind_slots(cfg, inherited)
    cfg = _resolved(cfg, slots[0])
    return _Workers(cfg, config_path, slots).run(inherited)
