"""`taxiway up [--config FILE]`: the balancer and an autoscaled pool of app servers, one process.

Both run on one uvloop event loop: the Supervisor adds, readies, drains and removes servers in the
Balancer's pool directly (no IPC), and the admin API's /status shows the supervisor under
"autoscale". Stopping (Ctrl-C, SIGTERM): the balancer stops accepting and finishes in-flight
requests, then every app server gets SIGTERM (SIGKILL after pool.stop_grace). A second Ctrl-C
kills the app servers at once. SIGHUP reloads the config file (balancer settings, static servers,
[pool] and [autoscale]). If taxiway is SIGKILLed, the kernel kills the app servers
(PR_SET_PDEATHSIG, see supervisor.py).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import uvloop

from taxiway.autoscale.live import RateMeter, run_live, summary_line
from taxiway.autoscale.policy import PolicyConfig
from taxiway.autoscale.process import command_argv, die_with_parent
from taxiway.autoscale.supervisor import Supervisor
from taxiway.balancing.model import Pool, PoolEvent
from taxiway.config import Config, PoolConfig, load_config, split_hostport
from taxiway.errors import ConfigError, TaxiwayError, UsageError
from taxiway.proxy import handover
from taxiway.proxy.command import Upgrade
from taxiway.proxy.handover import Inherited

if TYPE_CHECKING:
    from taxiway.admin.api import AdminServer
    from taxiway.proxy.app import Balancer

HELP = ("Start the load balancer and a pool of app servers that grows and shrinks with the load "
        "([pool] and [autoscale] in the config). Ctrl-C stops everything.")

log = logging.getLogger("taxiway.autoscale")
FORWARDED_EVENTS = ("scale", "hold", "crashed", "drain_timeout", "killed", "rollout")
PLAIN_SUMMARY_S = 5.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="taxiway.toml", help="TOML file (default ./taxiway.toml)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--plain", action="store_true",
                   help="plain log lines even when stdout is a terminal (no live view)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if cfg.pool is None:
        raise UsageError(f"{args.config}: `taxiway up` needs a [pool] section (a command with {{port}}); "
                         "for static [[servers]] only use `taxiway lb`")
    if cfg.balancer.workers > 1:
        raise ConfigError("balancer.workers", "1 under `taxiway up` (one process runs the balancer and "
                          "the pool); use `taxiway lb` for SO_REUSEPORT workers", cfg.balancer.workers,
                          source=args.config)
    for warning in check_programs(cfg, args.config):
        log.warning("taxiway: warning: %s: %s", args.config, warning)
    live = sys.stdout.isatty() and not args.plain
    if live and cfg.access_log.enabled and cfg.access_log.path == "-":
        # One JSON line per request would scroll the live view away; a file path keeps it.
        cfg = msgspec.structs.replace(cfg, access_log=msgspec.structs.replace(cfg.access_log, enabled=False))
    _setup_logging(args.log_level, live)
    return uvloop.run(_main(cfg, args.config, live))


def _setup_logging(level: str, live: bool) -> None:
    if live:
        from rich.logging import RichHandler

        logging.basicConfig(level=level.upper(), format="%(message)s",
                            handlers=[RichHandler(show_path=False)])
    else:
        logging.basicConfig(level=level.upper(), stream=sys.stdout,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def pool_cwd(cfg: Config, config_path: str) -> str:
    """pool.cwd, relative to the config file's directory (which is also the default)."""
    base = Path(config_path).resolve().parent
    assert cfg.pool is not None
    return str(base / cfg.pool.cwd) if cfg.pool.cwd else str(base)


