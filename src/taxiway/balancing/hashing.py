"""Consistent hashing with virtual nodes and bounded loads.

Rules of this module:
1. Pure: no I/O, no clock, no RNG. Hashes are keyed BLAKE2b, never Python's `hash()`, because
   `hash(str)` is salted per process: SO_REUSEPORT workers, the simulator and the replica router
   must all map a key to the same server.
2. The ring is immutable once built; `HashRing.lookup` never allocates more than a small set.

Theory of operation. Each server owns `VNODES_PER_WEIGHT x weight` points on a 64-bit ring (the
"ketama" layout memcached clients and HAProxy's `hash-type consistent` use). A key hashes to a
point and belongs to the first server point clockwise from it. Removing a server only hands *its*
arcs to the next servers along the ring, so only ~1/n of the keys move when one of n servers joins
or leaves. Because of that, skipping a server while walking the ring gives exactly the answer a
ring rebuilt without it would give: we build the ring over every server we have seen and skip the
ones that are not candidates right now (down, ejected, draining, already tried), instead of
rebuilding it on every health flap.

Bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2016;
HAProxy's `hash-balance-factor`): a server may take the request only if its in-flight count after
taking it stays within `ceil(balance_factor x total x share)`, where `total` counts the new request
and `share` is the server's weight share. A server over its cap is skipped along the ring, so a hot
key spills over to the next servers instead of melting one. At least one candidate always fits
(the least-loaded one, by pigeonhole), so the walk always ends.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Mapping, Sequence

from taxiway.balancing.model import Server

# Points per unit of weight. 100-200 keeps the spread of arc sizes within a few percent for
# small pools (ketama uses 160 per server); the ring stays small enough to rebuild in microseconds.
VNODES_PER_WEIGHT = 100


def hash64(data: str) -> int:
    """Stable 64-bit hash of `data` (same value in every process and on every machine)."""
    return int.from_bytes(hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "big")


class HashRing:
    """An immutable ring of virtual nodes for a mapping of server name -> weight."""

    __slots__ = ("_names", "_points", "members")

    def __init__(self, members: Mapping[str, int]) -> None:
        self.members: dict[str, int] = dict(members)
        pairs: list[tuple[int, str]] = []
        for name, weight in self.members.items():
            for i in range(max(0, weight) * VNODES_PER_WEIGHT):
                pairs.append((hash64(f"{name}#{i}"), name))
        pairs.sort()
        self._points = [p for p, _ in pairs]
        self._names = [n for _, n in pairs]

    def __len__(self) -> int:
        return len(self._points)

    def owner(self, key: str) -> str | None:
        """The server name owning `key` when every member is present (None for an empty ring)."""
        if not self._points:
            return None
        i = bisect.bisect(self._points, hash64(key)) % len(self._points)
        return self._names[i]

    def lookup(self, key: str, candidates: Sequence[Server], balance_factor: float | None,
               now: float) -> Server | None:
        """The first candidate clockwise from `key` whose load stays under its bounded-load cap.

        Args:
            key: the request's hash key (client IP, path, header or cookie value).
            candidates: the servers allowed now; every one must be a ring member.
            balance_factor: None or >= 1; None disables bounded loads (plain consistent hashing).
            now: monotonic seconds, for slow-start effective weights.
        Returns:
            a candidate, or None when `candidates` is empty or none of them is on the ring.
        """
        if not candidates or not self._points:
            return None
        by_name = {s.name: s for s in candidates}
        bounded = False
        scale = 0.0
        if balance_factor is not None and len(candidates) > 1:
            bounded = True
            total = 1
            wsum = 0.0
            for s in candidates:
                total += s.inflight
                wsum += s.effective_weight(now)
            scale = balance_factor * total / (wsum or 1.0)
        names = self._names
        n_points = len(names)
        start = bisect.bisect(self._points, hash64(key))
        seen: set[str] = set()
        first: Server | None = None
        for step in range(n_points):
            name = names[(start + step) % n_points]
            if name in seen:
                continue
            seen.add(name)
            server = by_name.get(name)
            if server is not None:
                # cap = ceil(balance_factor x total x weight share)
                if not bounded or server.inflight + 1 <= math.ceil(scale * server.effective_weight(now)):
                    return server
                if first is None:
                    first = server
            if len(seen) == len(self.members):
                break
        # Only reachable through float rounding of the caps or candidates missing from the ring.
        return first
