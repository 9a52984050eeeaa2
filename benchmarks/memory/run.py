"""Memory of the proxy: peak RSS during a 1 GB download and a 1 GB upload through it, RSS with
5,000 idle keep-alive client connections, and RSS while 1,000 slow readers hold 1 MiB answers.

    .venv/bin/python benchmarks/memory/run.py                    # taxiway only, every scenario
    .venv/bin/python benchmarks/memory/run.py --targets taxiway,haproxy,nginx
    .venv/bin/python benchmarks/memory/run.py --netns --targets taxiway,haproxy,nginx --only slow-readers
    .venv/bin/python benchmarks/memory/run.py --netns --only slow-readers \
        --taxiway-env MALLOC_MMAP_THRESHOLD_=131072           # an experiment on taxiway's process

Scenarios (`--only`, comma list): download, slow-download, upload (the transfers), idle,
slow-readers. A 20-request warm-up always runs first.

Why these three: a proxy that buffers bodies instead of streaming them with back-pressure shows it
as RSS growing with the transfer size (a 1 GB body is far larger than any sane buffer); a slow
reader makes it worse, so the download is also done by a client that reads at a capped rate.
Per-connection state shows up in the idle-connection test.

slow-readers (issue 11, item 12): N clients (--slow-readers, default 1,000) each send
`GET /bytes/<--slow-size>` (default 1 MiB) on their own connection, with SO_RCVBUF set small on
the client socket (--slow-rcvbuf, 16 KiB) so the client's side of the kernel holds little of it.
Each reads the head, then only --slow-read-kib (4) KiB every --slow-interval (1) s while the whole
fleet is held for --slow-hold (10) s after the last one got its head; then all read the rest as fast
as they can and close. Recorded: RSS before, RSS at the end of the hold (the plateau), peak RSS
(VmHWM after clear_refs, and the sampler), and RSS --settle (5) s after every client closed: memory
a proxy took for the slow readers and did not give back. Also the bytes of regular files the proxy
had open at the end of the hold (nginx spools a response its client does not take to a temp file).
One asyncio client process drives every socket; the run is bounded by --slow-timeout.

Loopback: run slow-readers with --netns. On the host's loopback (MTU 65536) the kernel grows each
proxy socket's send buffer to tcp_wmem's maximum (4 MiB here), so a proxy writes the whole 1 MiB
answer into the kernel at once, closes, and the answer waits in a FIN-WAIT-1 orphan socket that
belongs to no process: no proxy's RSS moves, whatever it does. --netns re-runs this script under
`unshare --net` with the namespace's loopback at --lo-mtu 1500 (Ethernet's): send buffers then grow
like on a real network and stay near 300 KiB, and the rest of each answer is the proxy's to hold
or to leave in the kernel (the `kernel_queues_held_mib` of the result say where it was).

For taxiway, each slow-reader round also records the proxy's /status counters (admin listener of
the config) before, at the end of the hold, after the drain and every second of the settle: the
`heap_trims` counter says whether the balancer gave the burst's heap back (proxy/heap.py).

Experiments on the taxiway process: --taxiway-env KEY=VALUE (repeatable; PYTHONPATH is prepended
to the harness's) sets its environment, e.g. glibc's MALLOC_MMAP_THRESHOLD_=131072 or
MALLOC_TRIM_THRESHOLD_, or TAXIWAY_PURE_PYTHON=1 to run its sources instead of the compiled build.

Peak RSS is VmHWM from /proc/PID/status (summed over the process tree, for nginx's master+worker).
Before each transfer the high-water mark is reset (`echo 5 > /proc/PID/clear_refs`, Linux >= 4.0)
so each number is that transfer's own peak; where that is not allowed, a 20 ms VmRSS sampler
gives the peak instead (both are recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib.util
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType


def _harness() -> ModuleType:
    """benchmarks/proxy_vs_peers/run.py: processes, config templates, fd limit (shared, not copied)."""
    path = Path(__file__).resolve().parent.parent / "proxy_vs_peers" / "run.py"
    spec = importlib.util.spec_from_file_location("proxy_vs_peers_run", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_h = _harness()
Procs, _tree, free_port, machine = _h.Procs, _h._tree, _h.free_port, _h.machine
raise_fd_limit, start_target, versions, wait_for_port = _h.raise_fd_limit, _h.start_target, _h.versions, \
    _h.wait_for_port
taxiway_env, cpu_seconds = _h.taxiway_env, _h.cpu_seconds

GB = 1 << 30
CHUNK = 1 << 20


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    return sum(_status_kb(p, "VmRSS") for p in _tree(pid))


def proc_counters(pid: int) -> dict[str, int]:
    """Minor page faults and read/write syscalls of the process tree (/proc/PID/stat and io)."""
    out = {"minflt": 0, "syscr": 0, "syscw": 0}
    for p in _tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            out["minflt"] += int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[7])
            for line in Path(f"/proc/{p}/io").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("syscr", "syscw"):
                    out[key] += int(value)
    return out


def hwm_kb(pid: int) -> int:
    return sum(_status_kb(p, "VmHWM") for p in _tree(pid))


def reset_hwm(pid: int) -> bool:
    ok = True
    for p in _tree(pid):
        try:
            Path(f"/proc/{p}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


class Sampler:
    """Samples the tree's VmRSS every 20 ms in a thread; `peak_kb` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, rss_kb(self.pid))
            self._stop.wait(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _read_head(sock: socket.socket) -> tuple[int, int, bytes]:
    """(status, content-length or -1, bytes of body already read)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError(f"connection closed before the response head: {buf[:200]!r}")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = -1
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    return status, length, rest


def download(port: int, size: int, rate_bytes_s: float | None = None) -> float:
    """GET /bytes/<size> and discard it (optionally at a capped read rate). Returns seconds."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        s.sendall(f"GET /bytes/{size} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        status, length, rest = _read_head(s)
        if status != 200 or length != size:
            raise RuntimeError(f"download: status {status}, length {length}")
        got = len(rest)
        buf = bytearray(CHUNK)
        while got < size:
            n = s.recv_into(buf)
            if not n:
                raise RuntimeError(f"download ended at {got} of {size} bytes")
            got += n
            if rate_bytes_s:
                ahead = got / rate_bytes_s - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
    return time.monotonic() - t0


def upload(port: int, size: int) -> float:
    """POST /sink with a Content-Length body of `size` zero bytes. Returns seconds."""
    t0 = time.monotonic()
    chunk = b"\0" * CHUNK
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(f"POST /sink HTTP/1.1\r\nHost: bench\r\nContent-Length: {size}\r\n"
                  "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n".encode())
        sent = 0
        while sent < size:
            n = min(CHUNK, size - sent)
            s.sendall(chunk if n == CHUNK else chunk[:n])
            sent += n
        status, _, rest = _read_head(s)
        body = rest
        while data := s.recv(65536):
            body += data
        if status != 200 or str(size).encode() not in body:
            raise RuntimeError(f"upload: status {status}, body {body[:100]!r}")
    return time.monotonic() - t0


async def _idle_connections(port: int, n: int, hold_s: float, pid: int) -> dict[str, float]:
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    sem = asyncio.Semaphore(200)
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

    async def one() -> None:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            conns.append((reader, writer))

    t0 = time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    opened_s = time.monotonic() - t0
    await asyncio.sleep(hold_s)
    rss = rss_kb(pid)
    # Still open? A proxy that dropped idle connections would make this test meaningless.
    alive = 0
    for reader, _ in conns:
        if not reader.at_eof():
            alive += 1
    for _, writer in conns:
        writer.close()
    return {"requested": n, "opened": len(conns), "errors": len(errors), "alive_after_hold": alive,
            "open_s": round(opened_s, 2), "rss_kb": rss,
            "first_error": repr(errors[0]) if errors else ""}


class SlowStats:
    """Progress of the slow-reader fleet (one event loop: plain counters)."""

    def __init__(self) -> None:
        self.connected = 0
        self.heads = 0
        self.released = 0
        self.done = 0
        self.errors: list[str] = []
        self.received = 0


def open_files_kb(pid: int) -> int:
    """KiB of the regular files the process tree has open (deleted temp files count too)."""
    total = 0
    for p in _tree(pid):
        fd_dir = Path(f"/proc/{p}/fd")
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
                if not target.startswith("/") or target.startswith("/dev/"):
                    continue
                st = os.stat(fd)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and not target.endswith((".log", ".so")):
                total += st.st_size
    return total // 1024


def kernel_queues(proxy_port: int, backend_ports: tuple[int, ...]) -> dict[str, float]:
    """Where the answers sit in the kernel (MiB, from `ss`): what the proxy wrote that its clients
    have not read (its client sockets' Send-Q plus the clients' Recv-Q), and what the backends sent
    that the proxy has not read (their Send-Q plus the proxy's upstream sockets' Recv-Q)."""
    if not shutil.which("ss"):
        return {}
    out = subprocess.run(["ss", "-tnH", "state", "established"], capture_output=True, text=True,
                         check=False).stdout
    q = {"proxy_to_clients_sendq": 0, "clients_recvq": 0, "backends_sendq": 0, "proxy_upstream_recvq": 0}
    for line in out.splitlines():
        f = line.split()
        if len(f) < 4 or not f[0].isdigit():
            continue
        recvq, sendq = int(f[0]), int(f[1])
        local, peer = int(f[2].rsplit(":", 1)[1]), int(f[3].rsplit(":", 1)[1])
        if local == proxy_port:
            q["proxy_to_clients_sendq"] += sendq
        elif peer == proxy_port:
            q["clients_recvq"] += recvq
        elif local in backend_ports:
            q["backends_sendq"] += sendq
        elif peer in backend_ports:
            q["proxy_upstream_recvq"] += recvq
    return {k: round(v / (1 << 20), 1) for k, v in q.items()}


def admin_port_of(config: Path) -> int | None:
    """The admin listener's port in a rendered taxiway.toml (None without one)."""
    m = re.search(r'^\[admin\]\s*\nlisten = "[^"]*:(\d+)"', config.read_text(), re.M)
    return int(m.group(1)) if m else None


def status_counters(admin_port: int | None) -> dict[str, int] | None:
    """taxiway's /status `counters` (None for the other proxies, or if the admin API did not answer)."""
    if admin_port is None:
        return None
    try:
        conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
        try:
            conn.request("GET", "/status", headers={"Host": "localhost"})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            return None
        counters = json.loads(body).get("counters") or {}
        return {str(k): int(v) for k, v in counters.items()}
    except (OSError, ValueError):
        return None


def _trims(counters: dict[str, int] | None) -> int | None:
    return None if counters is None else counters.get("heap_trims", 0)


async def _slow_readers(name: str, port: int, pid: int, args: argparse.Namespace) -> dict[str, object]:
    """The slow-reader fleet (see the module docstring). Returns the measurements."""
    loop = asyncio.get_running_loop()
    n, size = args.slow_readers, args.slow_size
    st = SlowStats()
    release = asyncio.Event()
    request = f"GET /bytes/{size} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    sink = bytearray(256 * 1024)     # shared: what is read is only counted
    slow_bytes = args.slow_read_kib * 1024
    sem = asyncio.Semaphore(200)     # connects in flight (stay under the listen backlogs)
    io_timeout = 30.0

    async def recv_into(sock: socket.socket, nbytes: int) -> int:
        got = await asyncio.wait_for(loop.sock_recv_into(sock, memoryview(sink)[:nbytes]), io_timeout)
        if not got:
            raise ConnectionError("connection closed by the proxy")
        st.received += got
        return got

    async def one() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if args.slow_rcvbuf:   # before connect: it also sets the window the client announces
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.slow_rcvbuf)
            async with sem:
                await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), io_timeout)
            st.connected += 1
            await asyncio.wait_for(loop.sock_sendall(sock, request), io_timeout)
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = await asyncio.wait_for(loop.sock_recv(sock, 4096), io_timeout)
                if not data:
                    raise ConnectionError(f"closed before the response head: {buf[:100]!r}")
                buf += data
            head, _, rest = buf.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                           if line.lower().startswith(b"content-length:")), -1)
            if status != 200 or length != size:
                raise RuntimeError(f"status {status}, content-length {length}")
            got = len(rest)
            st.received += got
            st.heads += 1
            while not release.is_set() and got < size:       # the slow part
                await asyncio.sleep(args.slow_interval)
                if not release.is_set() and slow_bytes:
                    got += await recv_into(sock, min(slow_bytes, size - got))
            st.released += 1
            while got < size:                                  # then the rest, fast
                got += await recv_into(sock, min(len(sink), size - got))
            st.done += 1
        except (OSError, RuntimeError, TimeoutError, ValueError, IndexError) as exc:
            st.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            sock.close()

    admin = getattr(args, "admin_port", None)

    def progress(phase: str) -> None:
        trims = f", heap_trims {_trims(status_counters(admin))}" if admin is not None else ""
        print(f"  {name} slow-readers [{phase}] t={loop.time() - t0:5.1f}s connected {st.connected}/{n} "
              f"heads {st.heads} done {st.done} errors {len(st.errors)} "
              f"received {st.received / (1 << 20):7.1f} MiB, proxy RSS {rss_kb(pid) / 1024:6.1f} MiB{trims}",
              flush=True)

    counters_before = status_counters(admin)
    before = rss_kb(pid)
    hwm_reset = reset_hwm(pid)
    out: dict[str, object] = {"readers": n, "size": size, "rcvbuf": args.slow_rcvbuf,
                              "read_kib_per_interval": args.slow_read_kib, "interval_s": args.slow_interval,
                              "hold_s": args.slow_hold, "settle_s": args.settle, "rss_before_kb": before}
    t0 = loop.time()
    deadline = t0 + args.slow_timeout
    with Sampler(pid) as sampler:
        tasks = [loop.create_task(one()) for _ in range(n)]
        # 1. every reader has its head (or failed), bounded in time
        while st.heads + len(st.errors) < n and loop.time() < deadline:
            await asyncio.sleep(1.0)
            progress("connect")
        heads_s = loop.time() - t0
        # 2. the hold: everyone reads a few KiB a second
        hold_end = min(loop.time() + args.slow_hold, deadline)
        while loop.time() < hold_end:
            await asyncio.sleep(min(1.0, max(0.0, hold_end - loop.time())))
            progress("hold")
        held_rss = rss_kb(pid)
        counters_held = status_counters(admin)
        spooled = open_files_kb(pid)
        queues = kernel_queues(port, args.backend_ports)
        received_held = st.received
        release.set()
        # 3. read the rest and close
        t_release = loop.time()
        while not all(t.done() for t in tasks) and loop.time() < deadline:
            await asyncio.wait(tasks, timeout=1.0)
            progress("drain")
        drain_s = loop.time() - t_release
        timed_out = [t for t in tasks if not t.done()]
        for t in timed_out:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    peak_hwm = hwm_kb(pid) if hwm_reset else None
    counters_drained = status_counters(admin)
    # 4. after: the memory the proxy gives back (or not) once every slow reader has gone
    settle: list[int] = []
    settle_trims: list[int | None] = []
    for _ in range(max(1, round(args.settle))):
        await asyncio.sleep(args.settle / max(1, round(args.settle)))
        settle.append(rss_kb(pid))
        settle_trims.append(_trims(status_counters(admin)))
    after = settle[-1]
    counters_after = status_counters(admin)
    peak = max(peak_hwm or 0, sampler.peak_kb, held_rss)   # (VmRSS and VmHWM lag a little apart)
    out.update({
        "ok": st.done, "errors": len(st.errors), "first_error": st.errors[0] if st.errors else "",
        "timed_out": len(timed_out), "heads_s": round(heads_s, 2), "drain_s": round(drain_s, 2),
        "received_during_hold_mib": round(received_held / (1 << 20), 1),
        "rss_held_kb": held_rss, "peak_rss_kb": peak, "peak_rss_kb_hwm": peak_hwm,
        "peak_rss_kb_sampled": sampler.peak_kb,
        "rss_after_kb": after, "rss_settle_kb": settle, "open_files_held_kb": spooled,
        "kernel_queues_held_mib": queues,
        "held_per_reader_kb": round((held_rss - before) / max(1, n), 1),
        "peak_per_reader_kb": round((peak - before) / max(1, n), 1),
        "after_minus_before_kb": after - before,
    })
    if admin is not None:   # taxiway: did the balancer trim the heap (proxy/heap.py), and when
        out.update({
            "heap_trims_before": _trims(counters_before), "heap_trims_held": _trims(counters_held),
            "heap_trims_drained": _trims(counters_drained), "heap_trims_settle": settle_trims,
            "heap_trims_after": _trims(counters_after), "status_counters_after": counters_after,
        })
    print(f"{name} slow-readers: {st.done}/{n} ok ({len(st.errors)} errors, {len(timed_out)} timed out); "
          f"RSS before {before / 1024:.1f} MiB, held {held_rss / 1024:.1f} MiB "
          f"({out['held_per_reader_kb']} KiB/reader), peak {peak / 1024:.1f} MiB "
          f"({out['peak_per_reader_kb']} KiB/reader), after {after / 1024:.1f} MiB "
          f"(+{(after - before) / 1024:.1f}); open files {spooled / 1024:.1f} MiB; kernel queues at the "
          f"end of the hold (MiB): {queues}", flush=True)
    if admin is not None:
        print(f"  heap_trims: before {out['heap_trims_before']}, end of hold {out['heap_trims_held']}, "
              f"drained {out['heap_trims_drained']}, settle {settle_trims}", flush=True)
    if st.errors:
        print(f"  first error: {st.errors[0]}", flush=True)
    return out