def check_programs(cfg: Config, config_path: str, *, setup_done: bool = False,
                   unset: frozenset[str] = frozenset()) -> list[str]:
    """Refuse a [pool] whose programs cannot be started on this machine, before anything runs.

    Why: otherwise a missing program shows up late and bare, as app servers that crash-loop with
    `No such file or directory` (the classic: `command = "taxiway backend ..."` run as
    `.venv/bin/taxiway up`, with no `taxiway` on PATH). The lookup is the one exec does for the
    supervisor and for pool.setup: the first word once `command_argv` has filled the placeholders;
    a word with a '/' is a path from pool.cwd, any other is searched on the PATH the process gets
    (pool.env's, if it sets one; relative entries count from pool.cwd, as for the child).

    Raises ConfigError naming `pool.cwd`, `pool.command` or `pool.setup[i]`. A program that an
    earlier setup step may create (a venv, `npm install`) cannot be judged yet: that is a warning,
    returned for the caller to print; with `setup_done` (setup has run) it is an error too. `up`
    calls this at start-up, after setup and on SIGHUP, `taxiway check` too, so both refuse the
    same file. `unset`: keys whose `${VAR}` is not set here (`taxiway check` goes on with a stand-in
    value): nothing is judged from a value the user did not write.
    """
    pool = cfg.pool
    if pool is None or "pool.cwd" in unset:
        return []
    cwd = Path(pool_cwd(cfg, config_path))
    if not cwd.is_dir():
        raise ConfigError("pool.cwd", "an existing directory (a relative path starts at the config file's)",
                          str(cwd), source=config_path)
    env = {**os.environ, **pool.env}
    steps: list[tuple[str, str, dict[str, str]]] = [] if setup_done else \
        [(f"pool.setup[{i}]", command, {}) for i, command in enumerate(pool.setup)]
    steps.append(("pool.command", pool.command, {"port": "0", "host": pool.host, "name": "app-1"}))
    warnings = []
    for n, (key, command, values) in enumerate(steps):
        if key in unset or "pool.env.PATH" in unset:
            continue
        argv = command_argv(command, **values)
        found = _find_program(argv[0], cwd, env, "pool.env.PATH" if "PATH" in pool.env else "PATH") \
            if argv else None
        if found is None:
            continue
        problem, hint = found
        if n == 0:
            raise ConfigError(key, problem + (" after pool.setup ran" if setup_done else "") + hint,
                              source=config_path)
        warnings.append(f"{key}: {problem} yet; fine if an earlier pool.setup step creates it")
    return warnings


def _find_program(program: str, cwd: Path, env: dict[str, str], path_name: str) -> tuple[str, str] | None:
    """None when exec would find `program` (from `cwd`, with `env`), else (what is wrong, a hint)."""
    if "/" in program:
        path = cwd / program
        if not path.is_file():
            return f"program {program!r} not found", "" if Path(program).is_absolute() else f" (at {path})"
        if not os.access(path, os.X_OK):
            return f"program {program!r} is not executable", " (chmod +x it, or run it with its interpreter)"
        return None
    dirs = os.pathsep.join(str(cwd / d) for d in env.get("PATH", os.defpath).split(os.pathsep))
    if shutil.which(program, path=dirs):
        return None
    if program == "taxiway":
        hint = "; write '{taxiway}' to run the taxiway you started"
    elif program.startswith("{") and program.endswith("}"):
        hint = (f"; {program} is not a placeholder (those are {{python}}, {{taxiway}}, {{host}}, {{port}} "
                "and {name})")
    else:
        hint = " (is it installed? a program in a virtualenv needs its full path, or '{python} -m ...')"
    return f"program {program!r} not found on {path_name}", hint


def where(cfg: Config, bal: object) -> str:
    host = split_hostport(cfg.listen.http, "listen.http")[0] if cfg.listen.http else "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    port = getattr(bal, "bound_http_port", None)
    if port is None:
        https = getattr(bal, "bound_https_port", None)
        return f"https://{host}:{https}"
    return f"http://{host}:{port}"


async def run_setup(pool: PoolConfig, cwd: str) -> None:
    """pool.setup, once, before anything listens; output streams through, prefixed."""
    for i, command in enumerate(pool.setup):
        await _run_setup_command(pool, command, cwd, f"pool.setup[{i}]")


