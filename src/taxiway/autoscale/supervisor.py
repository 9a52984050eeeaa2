"""The autoscale driver: starts, readies, replaces, drains and stops app-server processes.

Rules of this module:
1. All decisions are the policy's (`policy.decide`); this module only measures (`meter.py`),
   acts, and reports. Every action and every decision that changes or holds back the pool is
   an event in `Supervisor.events` and a log line on `taxiway.autoscale`.
2. No orphans, ever. Each app server runs in its own session/process group (so SIGTERM/SIGKILL
   reach its workers too) and gets PR_SET_PDEATHSIG=SIGKILL, so if taxiway itself is SIGKILLed
   the kernel kills the children. `stop()` and `kill_all_now()` cover every other exit.
3. Traffic reaches a server only after its readiness path answered 2xx; it leaves in this order:
   drain (no new requests) -> in-flight reaches 0 (or drain_timeout) -> SIGTERM -> SIGKILL after
   stop_grace -> removed from the pool.

The supervisor talks to the balancer through `Rotation` (the Balancer has exactly these members);
`PoolRotation` (process.py) adapts a bare `Pool` for tests and tools without a proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from taxiway.autoscale.meter import LoadMeter
from taxiway.autoscale.policy import Decision, History, PolicyConfig, Rule, Sample, decide
from taxiway.autoscale.process import (
    AppProcess,
    ProcState,
    Rotation,
    command_argv,
    die_with_parent,
    pick_free_port,
)
from taxiway.autoscale.rollout import Rollout, step, version_of
from taxiway.balancing.model import Server
from taxiway.config import PoolConfig

log = logging.getLogger("taxiway.autoscale")

# Crash back-off: 0.5 s doubling to 30 s (systemd/Kubernetes CrashLoopBackOff shape, shorter start);
# a server that stayed up BACKOFF_RESET_S before crashing starts the sequence over.
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_S = 30.0
READY_POLL_S = 0.1
EVENTS_KEPT = 200
DECISIONS_KEPT = 20
class Supervisor:
    """Runs the pool of app servers beside a balancer on the same event loop."""

    def __init__(self, pool_cfg: PoolConfig, policy: PolicyConfig, rotation: Rotation, *,
                 cwd: str | None = None, tick_s: float | None = None, slow_start_s: float = 0.0) -> None:
        self.pool_cfg = pool_cfg
        self.policy = policy
        self.rotation = rotation
        self.cwd = cwd if cwd is not None else pool_cfg.cwd
        # What new servers run: the version of `pool_cfg` (reload may move it, see rollout.py),
        # and the last version that served, which replacements fall back to when a rollout fails.
        self.version = version_of(pool_cfg.command, pool_cfg.env, self.cwd or "")
        self.stable: tuple[str, PoolConfig, str | None] = (self.version, pool_cfg, self.cwd)
        self.rollout: Rollout | None = None
        self.history = History(policy)
        self.meter = LoadMeter(policy.metric)
        self.tick_s = tick_s or min(max(policy.period_s / 10, 0.05), 0.5)
        self.slow_start_s = slow_start_s    # balancer.slow_start, as for static servers
        self.procs: dict[str, AppProcess] = {}
        self.desired = policy.min
        rotation.pool.expected = max(policy.min, 1)   # (requests before the first launch wait)
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.decisions: deque[Decision] = deque(maxlen=DECISIONS_KEPT)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.crashes = 0                    # consecutive, for the back-off
        self.restarts = 0                   # total replacements after crashes
        self._next_start_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_rule: Rule | None = None

    # -- public ------------------------------------------------------------------------------

    async def start(self, wait_ready_s: float | None = None, initial: int | None = None) -> None:
        """Launch `min` servers (or `initial`, within min..max: a successor taking over from a
        taxiway that ran that many) and the control loop; optionally wait until `min` are ready."""
        if initial is not None:
            self.desired = max(self.policy.min, min(self.policy.max, initial))
        self._loop_task = asyncio.get_running_loop().create_task(self._control_loop())
        self._reconcile()
        if wait_ready_s:
            deadline = self._now() + wait_ready_s
            while self.ready_count() < self.policy.min and self._now() < deadline:
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop everything: SIGTERM to every process group, SIGKILL after stop_grace."""
        self._stopping = True
        self.rotation.pool.expected = 0   # nothing more is coming: waiters get their 503
        if self._loop_task:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for ap in self.procs.values():
            if ap.state is not ProcState.EXITED:
                self.rotation.drain_server(ap.name)
        await asyncio.gather(*(self._terminate(ap) for ap in list(self.procs.values())))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for ap in list(self.procs.values()):
            self._remove(ap)
        self.kill_all_now()

    def kill_all_now(self) -> None:
        """Last resort, synchronous (atexit / error paths): SIGKILL every process group we own."""
        for ap in self.procs.values():
            if ap.proc is not None and ap.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(ap.proc.pid, signal.SIGKILL)

    def ready_count(self) -> int:
        return sum(1 for ap in self.procs.values() if ap.state is ProcState.READY)

    def live_count(self) -> int:
        return sum(1 for ap in self.procs.values() if ap.is_live())

    def reconfigure(self, pool_cfg: PoolConfig, policy: PolicyConfig, cwd: str | None = None) -> None:
        """SIGHUP: new settings apply from the next decision (min/max clamp, targets, windows).

        A changed command, env or cwd is a new version of the app: the pool rolls to it
        (rollout.py), starting new servers and retiring old ones as the new become ready.
        Observations are kept unless the metric changed (old values would mean something else).
        """
        old = self.history
        if cwd is not None:
            self.cwd = cwd
        version = version_of(pool_cfg.command, pool_cfg.env, self.cwd or "")
        if version != self.version or (self.rollout is not None and self.rollout.failed):
            if any(ap.version != version for ap in self.procs.values() if ap.is_live()):
                self.rollout = Rollout(self.stable[0], version, self._now())
                self._event("rollout", None, f"from version {self.stable[0]} to {version}: "
                            f"`{pool_cfg.command}` (max_surge {pool_cfg.max_surge}, "
                            f"max_unavailable {pool_cfg.max_unavailable})")
            else:
                self.stable = (version, pool_cfg, self.cwd)
        self.version = version
        self.pool_cfg = pool_cfg
        self.policy = policy
        self.history = History(policy)
        if policy.metric is old.cfg.metric:
            for sample in old.samples:
                self.history.process_sample(sample)
            self.history.changes = old.changes
            self.history.panic_until = old.panic_until
        else:
            self.meter = LoadMeter(policy.metric)
        self._event("reconfigured", None, f"pool {policy.min}..{policy.max}, {policy.metric.value} "
                    f"target {policy.target:g}, command `{pool_cfg.command}`")

    def status(self) -> dict[str, Any]:
        """The "autoscale" section of /status (set as `balancer.autoscale_status`)."""
        last = self.decisions[-1] if self.decisions else None
        wall_offset = time.time() - self._now()     # decisions carry monotonic times
        decisions = [d.as_dict() | {"at": round(d.at + wall_offset, 3)} for d in self.decisions]
        summary = (f"{self.ready_count()} ready / {self.desired} desired (min {self.policy.min}, "
                   f"max {self.policy.max}, {self.policy.metric.value} target {self.policy.target:g})")
        if last is not None:
            summary += f"; last decision: {last.reason}"
        return {
            "summary": summary,
            "min": self.policy.min, "max": self.policy.max, "metric": self.policy.metric.value,
            "target": self.policy.target, "current": self.live_count(), "ready": self.ready_count(),
            "desired": self.desired, "panicking": bool(last and last.panicking),
            "restarts": self.restarts,
            "version": self.stable[0],
            "rollout": None if self.rollout is None else {
                "from": self.rollout.old, "to": self.rollout.new,
                "state": "failed" if self.rollout.failed else "done" if self.rollout.done_at else "rolling",
                "reason": self.rollout.failed or None},
            "servers": [{"name": ap.name, "port": ap.port, "pid": ap.pid, "state": ap.state.value,
                         "version": ap.version, "inflight": ap.server.inflight,
                         "requests": ap.server.requests}
                        for ap in self.procs.values()],
            "decisions": decisions,
            "events": list(self.events)[-10:],
        }

    # -- control loop ----------------------------------------------------------------------

    def _now(self) -> float:
        """The proxy's clock (time.monotonic): Server.recent and joined_at are in it."""
        return time.monotonic()

    async def _control_loop(self) -> None:
        next_decision = self._now() + self.policy.period_s
        while True:
            await asyncio.sleep(self.tick_s)
            servers = [ap.server for ap in self.procs.values()]
            self.meter.process_tick(servers)
            now = self._now()
            # A pool at zero with a request waiting decides now, not at the period's end: that
            # request's wait is the cold start.
            if now >= next_decision or (self.desired == 0 and self.rotation.queued()):
                next_decision = now + self.policy.period_s
                self._decide_once(servers, now)
            self._reconcile()

    def _decide_once(self, servers: list[Server], now: float) -> None:
        sample: Sample = self.meter.sample(servers, self.desired, now, self.rotation.queued())
        self.history.process_sample(sample)
        d = decide(self.history, now)
        self.history.process_decision(d)
        self.decisions.append(d)
        if d.desired != self.desired or (d.rule is not self._last_rule and d.rule not in
                                         (Rule.TRACKING, Rule.TOLERANCE)):
            self._event("scale" if d.desired != self.desired else "hold", None, d.reason,
                        desired=d.desired, current=d.current, rule=d.rule.value)
        self._last_rule = d.rule
        self.desired = d.desired
        excess = self.live_count() - d.desired   # pending replacements are simply not started
        if self.rollout is not None and self.rollout.active:
            excess -= self.pool_cfg.max_surge   # (the rollout's surge is not excess: _roll retires)
        if excess > 0:
            self._scale_down(excess)

    def _reconcile(self) -> None:
        """Start servers until `desired` are live (crash back-off permitting)."""
        if self._stopping:
            self.rotation.pool.expected = 0
            return
        while self.live_count() < self.desired and self._now() >= self._next_start_at:
            self._launch()
        if self.rollout is not None and self.rollout.active:
            self._roll()
        # What is still to come (a crash back-off holds a launch, or a pool at zero will start
        # one for the first request): requests wait for it rather than get 503.
        live = self.live_count()
        self.rotation.pool.expected = max(self.desired - live, 1 if live == 0 else 0)

    def _scale_down(self, n: int) -> None:
        """Retire `n` servers: the ones with the fewest in-flight requests, newest first."""
        live = [ap for ap in self.procs.values() if ap.is_live()]
        live.sort(key=lambda ap: (ap.state is ProcState.READY, ap.server.inflight, -ap.started_at))
        for ap in live[:n]:
            self._spawn_task(self._retire(ap))

    # -- one process ----------------------------------------------------------------------------

    def _roll(self) -> None:
        """One step of the rollout (rollout.step): start new-version servers, retire old ones."""
        r = self.rollout
        assert r is not None
        live = [ap for ap in self.procs.values() if ap.is_live()]
        old = [ap for ap in live if ap.version != r.new]
        new = [ap for ap in live if ap.version == r.new]
        if not old:
            r.done_at = self._now()
            self.stable = (self.version, self.pool_cfg, self.cwd)
            self._event("rollout", None, f"done: every server runs version {r.new} "
                        f"({r.done_at - r.started_at:.1f}s)")
            return
        ready = ProcState.READY
        start, retire = step(self.desired, len(old), len(new), sum(ap.state is ready for ap in old),
                             sum(ap.state is ready for ap in new), self.pool_cfg.max_surge,
                             self.pool_cfg.max_unavailable)
        for _ in range(start):
            self._launch()
        # Old servers that are not serving yet go first, then the least busy.
        old.sort(key=lambda ap: (ap.state is ready, ap.server.inflight))
        for ap in old[:retire]:
            self._spawn_task(self._retire(ap))

    def _launch(self) -> None:
        taken = {ap.port for ap in self.procs.values()}
        port = pick_free_port(self.pool_cfg.host, taken)
        name = f"app-{port}"
        server = Server(name, self.pool_cfg.host, port, static=False, ready=False,
                        slow_start_s=self.slow_start_s)
        # A rollout under way (or none) starts the current version; a failed one, the last good.
        version, spec, cwd = (self.version, self.pool_cfg, self.cwd) \
            if self.rollout is None or not self.rollout.failed else self.stable
        ap = AppProcess(name, port, server, started_at=self._now(), version=version, spec=spec,
                        cwd=cwd or "")
        self.procs[name] = ap
        self.rotation.add_server(server)
        self._spawn_task(self._lifecycle(ap))

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _argv(self, ap: AppProcess) -> list[str]:
        spec = ap.spec or self.pool_cfg
        return command_argv(spec.command, port=str(ap.port), host=self.pool_cfg.host, name=ap.name)

    async def _lifecycle(self, ap: AppProcess) -> None:
        spec = ap.spec or self.pool_cfg
        env = {**os.environ, **spec.env, "PORT": str(ap.port), "TAXIWAY_SERVER_NAME": ap.name,
               "TAXIWAY_VERSION": ap.version}
        try:
            ap.proc = await asyncio.create_subprocess_exec(
                *self._argv(ap), cwd=ap.cwd or self.cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent(os.getpid()),
            )
        except OSError as exc:
            self._crashed(ap, f"cannot start {spec.command!r}: {exc.strerror or exc}")
            return
        self._spawn_task(self._read_output(ap))
        if self._stopping or ap.state is not ProcState.STARTING:   # stop() ran while it launched
            await self._kill_group(ap)
            return
        self._event("started", ap.name, f"pid {ap.proc.pid} on port {ap.port}")
        if not await self._wait_ready(ap):
            if ap.state is ProcState.STARTING:
                why = (f"exited with {ap.proc.returncode} before answering {self.pool_cfg.ready_path}"
                       if ap.proc.returncode is not None else
                       f"not ready after {self.pool_cfg.ready_timeout:g}s")
                await self._kill_group(ap)
                self._crashed(ap, why)
            return
        if ap.state is not ProcState.STARTING:
            return     # retired or stopped while starting
        ap.state = ProcState.READY
        ap.ready_at = self._now()
        self.rotation.pool.mark_ready(ap.name, self._now())
        self._event("ready", ap.name, f"took {ap.ready_at - ap.started_at:.2f}s; taking traffic")
        rc = await ap.proc.wait()
        if ap.state is ProcState.READY:
            up_s = self._now() - (ap.ready_at or ap.started_at)
            if up_s >= BACKOFF_RESET_S:
                self.crashes = 0
            self.rotation.remove_server(ap.name)
            await self._kill_group(ap)
            self._crashed(ap, f"exited with {rc} after {up_s:.1f}s")

    async def _read_output(self, ap: AppProcess) -> None:
        assert ap.proc is not None and ap.proc.stdout is not None
        while True:
            try:
                line = await ap.proc.stdout.readline()
            except ValueError:            # a line over the stream limit: take it in pieces
                line = await ap.proc.stdout.read(65536)
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            ap.tail.append(text)
            log.debug("[%s] %s", ap.name, text)

    async def _wait_ready(self, ap: AppProcess) -> bool:
        """Poll GET ready_path until a 2xx answer, the process exits, or ready_timeout."""
        assert ap.proc is not None
        deadline = self._now() + self.pool_cfg.ready_timeout
        request = (f"GET {self.pool_cfg.ready_path} HTTP/1.1\r\nHost: {self.pool_cfg.host}:{ap.port}\r\n"
                   "Connection: close\r\nUser-Agent: taxiway-autoscale\r\n\r\n").encode()
        while self._now() < deadline and ap.proc.returncode is None and ap.state is ProcState.STARTING:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.pool_cfg.host, ap.port), timeout=1.0)
                try:
                    writer.write(request)
                    status_line = await asyncio.wait_for(reader.readline(), timeout=2.0)
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                parts = status_line.split()
                if len(parts) >= 2 and parts[1].startswith(b"2"):
                    return True
            except (TimeoutError, OSError):
                pass
            await asyncio.sleep(READY_POLL_S)
        return False

    def _crashed(self, ap: AppProcess, why: str) -> None:
        """Report, forget the process and schedule its replacement with back-off. A server of a
        rollout's new version that never became ready stops the rollout (rollout.py)."""
        r = self.rollout
        if r is not None and r.active and ap.version == r.new and ap.ready_at is None:
            r.fail(f"version {r.new} did not become ready: {why}")
            self._event("rollout", None, f"stopped, the old version {r.old} keeps serving: {r.failed}",
                        level=logging.WARNING)
        ap.state = ProcState.EXITED
        self._remove(ap)
        if self._stopping:
            return
        self.crashes += 1
        self.restarts += 1
        delay = min(BACKOFF_BASE_S * 2 ** (self.crashes - 1), BACKOFF_MAX_S)
        self._next_start_at = self._now() + delay
        tail = f"; last output: {ap.tail[-1]!r}" if ap.tail else ""
        self._event("crashed", ap.name, f"{why}; replacing in {delay:.1f}s{tail}", level=logging.WARNING)

    async def _retire(self, ap: AppProcess) -> None:
        """Scale-down: drain -> in-flight 0 (drain_timeout) -> SIGTERM -> SIGKILL -> remove."""
        was_ready = ap.state is ProcState.READY
        ap.state = ProcState.DRAINING
        self.rotation.drain_server(ap.name)
        self._event("draining", ap.name, f"{ap.server.inflight} in flight")
        if was_ready:
            deadline = self._now() + self.pool_cfg.drain_timeout
            while ap.server.inflight > 0 and self._now() < deadline:
                await asyncio.sleep(0.05)
            if ap.server.inflight > 0:
                self._event("drain_timeout", ap.name, f"{ap.server.inflight} still in flight after "
                            f"{self.pool_cfg.drain_timeout:g}s", level=logging.WARNING)
        await self._terminate(ap)
        self._remove(ap)
        self._event("removed", ap.name, f"exit status {ap.proc.returncode if ap.proc else None}")

    async def _terminate(self, ap: AppProcess) -> None:
        """SIGTERM the process group, SIGKILL it after stop_grace."""
        if ap.proc is None or ap.proc.returncode is not None:
            ap.state = ProcState.EXITED
            return
        ap.state = ProcState.STOPPING
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(ap.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(ap.proc.wait(), timeout=self.pool_cfg.stop_grace)
        except TimeoutError:
            self._event("killed", ap.name, f"no exit {self.pool_cfg.stop_grace:g}s after SIGTERM",
                        level=logging.WARNING)
        await self._kill_group(ap)
        ap.state = ProcState.EXITED

    async def _kill_group(self, ap: AppProcess) -> None:
        """SIGKILL what is left of the group (workers of a forking server) and reap the leader."""
        if ap.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(ap.proc.pid, signal.SIGKILL)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(ap.proc.wait(), timeout=5.0)

    def _remove(self, ap: AppProcess) -> None:
        if self.procs.get(ap.name) is ap:
            del self.procs[ap.name]
            if ap.name in self.rotation.pool:
                self.rotation.remove_server(ap.name)

    def _event(self, kind: str, server: str | None, detail: str, level: int = logging.INFO,
               **extra: Any) -> None:
        event = {"at": time.time(), "kind": kind, "server": server, "detail": detail, **extra}
        self.events.append(event)
        log.log(level, "%s%s: %s", kind, f" {server}" if server else "", detail)
        for listener in self.listeners:
            listener(event)