SCENARIOS = ("download", "slow-download", "upload", "idle", "slow-readers")


def measure(name: str, port: int, pid: int, args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    for _ in range(20):   # warm: imports, first upstream connections, allocator arenas
        download(port, 1024)
    out["baseline_rss_kb"] = rss_kb(pid)
    print(f"{name}: RSS after warm-up {out['baseline_rss_kb'] / 1024:.1f} MiB", flush=True)  # type: ignore[operator]
    size = int(args.size_gb * GB)
    slow_rate = args.slow_rate_mb * (1 << 20)
    for label, fn in (("download", lambda: download(port, size)),
                      ("slow_download", lambda: download(port, args.slow_mb << 20, slow_rate)),
                      ("upload", lambda: upload(port, size))):
        if label.replace("_", "-") not in args.scenarios:
            continue
        hwm_reset = reset_hwm(pid)
        cpu0, count0 = cpu_seconds(pid), proc_counters(pid)
        with Sampler(pid) as sampler:
            secs = fn()
        cpu1, count1 = cpu_seconds(pid), proc_counters(pid)
        cpu_s = sum(cpu1) - sum(cpu0)   # the proxy's own CPU: steadier than wall time on a busy box
        mb = (args.slow_mb if label == "slow_download" else size / (1 << 20))
        out[label] = {"mb": mb, "seconds": round(secs, 2), "mb_per_s": round(mb / secs, 1),
                      "proxy_cpu_s": round(cpu_s, 2), "proxy_cpu_s_per_gib": round(cpu_s / (mb / 1024), 2),
                      "proxy_user_s": round(cpu1[0] - cpu0[0], 2), "proxy_sys_s": round(cpu1[1] - cpu0[1], 2),
                      **{f"proxy_{k}": count1[k] - count0[k] for k in count0},
                      "peak_rss_kb_hwm": hwm_kb(pid) if hwm_reset else None,
                      "peak_rss_kb_sampled": sampler.peak_kb}
        print(f"{name} {label}: {mb:.0f} MB in {secs:.1f}s (proxy CPU {cpu_s:.2f} s, "
              f"{count1['minflt'] - count0['minflt']} page faults), peak RSS "
              f"{(hwm_kb(pid) if hwm_reset else sampler.peak_kb) / 1024:.1f} MiB "
              f"(baseline {out['baseline_rss_kb'] / 1024:.1f} MiB)", flush=True)  # type: ignore[operator]
    if "idle" in args.scenarios:
        before = rss_kb(pid)
        idle = asyncio.run(_idle_connections(port, args.idle, args.hold, pid))
        idle["rss_before_kb"] = before
        idle["per_connection_kb"] = round((idle["rss_kb"] - before) / max(1, idle["opened"]), 2)
        out["idle"] = idle
        print(f"{name} {args.idle} idle keep-alive connections: opened {idle['opened']}, "
              f"alive {idle['alive_after_hold']}, RSS {idle['rss_kb'] / 1024:.1f} MiB "
              f"(+{(idle['rss_kb'] - before) / 1024:.1f} MiB, "
              f"{idle['per_connection_kb']:.1f} KiB each)", flush=True)
    if "slow-readers" in args.scenarios:
        for _ in range(3):   # a few whole answers first: first-use allocations are not the readers'
            download(port, args.slow_size)
        out["slow_readers"] = asyncio.run(_slow_readers(name, port, pid, args))
        # More rounds against the same process: is RSS that stayed up reused (retained) or lost?
        more = [asyncio.run(_slow_readers(f"{name} (round {i})", port, pid, args))
                for i in range(2, args.slow_rounds + 1)]
        if more:
            out["slow_readers_more_rounds"] = more
    return out


class EnvProcs(Procs):
    """Procs that adds `extra` to the environment of the taxiway process (--taxiway-env)."""

    def __init__(self, logdir: Path, extra: dict[str, str]) -> None:
        super().__init__(logdir)
        self.extra = extra

    def start(self, name: str, args: list[str], cpus: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        if name == "taxiway" and self.extra:
            env = taxiway_proc_env(self.extra)
        return super().start(name, args, cpus, env)


def taxiway_proc_env(extra: dict[str, str]) -> dict[str, str]:
    env = taxiway_env()
    for key, value in extra.items():
        env[key] = value + os.pathsep + env["PYTHONPATH"] if key == "PYTHONPATH" else value
    return env


def taxiway_build(extra: dict[str, str]) -> str:
    """Which build of taxiway's hot path the taxiway process runs (compiled or its sources)."""
    out = subprocess.run([sys.executable, "-c", "import taxiway; print(taxiway.BUILD)"],
                         env=taxiway_proc_env(extra), capture_output=True, text=True, check=False)
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr.strip()[-200:]


def taxiway_source() -> dict[str, object]:
    """The commit the measured src/ is at, and the files of src/ that differ from it (if any)."""
    root = Path(__file__).resolve().parents[2]

    def git(*cmd: str) -> str:
        out = subprocess.run(["git", "-C", str(root), *cmd], capture_output=True, text=True, check=False)
        return out.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "src_changes": [line for line in git("status", "--porcelain", "--", "src").splitlines() if line]}


def parse_env(items: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--taxiway-env: expected KEY=VALUE (got {item!r})")
        env[key] = value
    return env


NETNS_MARK = "TAXIWAY_MEM_NETNS"   # set in the re-executed harness, inside the namespace


def reexec_in_netns(argv: list[str]) -> int:
    """Run this script again under `unshare --net` (its own loopback, its own TCP sysctls)."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        raise SystemExit("--netns needs unshare (util-linux) and ip (iproute2)")
    env = dict(os.environ, **{NETNS_MARK: "1"})
    cmd = ["unshare", "--net", "--", sys.executable, str(Path(__file__).resolve()), *argv]
    return subprocess.run(cmd, env=env, check=False).returncode


def setup_netns(args: argparse.Namespace) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up", "mtu", str(args.lo_mtu)], check=True)
    if args.tcp_wmem:
        Path("/proc/sys/net/ipv4/tcp_wmem").write_text(args.tcp_wmem + "\n")


def net_settings() -> dict[str, object]:
    """The loopback MTU and TCP buffer sysctls in force (they decide how much the kernel absorbs)."""
    out: dict[str, object] = {"netns": bool(os.environ.get(NETNS_MARK))}
    # (not /sys/class/net: sysfs stays the host's in a namespace made by `unshare --net` alone)
    with contextlib.suppress(OSError, ValueError, IndexError):
        link = subprocess.run(["ip", "-o", "link", "show", "lo"], capture_output=True, text=True,
                              check=False).stdout.split()
        out["lo_mtu"] = int(link[link.index("mtu") + 1])
    for name in ("tcp_wmem", "tcp_rmem"):
        with contextlib.suppress(OSError):
            out[name] = " ".join(Path(f"/proc/sys/net/ipv4/{name}").read_text().split())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="taxiway", help="comma list from: taxiway, haproxy, nginx")
    p.add_argument("--only", default=",".join(SCENARIOS),
                   help=f"comma list of scenarios (default all): {', '.join(SCENARIOS)}")
    p.add_argument("--size-gb", type=float, default=1.0, help="download/upload size")
    p.add_argument("--slow-mb", type=int, default=256, help="size of the rate-capped download")
    p.add_argument("--slow-rate-mb", type=float, default=64.0, help="read rate of the slow download, MB/s")
    p.add_argument("--idle", type=int, default=5000, help="idle keep-alive connections")
    p.add_argument("--hold", type=float, default=2.0, help="seconds to hold them before measuring")
    p.add_argument("--slow-readers", type=int, default=1000, metavar="N", help="slow-reader clients")
    p.add_argument("--slow-size", type=int, default=1 << 20, metavar="BYTES",
                   help="size of each slow reader's answer (default 1 MiB)")
    p.add_argument("--slow-rcvbuf", type=int, default=16384, metavar="BYTES",
                   help="SO_RCVBUF of each slow reader's socket (0: the kernel's default)")
    p.add_argument("--slow-read-kib", type=int, default=4,
                   help="KiB each slow reader reads per interval (0: none until the hold ends)")
    p.add_argument("--slow-interval", type=float, default=1.0, help="seconds between a slow reader's reads")
    p.add_argument("--slow-hold", type=float, default=10.0,
                   help="seconds the fleet reads slowly once every reader has its head")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds after the last slow reader closed before RSS 'after' is read")
    p.add_argument("--slow-rounds", type=int, default=1,
                   help="slow-reader rounds against the same proxy process (later ones show whether "
                        "memory kept after the first is reused)")
    p.add_argument("--slow-timeout", type=float, default=180.0,
                   help="bound on one target's slow-reader run (connect + hold + drain), seconds")
    p.add_argument("--netns", action="store_true",
                   help="run everything in a private network namespace (root; `unshare --net`) whose "
                        "loopback has --lo-mtu: see 'Loopback' in the module docstring")
    p.add_argument("--lo-mtu", type=int, default=1500, help="MTU of the namespace's loopback (--netns)")
    p.add_argument("--tcp-wmem", default=None, metavar="'MIN DEFAULT MAX'",
                   help="net.ipv4.tcp_wmem inside the namespace (--netns; default: the host's)")
    p.add_argument("--taxiway-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the taxiway process (repeatable; PYTHONPATH is prepended)")
    p.add_argument("--keep-logs", action="store_true", help="keep the run directory (configs, process logs)")
    p.add_argument("--results", default=None, help="results dir (default benchmarks/memory/results/DATE)")
    args = p.parse_args(argv)
    args.scenarios = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = args.scenarios - set(SCENARIOS)
    if unknown:
        p.error(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(SCENARIOS)}")
    if args.netns and not os.environ.get(NETNS_MARK):
        return reexec_in_netns(argv if argv is not None else sys.argv[1:])
    if os.environ.get(NETNS_MARK):
        setup_netns(args)
    extra = parse_env(args.taxiway_env)
    raise_fd_limit()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    results_dir = Path(args.results) if args.results else Path(__file__).resolve().parent / "results" / stamp
    results_dir.mkdir(parents=True, exist_ok=True)
    rundir = Path(tempfile.mkdtemp(prefix="taxiway-mem-"))
    for d in ("nginx-body", "nginx-proxy", "nginx-fastcgi", "nginx-uwsgi", "nginx-scgi"):
        (rundir / d).mkdir()
    procs = EnvProcs(rundir, extra)
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    result: dict[str, object] = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "machine": machine(), "versions": versions(), "net": net_settings(),
                                 "command": " ".join([Path(sys.executable).name, *sys.argv]),
                                 "scenarios": sorted(args.scenarios, key=SCENARIOS.index),
                                 "taxiway_env": extra,
                                 "taxiway_build": taxiway_build(extra) if "taxiway" in names else None,
                                 "taxiway_source": taxiway_source() if "taxiway" in names else None,
                                 "targets": {}}
    if "slow-readers" in args.scenarios and not os.environ.get(NETNS_MARK) and \
            result["net"].get("lo_mtu", 0) > 16384:  # type: ignore[attr-defined]
        print("warning: slow-readers on the host's loopback (MTU 65536): the kernel's send buffers take "
              "most of each answer, so a proxy's own buffering hardly shows; use --netns", flush=True)
    if "slow-readers" in args.scenarios:
        result["slow_readers_options"] = {
            "readers": args.slow_readers, "size": args.slow_size, "rcvbuf": args.slow_rcvbuf,
            "read_kib": args.slow_read_kib, "interval_s": args.slow_interval, "hold_s": args.slow_hold,
            "settle_s": args.settle, "rounds": args.slow_rounds}
    targets: dict[str, object] = result["targets"]  # type: ignore[assignment]
    opts = argparse.Namespace(strategy="round-robin", taxiway_workers=1)
    print(f"scenarios: {', '.join(result['scenarios'])}; targets: {', '.join(names)}"  # type: ignore[arg-type]
          + (f"; taxiway env {extra}, build {result['taxiway_build']}" if extra else ""), flush=True)
    try:
        b1, b2 = free_port(), free_port()
        args.backend_ports = (b1, b2)
        for i, port in enumerate((b1, b2), 1):
            bp = procs.start(f"backend{i}", [sys.executable, "-m", "taxiway", "backend", "--port", str(port),
                                             "--name", f"b{i}"])
            wait_for_port(port, bp)
        for name in names:
            proc, port = start_target(name, procs, rundir, (b1, b2), opts, None)
            args.admin_port = admin_port_of(rundir / "taxiway.toml") if name == "taxiway" else None
            try:
                targets[name] = measure(name, port, proc.pid, args)
            except (OSError, RuntimeError) as exc:   # record it and go on with the other targets
                print(f"{name}: FAILED: {exc}", file=sys.stderr)
                targets[name] = {"error": str(exc)}
            finally:
                procs.stop(proc)
    finally:
        procs.stop_all()
    (results_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {results_dir / 'result.json'}")
    if args.keep_logs:
        print(f"logs: {rundir}")
        return 0
    with contextlib.suppress(OSError):
        shutil.rmtree(rundir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