async def _run_setup_command(pool: PoolConfig, command: str, cwd: str, key: str) -> None:
    print(f"taxiway up: setup: {command}", flush=True)
    t0 = time.monotonic()
    argv = command_argv(command)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env={**os.environ, **pool.env}, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent(os.getpid()))
    except OSError as exc:
        raise TaxiwayError(f"{key}: cannot run {command!r}: {exc.strerror or exc}") from None
    assert proc.stdout is not None
    tail: deque[str] = deque(maxlen=5)

    async def relay() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            tail.append(line)
            print(f"  setup | {line}", flush=True)

    try:
        await asyncio.wait_for(asyncio.gather(relay(), proc.wait()), float(pool.setup_timeout))
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise TaxiwayError(f"{key}: {command!r} did not finish within {pool.setup_timeout:g}s") from None
    if proc.returncode != 0:
        last = f": {tail[-1]}" if tail else ""
        raise TaxiwayError(f"{key}: {command!r} exited with status {proc.returncode}{last}")
    print(f"taxiway up: setup: done in {time.monotonic() - t0:.1f}s", flush=True)


async def _main(cfg: Config, config_path: str, live: bool) -> int:
    from taxiway.proxy.app import Balancer
    from taxiway.proxy.command import check_addresses_free, start_with_admin

    assert cfg.pool is not None
    inherited = handover.inherited()   # an upgrade: the predecessor's listening sockets
    if cfg.pool.setup:
        # Setup may take minutes (migrations, seed data): a port another taxiway holds should stop
        # us before it, not after. Balancer.start below still reports a port lost in between.
        if inherited is None:
            check_addresses_free(cfg)
        await run_setup(cfg.pool, pool_cwd(cfg, config_path))
        check_programs(cfg, config_path, setup_done=True)   # what setup was to create is there now
    bal = Balancer(cfg, config_path)
    sup = Supervisor(cfg.pool, PolicyConfig.from_config(cfg.pool, cfg.autoscale), bal,
                     cwd=pool_cwd(cfg, config_path), slow_start_s=float(cfg.balancer.slow_start))
    bal.autoscale_status = sup.status   # read by the admin API
    sup.listeners.append(lambda ev: bal.event(f"autoscale.{ev['kind']}", ev["server"], ev["detail"])
                         if ev["kind"] in FORWARDED_EVENTS else None)
    atexit.register(sup.kill_all_now)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:          # second Ctrl-C: no more waiting
            sup.kill_all_now()
            os._exit(130)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGHUP, _reload_all, bal, sup, config_path)
    # A successor accepts nothing until its app servers are ready (see _take_over).
    admin_server = await start_with_admin(bal, cfg, inherited, accept=inherited is None)
    upgrade = Upgrade(bal, admin_server, upgrade_timeout(cfg.pool), stop.set,
                      lambda: {handover.ENV_SERVERS: str(sup.live_count())})
    loop.add_signal_handler(signal.SIGUSR2, upgrade.trigger)
    url = where(cfg, bal)
    admin = ""
    if cfg.admin.listen and admin_server is not None:
        host = split_hostport(cfg.admin.listen, "admin.listen")[0]
        admin = f"; state: taxiway status, or http://{host}:{admin_server.port}/status"
    print(f"taxiway up: listening on {url}; pool {cfg.pool.min}..{cfg.pool.max} x `{cfg.pool.command}` "
          f"({cfg.autoscale.metric} target {cfg.autoscale.target:g}/server"
          f"{'' if cfg.autoscale.enabled else ', autoscale off'}); starting {cfg.pool.min}", flush=True)
    tasks: list[asyncio.Task[None]] = []
    try:
        announce_when_ready(bal.pool, f"{url}{admin}", cfg.pool.min == 0)
        await sup.start(initial=inherited.servers if inherited is not None else None)
        if inherited is not None and not await _take_over(inherited, bal, admin_server, sup, cfg.pool, stop):
            return 1
        tasks.append(loop.create_task(run_live(lambda: bal.pool.servers, sup, url) if live
                                      else _plain(bal, sup)))
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        print("taxiway up: stopping (in-flight requests finish, then app servers get SIGTERM)", flush=True)
        try:
            await bal.stop(float(cfg.timeouts.shutdown), upgrade.idle_linger_s())
        finally:
            if admin_server is not None:
                await admin_server.close()
            await sup.stop()
        atexit.unregister(sup.kill_all_now)
    print("taxiway up: stopped", flush=True)
    return 0


