"""When the balancer gives a burst's buffers back to the system (proxy/heap.py), and that slow
readers of large answers get every byte through the shared read buffer and bounded buffering."""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import pytest

from taxiway.proxy.heap import TrimPolicy, load_malloc_trim
from tests.proxy_support import Client, InProcess, Origin, make_config, ok_response, wait_until


@pytest.mark.parametrize(("steps", "trims"), [
    pytest.param([(0, 0.0), (10, 1.0), (0, 2.0)], [False, False, False], id="small-burst-never"),
    pytest.param([(100, 1.0), (30, 2.0), (20, 3.0)], [False, False, True], id="after-a-burst"),
    pytest.param([(100, 1.0), (10, 2.0), (100, 3.0), (0, 4.0)], [False, True, False, False],
                 id="at-most-every-interval"),
    pytest.param([(100, 1.0), (10, 2.0), (100, 3.0), (0, 13.0)], [False, True, False, True],
                 id="again-after-the-interval"),
    pytest.param([(64, 1.0), (16, 2.0)], [False, True], id="exactly-min-peak-and-a-quarter"),
    pytest.param([(63, 1.0), (0, 2.0)], [False, False], id="below-min-peak"),
])
def test_trim_policy(steps: list[tuple[int, float]], trims: list[bool]) -> None:
    p = TrimPolicy(min_peak=64, fraction=0.25, interval_s=10.0)
    assert [p.should_trim(n, now) for n, now in steps] == trims


def test_malloc_trim_is_found_on_glibc() -> None:
    trim = load_malloc_trim()
    if trim is None:
        pytest.skip("this C library has no malloc_trim (not glibc)")
    assert trim() in (0, 1)


def test_slow_readers_of_large_answers_get_every_byte() -> None:
    """80 clients read a 1 MiB answer slowly through small socket buffers: the upstream is read
    into one shared 64 KiB buffer and paused per client; every client gets exactly its bytes,
    and once they are done the balancer gives the memory back (one trim)."""
    body = bytes(range(256)) * 4096
    digest = hashlib.sha256(body).hexdigest()
    o = Origin(lambda req: ok_response(body))
    b = InProcess(make_config([o.port]))
    results: list[str] = []
    lock = threading.Lock()
    try:
        def reader() -> None:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            s.settimeout(30)
            s.connect(("127.0.0.1", b.port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            got = bytearray()
            time.sleep(1.0)                   # not reading at first: taxiway must wait
            while True:
                d = s.recv(16 * 1024)
                if not d:
                    break
                got += d
                time.sleep(0.002)
            s.close()
            head, _, rest = bytes(got).partition(b"\r\n\r\n")
            with lock:
                ok = head.startswith(b"HTTP/1.1 200")
                results.append(hashlib.sha256(rest).hexdigest() if ok else "bad")

        threads = [threading.Thread(target=reader) for _ in range(80)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [digest] * 80
        # (every pause was matched by a resume or a close: the count the trim policy reads)
        assert wait_until(lambda: b.run(lambda: b.bal.paused_writers) == 0, 5)
        assert Client(b.port).get("/").status == 200
    finally:
        b.stop()
        o.close()
