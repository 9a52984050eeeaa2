"""Giving memory back to the system after a burst of slow clients (glibc's `malloc_trim`).

Why: while a client reads slower than its server sends, the bytes in between wait in
taxiway's buffers (bounded per connection: one upstream read plus the write high-water mark).
When a thousand such clients finish, Python frees those buffers, but glibc keeps the freed
heap: it had raised its mmap threshold after the first large free, so later buffers came from
the heap, and free space in the middle of a heap only goes back to the system through
`malloc_trim`. Measured (BENCHMARKS.md, "Slow readers"): 216 MiB stayed resident after 1,000
slow readers of 1 MiB were done, and the next burst reused it but crept higher.

Rules of this module:
1. `TrimPolicy` decides (pure: counts and `now` in, a yes/no out): after a burst, i.e. when the
   number of clients that made taxiway wait (write-paused connections) has fallen from a peak
   of at least `min_peak` to a quarter of it, at most once per `interval_s`.
2. `load_malloc_trim` finds glibc's function (None elsewhere: musl, macOS); the balancer calls
   it in a worker thread, since returning 250 MB takes up to ~170 ms and ctypes releases the
   GIL. The loop can still wait on an arena lock the trim holds when it allocates at that
   moment, which is why it runs only after a burst and at most every `interval_s`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


class TrimPolicy:
    """When to trim: after the number of write-paused clients fell well below its peak."""

    def __init__(self, min_peak: int = 64, fraction: float = 0.25, interval_s: float = 10.0) -> None:
        self.min_peak = min_peak
        self.fraction = fraction
        self.interval_s = interval_s
        self.peak = 0
        self.next_at = 0.0

    def should_trim(self, paused_writers: int, now: float) -> bool:
        """Called a few times a second with the clients currently write-paused."""
        if paused_writers > self.peak:
            self.peak = paused_writers
            return False
        if self.peak >= self.min_peak and paused_writers <= self.peak * self.fraction and now >= self.next_at:
            self.peak = paused_writers
            self.next_at = now + self.interval_s
            return True
        return False


def load_malloc_trim() -> Callable[[], int] | None:
    """glibc's `malloc_trim(0)` as a callable, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int

    def trim() -> int:
        return int(fn(0))

    return trim
