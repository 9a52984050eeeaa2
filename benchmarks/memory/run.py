"""Memory of the proxy: peak RSS during a 1 GB download and a 1 GB upload through it, and RSS with
5,000 idle keep-alive client connections.

    /work/venv/bin/python benchmarks/memory/run.py                    # taxiway only
    /work/venv/bin/python benchmarks/memory/run.py --targets taxiway,haproxy,nginx

Why these three: a proxy that buffers bodies instead of streaming them with back-pressure shows it
as RSS growing with the transfer size (a 1 GB body is far larger than any sane buffer); a slow
reader makes it worse, so the download is also done by a client that reads at a capped rate.
Per-connection state shows up in the idle-connection test.

Peak RSS is VmHWM from /proc/PID/status (summed over the process tree, for nginx's master+worker).
Before each transfer the high-water mark is reset (`echo 5 > /proc/PID/clear_refs`, Linux >= 4.0)
so each number is that transfer's own peak; where that is not allowed, a 20 ms VmRSS sampler
gives the peak instead (both are recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import socket
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


def measure(name: str, port: int, pid: int, args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = {}
    for _ in range(20):   # warm: imports, first upstream connections, allocator arenas
        download(port, 1024)
    out["baseline_rss_kb"] = rss_kb(pid)
    size = int(args.size_gb * GB)
    slow_rate = args.slow_rate_mb * (1 << 20)
    for label, fn in (("download", lambda: download(port, size)),
                      ("slow_download", lambda: download(port, args.slow_mb << 20, slow_rate)),
                      ("upload", lambda: upload(port, size))):
        hwm_reset = reset_hwm(pid)
        with Sampler(pid) as sampler:
            secs = fn()
        mb = (args.slow_mb if label == "slow_download" else size / (1 << 20))
        out[label] = {"mb": mb, "seconds": round(secs, 2), "mb_per_s": round(mb / secs, 1),
                      "peak_rss_kb_hwm": hwm_kb(pid) if hwm_reset else None,
                      "peak_rss_kb_sampled": sampler.peak_kb}
        print(f"{name} {label}: {mb:.0f} MB in {secs:.1f}s, peak RSS "
              f"{(hwm_kb(pid) if hwm_reset else sampler.peak_kb) / 1024:.1f} MiB "
              f"(baseline {out['baseline_rss_kb'] / 1024:.1f} MiB)", flush=True)  # type: ignore[operator]
    before = rss_kb(pid)
    idle = asyncio.run(_idle_connections(port, args.idle, args.hold, pid))
    idle["rss_before_kb"] = before
    idle["per_connection_kb"] = round((idle["rss_kb"] - before) / max(1, idle["opened"]), 2)
    out["idle"] = idle
    print(f"{name} {args.idle} idle keep-alive connections: opened {idle['opened']}, "
          f"alive {idle['alive_after_hold']}, RSS {idle['rss_kb'] / 1024:.1f} MiB "
          f"(+{(idle['rss_kb'] - before) / 1024:.1f} MiB, "
          f"{idle['per_connection_kb']:.1f} KiB each)", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="taxiway", help="comma list from: taxiway, haproxy, nginx")
    p.add_argument("--size-gb", type=float, default=1.0, help="download/upload size")
    p.add_argument("--slow-mb", type=int, default=256, help="size of the rate-capped download")
    p.add_argument("--slow-rate-mb", type=float, default=64.0, help="read rate of the slow download, MB/s")
    p.add_argument("--idle", type=int, default=5000, help="idle keep-alive connections")
    p.add_argument("--hold", type=float, default=2.0, help="seconds to hold them before measuring")
    p.add_argument("--results", default=None, help="results dir (default benchmarks/memory/results/DATE)")
    args = p.parse_args(argv)
    raise_fd_limit()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    results_dir = Path(args.results) if args.results else Path(__file__).resolve().parent / "results" / stamp
    results_dir.mkdir(parents=True, exist_ok=True)
    rundir = Path(tempfile.mkdtemp(prefix="taxiway-mem-"))
    for d in ("nginx-body", "nginx-proxy", "nginx-fastcgi", "nginx-uwsgi", "nginx-scgi"):
        (rundir / d).mkdir()
    procs = Procs(rundir)
    result: dict[str, object] = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "machine": machine(), "versions": versions(), "targets": {}}
    targets: dict[str, object] = result["targets"]  # type: ignore[assignment]
    opts = argparse.Namespace(strategy="round-robin")
    try:
        b1, b2 = free_port(), free_port()
        for i, port in enumerate((b1, b2), 1):
            bp = procs.start(f"backend{i}", [sys.executable, "-m", "taxiway", "backend", "--port", str(port),
                                             "--name", f"b{i}"])
            wait_for_port(port, bp)
        for name in [t.strip() for t in args.targets.split(",") if t.strip()]:
            proc, port = start_target(name, procs, rundir, (b1, b2), opts, None)
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
    with contextlib.suppress(OSError):
        import shutil
        shutil.rmtree(rundir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
