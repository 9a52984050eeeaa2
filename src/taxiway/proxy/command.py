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
import errno
import logging
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING

import msgspec
import uvloop

from taxiway import BUILD
from taxiway.config import Config, address_family, load_config, split_hostport
from taxiway.errors import ConfigError, TaxiwayError

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
    return serve(cfg, args.config)


_CONTROL_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def serve(cfg: Config, config_path: str | None, worker: int = 0) -> int:
    """Run one balancer on a uvloop loop until SIGTERM/SIGINT. Returns the exit status."""
    return uvloop.run(_main(cfg, config_path, worker))


async def _main(cfg: Config, config_path: str | None, worker: int) -> int:
    from taxiway.proxy.app import Balancer

    bal = Balancer(cfg, config_path)
    admin = await start_with_admin(bal, cfg)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if config_path is not None:
        loop.add_signal_handler(signal.SIGHUP, _reload, bal, config_path, worker)
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
    await stop.wait()
    log.info("stopping: finishing in-flight requests (up to %.0fs)", float(cfg.timeouts.shutdown))
    try:
        await bal.stop(float(cfg.timeouts.shutdown))
    finally:
        if admin is not None:   # (last: /status shows the drain)
            await admin.close()
    return 0


async def start_with_admin(bal: Balancer, cfg: Config) -> AdminServer | None:
    """Start `bal`, then its admin listener (`admin.listen`), reporting a taken address by the
    setting that names it. Used by `taxiway lb` and `taxiway up`."""
    from taxiway.admin.api import serve_admin

    try:
        await bal.start()
    except OSError as exc:
        raise listen_error(cfg, bal, exc) from None
    try:
        return await serve_admin(bal, cfg.admin)
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


def _reserve_port(addr: str, key: str) -> tuple[str, socket.socket | None]:
    """For ":0" pick one port all workers share (bound with SO_REUSEPORT, held until they run)."""
    host, port = split_hostport(addr, key)
    if port != 0:
        return addr, None
    s = socket.socket(address_family(host))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, 0))
    port = s.getsockname()[1]
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), s


def _run_workers(cfg: Config, config_path: str) -> int:
    held: list[socket.socket] = []
    listen = cfg.listen
    for key in ("http", "https"):
        addr = getattr(listen, key)
        if addr is not None:
            addr, sock = _reserve_port(addr, f"listen.{key}")
            listen = msgspec.structs.replace(listen, **{key: addr})
            if sock is not None:
                held.append(sock)
    cfg = msgspec.structs.replace(cfg, listen=listen)
    pids: list[int] = []
    # Block control signals while forking: children inherit the mask and unblock once their
    # handlers are installed, and the parent once it can forward them. Without this a SIGTERM
    # during start-up kills a worker outright (exit by signal, not a drain).
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _CONTROL_SIGNALS)
    for i in range(cfg.balancer.workers):
        wcfg = cfg if i == 0 else msgspec.structs.replace(
            cfg, admin=msgspec.structs.replace(cfg.admin, listen=None))
        pid = os.fork()
        if pid == 0:
            for s in held:
                s.close()
            code = 1
            try:
                code = serve(wcfg, config_path, i)
            except TaxiwayError as exc:
                print(f"taxiway: worker {i}: {exc}", file=sys.stderr)
            finally:
                os._exit(code)
        pids.append(pid)
    for s in held:
        s.close()

    def forward(signum: int, _frame: object) -> None:
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for signum in _CONTROL_SIGNALS:
        signal.signal(signum, forward)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    status = 0
    for pid in pids:
        while True:
            try:
                _, st = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        code = os.waitstatus_to_exitcode(st)
        if code != 0:
            status = 1
    return status