def upgrade_timeout(pool: PoolConfig) -> float:
    """How long the old process waits for its successor: its setup, its servers' readiness, and
    a margin for the interpreter's start."""
    return (float(pool.setup_timeout) if pool.setup else 0.0) + float(pool.ready_timeout) + 30.0


async def _take_over(inherited: Inherited, bal: Balancer, admin: AdminServer | None, sup: Supervisor,
                     pool: PoolConfig, stop: asyncio.Event) -> bool:
    """The successor's side of an upgrade: once as many app servers are ready as the old process
    ran, accept, and tell it so (it then drains and exits). False when they are not ready within
    pool.ready_timeout (the old process goes on serving; we exit)."""
    deadline = time.monotonic() + float(pool.ready_timeout)
    while sup.ready_count() < max(sup.desired, 1 if pool.min else 0):
        if stop.is_set() or time.monotonic() >= deadline:
            why = "stopped" if stop.is_set() else \
                f"{sup.ready_count()} of {sup.desired} app servers ready within pool.ready_timeout"
            print(f"taxiway up: upgrade failed: {why}", flush=True)
            inherited.failed(why)
            return False
        await asyncio.sleep(0.05)
    await bal.accept_now()
    if admin is not None:
        await admin.accept_now()
    inherited.close()
    inherited.ready()
    print(f"taxiway up: took over from the previous process with {sup.ready_count()} app server(s)",
          flush=True)
    return True


def announce_when_ready(pool: Pool, where: str, scale_from_zero: bool) -> None:
    """`connect to ...` once a request would find a server (the first READY event, or a static
    server already available), not when the listener opens: a user who follows it gets the app,
    not a 503. A pool that starts at zero servers has nothing to wait for: it says so at once."""
    t0 = time.monotonic()
    said = False

    def say() -> None:
        nonlocal said
        if not said:
            said = True
            print(f"taxiway up: ready after {time.monotonic() - t0:.1f}s: connect to {where}", flush=True)

    if scale_from_zero or any(s.is_available(t0) for s in pool):
        say()
        return
    pool.subscribe(lambda event, server: say() if event is PoolEvent.READY else None)


def _reload_all(bal: object, sup: Supervisor, config_path: str) -> None:
    """SIGHUP: the balancer reloads its part (static servers, settings), then the pool's part.

    A bad file is logged and everything keeps running with the old settings.
    """
    from taxiway.proxy.command import _reload

    try:
        cfg = load_config(config_path)
        if cfg.pool is None:
            raise ConfigError("pool", "a [pool] section (taxiway up runs one)", source=config_path)
        check_programs(cfg, config_path, setup_done=True)   # setup ran at start-up, not again
        policy = PolicyConfig.from_config(cfg.pool, cfg.autoscale)
    except ConfigError as exc:
        log.error("reload failed, keeping the running config: %s", exc)
        return
    _reload(bal, config_path, 0)
    sup.reconfigure(cfg.pool, policy, cwd=pool_cwd(cfg, config_path))


async def _plain(bal: object, sup: Supervisor) -> None:
    """Non-TTY: events are log lines already; add a summary line when the picture changes."""
    meter = RateMeter()
    last = ""
    last_at = 0.0
    while True:
        await asyncio.sleep(1.0)
        servers = list(bal.pool)  # type: ignore[attr-defined]
        meter.update(servers, time.monotonic())
        line = summary_line(servers, sup, meter.rates)
        shape = line.split(";")[0]
        if shape != last or time.monotonic() - last_at >= PLAIN_SUMMARY_S * 6:
            print(f"taxiway up: {line}", flush=True)
            last, last_at = shape, time.monotonic()
