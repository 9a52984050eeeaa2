"""The upstream wait queue: requests waiting for a server slot, as a pure core.

HAProxy's backend queue, and Knative's activator. When every server a request may use is at
`limits.upstream_max_connections`, or none is in rotation but one is coming (starting, failing
its health checks, ejected for a while), the request waits here: first in, first out, bounded
in length (`limits.upstream_queue`) and in time (`timeouts.queue`, then 503 with Retry-After).
A slot freed by a finished request, or a server that became ready, goes to the oldest waiter at
once; the balancer's tick expires waiters and retries the head (a server added, or back up).
While anyone waits, new requests queue behind them. Only when nothing can come (no server at its
cap, none starting or down for a while) is a waiter answered 503 before its time is up.

Rules of this module (pure core, like balancing/):
1. No I/O, no clock, no counters, no config: time comes in as `now` (and a deadline per entry),
   bounds as arguments, the router as a `Picker`.
2. Decisions come back as actions: `drain` yields each waiter that can go, with its server (or
   None: nothing it may use is left), and the driver (`forward.serve_waiters`) carries one out
   before asking for the next, so every pick sees the slots the previous one took.
3. A waiter whose client left, or that was answered, is `gone()`: its place is void and is
   cleared lazily (when met, or when the queue looks full).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from typing import Generic, Protocol, TypeVar

from taxiway.balancing.model import Server
from taxiway.proxy.http1 import RequestHead


class Waiter(Protocol):
    """What the queue reads of a waiting request (`forward.Exchange`)."""

    @property
    def head(self) -> RequestHead: ...
    @property
    def tried(self) -> tuple[Server, ...]: ...   # servers it failed on (a retry waits for others)
    def gone(self) -> bool: ...


class Picker(Protocol):
    """What the queue asks of the router (`forward.Router`)."""

    @property
    def full(self) -> bool: ...     # the last pick found servers, every one at its cap
    @property
    def coming(self) -> bool: ...   # ... or none in rotation, but one may come back or get ready

    def pick(self, head: RequestHead, tried: Sequence[Server], now: float) -> tuple[Server | None, bool]: ...
    def has_room(self, now: float) -> bool: ...


W = TypeVar("W", bound=Waiter)


class WaitQueue(Generic[W]):
    """Waiting requests, oldest first, each with the time its wait ends."""

    def __init__(self) -> None:
        self.entries: collections.deque[tuple[float, W]] = collections.deque()
        self.draining = False   # set by the driver while it carries out a drain (no recursion)

    def push(self, w: W, deadline: float, size: int) -> bool:
        """Queue `w` until `deadline`; False when `size` places are taken (or the queue is off,
        `size` 0): the caller answers 503."""
        entries = self.entries
        if len(entries) >= size:
            # Places of waiters that are gone count until cleared: clear them before refusing. In
            # place: a drain further up the stack may be iterating this very deque.
            live = [e for e in entries if not e[1].gone()]
            entries.clear()
            entries.extend(live)
            if len(entries) >= size:
                return False
        entries.append((deadline, w))
        return True

    def live(self) -> int:
        """Requests still waiting."""
        return sum(1 for _, w in self.entries if not w.gone())

    def drain(self, picker: Picker, now: float) -> Iterator[tuple[W, Server | None, bool]]:
        """The waiters that can go now, oldest first: `(w, server, set_cookie)` to send `w` to
        `server`, or `(w, None, False)` when no server it may use is left (answer it as a
        failure). Stops at the first waiter that must keep waiting: it keeps its place. A retry
        waiting for a server it has not tried, while another server has room, keeps its place
        too but does not hold up the requests behind it."""
        entries = self.entries
        passed: list[tuple[float, W]] = []
        try:
            while entries:
                w = entries[0][1]
                if w.gone():
                    entries.popleft()
                    continue
                server, set_cookie = picker.pick(w.head, w.tried, now)
                if server is None and (picker.full or picker.coming):
                    if w.tried and picker.has_room(now):
                        passed.append(entries.popleft())
                        continue
                    break
                entries.popleft()
                yield w, server, set_cookie
        finally:
            if passed:
                entries.extendleft(reversed(passed))

    def expired(self, now: float) -> Iterator[W]:
        """The waiters whose wait is over at `now`, taken out one at a time as the driver asks
        (it answers each 503 before the next is taken: one that fails leaves the rest queued)."""
        entries = self.entries
        while entries and entries[0][0] <= now:
            w = entries.popleft()[1]
            if not w.gone():
                yield w
