"""Running a load spec: in this process on uvloop, or split over `--processes N` children.

Why processes: one Python process saturates one core at a few tens of thousands of requests/s.
Each child runs an independent engine on its share (users, rate and request count divided by N);
the parent merges the HDR histograms (encode/decode/add, lossless) and the counters, and merges the
per-second progress lines as they arrive.

Ctrl-C: in one process, SIGINT stops the engine through a loop signal handler and the summary of
what ran is still returned. With children, the children ignore SIGINT (a terminal sends it to the
whole process group) and the parent tells them to stop through an Event, so every child still
reports what it measured.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import queue as queue_mod
import signal
from collections.abc import Callable
from typing import Any

import uvloop

from taxiway.bench.load import Engine, LoadSpec
from taxiway.bench.results import RunResult, Second, merge_timelines
from taxiway.bench.schedule import Stage
from taxiway.errors import TaxiwayError

OnSecond = Callable[[Second], None]


def run_spec(spec: LoadSpec, processes: int = 1, on_second: OnSecond | None = None) -> RunResult:
    """Run one spec to completion (or Ctrl-C) and return everything it measured."""
    if processes <= 1:
        return run_here(spec, on_second)
    return _run_children(spec, processes, on_second)


def run_here(spec: LoadSpec, on_second: OnSecond | None = None,
             should_stop: Callable[[], bool] | None = None, handle_sigint: bool = True) -> RunResult:
    async def main() -> RunResult:
        engine = Engine(spec, on_second, should_stop)
        loop = asyncio.get_running_loop()
        if handle_sigint:
            loop.add_signal_handler(signal.SIGINT, engine.stop)
        try:
            return await engine.run()
        finally:
            if handle_sigint:
                loop.remove_signal_handler(signal.SIGINT)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def split_spec(spec: LoadSpec, n: int, i: int) -> LoadSpec:
    """Child `i`'s share of `spec` when the load is spread over `n` processes."""
    users = spec.users // n + (1 if i < spec.users % n else 0)
    stages = spec.stages  # closed-loop user ramps are split exactly by the engine (`share`)
    if spec.stages is not None and spec.is_open_loop():
        stages = tuple(Stage(s.duration_s, s.target / n) for s in spec.stages)
    max_requests = None
    if spec.max_requests is not None:
        max_requests = spec.max_requests // n + (1 if i < spec.max_requests % n else 0)
    return dataclasses.replace(
        spec, users=max(1, users), rate=spec.rate / n if spec.rate is not None else None, stages=stages,
        max_requests=max_requests, seed=None if spec.seed is None else spec.seed + i, share=(i, n))


def _child_main(spec: LoadSpec, idx: int, out: Any, stop: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    result = run_here(spec, lambda sec: out.put(("sec", idx, sec.__dict__.copy())),
                      should_stop=stop.is_set, handle_sigint=False)
    out.put(("done", idx, result.to_wire()))


def _run_children(spec: LoadSpec, n: int, on_second: OnSecond | None) -> RunResult:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    stop = ctx.Event()
    children = [ctx.Process(target=_child_main, args=(split_spec(spec, n, i), i, out, stop), daemon=True)
                for i in range(n)]
    interrupted = False

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    pending_secs: dict[int, list[Second]] = {}
    results: dict[int, RunResult] = {}
    try:
        for c in children:
            c.start()
        while len(results) < n:
            try:
                kind, idx, payload = out.get(timeout=0.25)
            except queue_mod.Empty:
                if all(not c.is_alive() for c in children) and out.empty():
                    raise TaxiwayError("a bench worker process died; see its error above") from None
                continue
            if kind == "done":
                results[idx] = RunResult.from_wire(payload)
                continue
            sec = Second(**payload)
            group = pending_secs.setdefault(sec.t, [])
            group.append(sec)
            if len(group) == n and on_second is not None:
                merged = merge_timelines([group[0]], group[1:])
                on_second(merged[0])
                del pending_secs[sec.t]
    finally:
        signal.signal(signal.SIGINT, previous)
        stop.set()
        for c in children:
            c.join(timeout=10)
            if c.is_alive():
                c.kill()
    total = results[0]
    for i in range(1, n):
        total.merge(results[i])
    total.interrupted = total.interrupted or interrupted
    return total
