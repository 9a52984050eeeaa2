"""The supervisor with real `taxiway backend` processes over a bare Pool (no proxy needed)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvloop

from taxiway.autoscale.policy import PolicyConfig
from taxiway.autoscale.process import PoolRotation, ProcState
from taxiway.autoscale.supervisor import Supervisor
from taxiway.config import PoolConfig
from taxiway.errors import ConfigError

from .conftest import SRC

BACKEND = "{python} -m taxiway.testing.backend --port {port} --name {name}"   # {python}: this interpreter
ENV = {"PYTHONPATH": str(SRC)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:   # a zombie is dead for our purposes
        return f.read().split(") ", 1)[1][0] != "Z"


async def until(cond: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.05)


async def get(port: int, path: str = "/") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def make(command: str = BACKEND, policy: PolicyConfig | None = None, **pool: Any) -> Supervisor:
    pool.setdefault("ready_timeout", 20.0)
    pool.setdefault("stop_grace", 5.0)
    pool.setdefault("drain_timeout", 10.0)
    pool_cfg = PoolConfig(command=command, env=ENV, **pool)
    policy = policy or PolicyConfig(min=pool_cfg.min, max=pool_cfg.max, period_s=0.2, down_window_s=0.5)
    return Supervisor(pool_cfg, policy, PoolRotation())


def run(body: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(asyncio.wait_for(body(), timeout=120))


def test_starts_min_servers_ready_and_stops_them_all() -> None:
    async def body() -> None:
        sup = make(min=2, max=4)
        await sup.start(wait_ready_s=30)
        try:
            assert sup.ready_count() == 2
            pool = sup.rotation.pool
            assert len(pool) == 2 and all(s.ready and not s.static for s in pool)
            for s in pool:
                status, text = await get(s.port)
                assert status == 200 and text.strip() == f"hello from {s.name}".encode()
            st = sup.status()
            assert (st["min"], st["max"], st["current"], st["desired"]) == (2, 4, 2, 2)
            assert [e["kind"] for e in st["events"]].count("ready") == 2
            pids = [ap.pid for ap in sup.procs.values()]
        finally:
            await sup.stop()
        assert len(sup.rotation.pool) == 0
        assert pids and not any(alive(p) for p in pids if p)
    run(body)


def test_traffic_only_after_ready() -> None:
    """A server whose readiness path fails is never put in rotation; it is replaced with back-off."""
    async def body() -> None:
        sup = make(BACKEND + " --fail-healthz", min=1, max=1, ready_timeout=1.0)
        await sup.start()
        try:
            await until(lambda: sup.restarts >= 2, what="two failed readiness attempts")
            assert sup.ready_count() == 0
            assert all(not s.ready for s in sup.rotation.pool)
            crashed = [e for e in sup.events if e["kind"] == "crashed"]
            assert "not ready after 1s" in crashed[0]["detail"]
            assert "replacing in 0.5s" in crashed[0]["detail"] and "replacing in 1.0s" in crashed[1]["detail"]
        finally:
            await sup.stop()
    run(body)


def test_crashed_server_is_replaced_and_reported() -> None:
    async def body() -> None:
        sup = make(min=2, max=2)
        await sup.start(wait_ready_s=30)
        try:
            victim = next(iter(sup.procs.values()))
            assert victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)
            await until(lambda: victim.name not in sup.rotation.pool, what="crashed server removed")
            await until(lambda: sup.ready_count() == 2, what="replacement ready")
            assert victim.name not in sup.procs
            ev = [e for e in sup.events if e["kind"] == "crashed"]
            assert ev and ev[0]["server"] == victim.name and "exited with -9" in ev[0]["detail"]
            assert sup.restarts == 1
        finally:
            await sup.stop()
    run(body)


def test_unstartable_command_backs_off_without_raising() -> None:
    async def body() -> None:
        sup = make("/nonexistent/app --port {port}", min=1, max=1)
        await sup.start()
        try:
            await until(lambda: sup.restarts >= 3, what="three failed starts")
            details = [e["detail"] for e in sup.events if e["kind"] == "crashed"]
            assert "cannot start" in details[0]
            assert ["0.5s" in details[0], "1.0s" in details[1], "2.0s" in details[2]] == [True] * 3
        finally:
            await sup.stop()
    run(body)


def test_scale_up_on_load_and_drain_before_stop() -> None:
    """In-flight counters (what the proxy maintains) drive the pool; a retired server leaves the
    rotation at once but its process lives until its in-flight requests are done."""
    async def body() -> None:
        policy = PolicyConfig(min=1, max=3, target=10, period_s=0.2, down_window_s=0.5, max_down=1,
                              panic_hold_s=0.5)
        sup = make(policy=policy, min=1, max=3)
        await sup.start(wait_ready_s=30)
        try:
            first = next(iter(sup.rotation.pool))
            first.inflight = 25                       # 25 in flight on one server, target 10
            await until(lambda: sup.ready_count() == 3, what="scaled up to 3")
            ups = [e for e in sup.events if e["kind"] == "scale"]
            assert ups and max(e["desired"] for e in ups) == 3 and "inflight" in ups[0]["detail"]
            # Load vanishes, but one request is still running on every server.
            for s in sup.rotation.pool:
                s.inflight = 1
            await until(lambda: any(ap.state is ProcState.DRAINING for ap in sup.procs.values()),
                        what="a server draining")
            draining = next(ap for ap in sup.procs.values() if ap.state is ProcState.DRAINING)
            assert draining.server.draining and not draining.server.is_available(0)
            await asyncio.sleep(1.0)
            assert draining.pid is not None and alive(draining.pid)   # still finishing its request
            assert draining.state is ProcState.DRAINING
            draining.server.inflight = 0
            await until(lambda: draining.name not in sup.procs, what="drained server removed")
            assert not alive(draining.pid)
            assert draining.name not in sup.rotation.pool
            kinds = [e["kind"] for e in sup.events if e["server"] == draining.name]
            assert kinds[-2:] == ["draining", "removed"]
            for s in sup.rotation.pool:
                s.inflight = 0
            await until(lambda: len(sup.procs) == 1, what="back to min")
        finally:
            await sup.stop()
    run(body)


def test_bad_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        PolicyConfig(min=5, max=2)
