"""Load-balancing strategies: which of the candidate servers takes the next request.

Rules of this module:
1. Pure core: no I/O, no clock, no logging, no asyncio, and no RNG creation. Time enters as `now`
   (monotonic seconds) and randomness as the `random.Random` handed to `make_strategy`, so a
   seeded RNG replays the same sequence (tests, simulator).
2. Strategies read only the "server view" of `Server`: `name`, `weight`, `effective_weight(now)`
   (slow start), `inflight` and the latency EWMA. They never change those counters: the driver
   does (`inflight += 1` on dispatch, `-= 1` and `process_latency` on completion).
3. `pick` is on the proxy's hot path (once per request and per retry). It does one pass over the
   candidates at most, plus O(log n) for the hash ring; derived state (the ring) is cached and
   rebuilt only when the set of names/weights changes.

Theory of operation. The caller filters the pool: `candidates` are the servers that are available
now and not yet tried for this request, so a strategy never has to know about health, ejection,
draining or retries. `pick` returns one of them, or None only when there are none (-> 503).
`key_kind` tells the caller which request attribute to pass as `key` (only consistent-hash uses
one: "client_ip", "path", "header:NAME" or "cookie:NAME"); the others ignore `key`.

Trade-offs (see docs/balancer.md, "Balancing strategies", for simulated numbers):
- random / round-robin: no feedback; fine when requests cost the same, uneven when they do not.
- weighted-round-robin: nginx's smooth WRR; honours weights and slow start, still blind to load.
- least-connections: reacts to load (in-flight count per unit of weight); scans all candidates.
- power-of-two: least-connections on two random candidates; O(1), avoids the herd effect.
- peak-ewma: Finagle/Linkerd; latency x load on two random candidates; steers away from slow servers.
- consistent-hash: same key -> same server (caches, sessions), with bounded loads.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import ClassVar

from taxiway.balancing.hashing import HashRing
from taxiway.balancing.model import Server
from taxiway.config import BalancerConfig


class Strategy:
    """Base class. Subclasses implement `pick`; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    # Which request attribute the caller must pass as `key` (None: the strategy ignores keys).
    key_kind: str | None = None

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, candidates: Sequence[Server], key: str | None, now: float) -> Server | None:
        """Choose the server for one request.

        Args:
            candidates: available servers not yet tried for this request (the caller filters).
            key: the request's hash key when `key_kind` is set (None if the request lacks it).
            now: monotonic seconds (slow start, latency decay).
        Returns:
            one element of `candidates`, or None only when `candidates` is empty; the caller should
            then answer 503 (no server available).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def _weight(server: Server, now: float) -> float:
    """`server.effective_weight(now)`, skipping the slow-start maths when it is off (hot path)."""
    if server.slow_start_s <= 0.0:
        return server.weight
    return server.effective_weight(now)


def _load(server: Server, now: float) -> float:
    """In-flight requests per unit of (slow-start) weight, counting the one being placed.

    `+ 1` makes weights matter on an idle pool too (HAProxy's leastconn does the same), and lets a
    slow-starting server (effective weight 0.1 x weight) take traffic only when others are busy.
    """
    w = server.weight if server.slow_start_s <= 0.0 else server.effective_weight(now)
    return (server.inflight + 1) / w if w > 0 else math.inf


def _index(rng: random.Random, n: int) -> int:
    """A uniform index below n: `random()` is ~5x cheaper than `randrange` and as uniform for small n."""
    return int(rng.random() * n)


class RandomStrategy(Strategy):
    """Uniform random choice: no state, no coordination, fine for many similar requests."""

    name = "random"

    def pick(self, candidates: Sequence[Server], key: str | None, now: float) -> Server | None:
        if not candidates:
            return None
        return candidates[_index(self.rng, len(candidates))]


class RoundRobin(Strategy):
    """Each candidate in turn. Starts at a random offset so SO_REUSEPORT workers do not march in step."""

    name = "round-robin"

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._next = rng.randrange(1 << 30)

    def pick(self, candidates: Sequence[Server], key: str | None, now: float) -> Server | None:
        if not candidates:
            return None
        i = self._next % len(candidates)
        self._next += 1
        return candidates[i]


class WeightedRoundRobin(Strategy):
    """nginx's smooth weighted round robin (ngx_http_upstream_get_peer).

    Every pick adds each candidate's effective weight to its `current` score, takes the highest and
    subtracts the total from the winner. Over one cycle of sum(weights) picks each server is chosen
    exactly `weight` times, interleaved (5,1,1 gives a a b a c a a, not a a a a a b c). Using the
    slow-start effective weight makes a (re)joining server ramp up. Servers that are not candidates
    (already tried for this request, down) are skipped without accumulating, as nginx does.
    """

    name = "weighted-round-robin"

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self._current: dict[Server, float] = {}

    def pick(self, candidates: Sequence[Server], key: str | None, now: float) -> Server | None:
        if not candidates:
            return None
        current = self._current
        if len(current) > 2 * len(candidates) + 16:
            # Servers come and go (autoscaling): forget the ones that are no longer candidates.
            keep = set(candidates)
            self._current = current = {s: c for s, c in current.items() if s in keep}
        best: Server | None = None
        best_score = -math.inf
        total = 0.0
        for s in candidates:
            w = _weight(s, now)
            total += w
            score = current.get(s, 0.0) + w
            current[s] = score
            if score > best_score:
                best, best_score = s, score
        assert best is not None
        current[best] = best_score - total
        return best


class LeastConnections(Strategy):
    """Fewest in-flight requests per unit of effective weight; ties broken at random.

    Random tie-breaking matters: on an idle pool a first-in-list tie-break sends every burst's
    first request to the same server. Ties are resolved by reservoir sampling in the same pass.
    """

    name = "least-connections"

    def pick(self, candidates: Sequence[Server], key: str | None, now: float) -> Server | None:
        # Hot path: one tight pass over positive weights; the RNG is drawn only on a tie, exactly
        # as in `_pick_general` (which also handles zero weights, all tied at infinity).
        best: Server | None = None
        best_load = 0.0
        ties = 0
        for s in candidates:
            w = float(s.weight)   # int weight, or the fractional one of slow start below
            if s.slow_start_s > 0.0:
                w = s.effective_weight(now)
            if w <= 0:
                if best is None:
                    return self._pick_general(candidates, now)
                continue
            load = (s.inflight + 1) / w
            if best is None or load < best_load:
                best, best_load, ties = s, load, 1
            elif load == best_load:
                ties += 1
                if self.rng.random() * ties < 1.0:
                    best = s
        return best

    def _pick_general(self, candidates: Sequence[Server], now: float) -> Server | None:
        if not candidates:
            return None
        best = candidates[0]
        best_load = math.inf
        ties = 0
        rand = self.rng.random
        for s in candidates:
            w = s.weight if s.slow_start_s <= 0.0 else s.effective_weight(now)
            load = (s.inflight + 1) / w if w > 0 else math.inf
            if load < best_load:
                best, best_load, ties = s, load, 1
            elif load == best_load:
                ties += 1
                if rand() * ties < 1.0:   # reservoir sampling: each tied server with p = 1/ties
                    best = s
        return best


def _two(candidates: Sequence[Server], rng: random.Random) -> tuple[Server, Server]:
    """Two distinct random candidates (the same one twice when there is only one)."""
    n = len(candidates)
    if n == 1:
        return candidates[0], candidates[0]
    i = _index(rng, n)
    j = _index(rng, n - 1)
    if j >= i:
        j += 1
    return candidates[i], candidates[j]


class PowerOfTwo(Strategy):
    """Two random choices, the one with fewer in-flight requests (per unit of weight) wins.

    Mitzenmacher's "power of two choices": exponentially better max load than random, O(1), and
    unlike least-connections it does not send a burst from many workers to the one idle server.
    """

    name = "power-of-two"

    def pick(self, candidates: Sequence[Server], key: str | None, now: float) -> Server | None:
        if not candidates:
            return None
        a, b = _two(candidates, self.rng)
        return b if _load(b, now) < _load(a, now) else a


class PeakEwma(Strategy):
    """Finagle's / Linkerd's peak-EWMA: cost = latency estimate x (in-flight + 1), on two random choices.

    The estimate is the server's peak EWMA (a slow sample takes over at once, fast ones decay in),
    decayed toward zero while no sample arrives (Finagle's `observe(0)` on read): otherwise a server
    that was slow once would lose every comparison forever and never be probed again. A server with
    no sample yet gets its rival's estimate (a neutral penalty), so a new server is neither flooded
    (as cost 0 would) nor starved (as a large penalty would); the in-flight counts then decide.
    """

    name = "peak-ewma"

    @staticmethod
    def latency(server: Server, now: float) -> float | None:
        """Decayed latency estimate in seconds, or None if the server was never sampled."""
        if server.ewma_s <= 0.0:
            return None
        elapsed = now - server.ewma_at
        if elapsed <= 0.0:
            return server.ewma_s
        return server.ewma_s * math.exp(-elapsed / server.ewma_decay_s)

    def pick(self, candidates: Sequence[Server], key: str | None, now: float) -> Server | None:
        if not candidates:
            return None
        a, b = _two(candidates, self.rng)
        if a is b:
            return a
        la, lb = self.latency(a, now), self.latency(b, now)
        if la is None:
            la = lb if lb is not None else 1.0
        if lb is None:
            lb = la
        # Divide by the effective weight so weights and slow start shift the balance too.
        cost_a = la * _load(a, now)
        cost_b = lb * _load(b, now)
        if cost_a == cost_b:
            return a   # a is already a uniformly random one of the two
        return a if cost_a < cost_b else b


class ConsistentHash(Strategy):
    """Consistent hashing of the request key on a virtual-node ring, with bounded loads.

    The ring is built over every server seen recently (name -> weight) and cached; a pick skips
    ring members that are not candidates, which gives the same answer as a ring without them (see
    `hashing`). It is rebuilt only when a candidate is new or reweighted, or when many members have
    left for good. A request without a key (no such header/cookie) goes to a random candidate, as
    HAProxy falls back to round robin.
    """

    name = "consistent-hash"

    def __init__(self, rng: random.Random, key_kind: str = "client_ip", balance_factor: float | None = 1.25):
        super().__init__(rng)
        self.key_kind = key_kind
        self.balance_factor = balance_factor
        self.ring = HashRing({})
        self.rebuilds = 0

    def _ensure_ring(self, candidates: Sequence[Server]) -> None:
        members = self.ring.members
        if len(members) <= 2 * len(candidates) + 8:
            get = members.get
            for s in candidates:
                if get(s.name) != s.weight:
                    break
            else:
                return
        merged = dict(members) if len(members) <= 2 * len(candidates) + 8 else {}
        merged.update((s.name, s.weight) for s in candidates)
        self.ring = HashRing(merged)
        self.rebuilds += 1

    def pick(self, candidates: Sequence[Server], key: str | None, now: float) -> Server | None:
        if not candidates:
            return None
        if key is None:
            return candidates[_index(self.rng, len(candidates))]
        self._ensure_ring(candidates)
        return self.ring.lookup(key, candidates, self.balance_factor, now)


STRATEGIES: dict[str, type[Strategy]] = {
    "random": RandomStrategy,
    "round-robin": RoundRobin,
    "weighted-round-robin": WeightedRoundRobin,
    "least-connections": LeastConnections,
    "power-of-two": PowerOfTwo,
    "peak-ewma": PeakEwma,
    "consistent-hash": ConsistentHash,
}


def make_strategy(cfg: BalancerConfig, rng: random.Random) -> Strategy:
    """Build the strategy `cfg.strategy` names.

    Args:
        cfg: the [balancer] section (strategy, hash_key, balance_factor).
        rng: the only source of randomness the strategy will use; seed it for reproducible runs.
    Raises:
        KeyError: unknown strategy name (cannot happen for a validated config).
    """
    cls = STRATEGIES[cfg.strategy]
    if cls is ConsistentHash:
        return ConsistentHash(rng, key_kind=cfg.hash_key, balance_factor=cfg.balance_factor)
    return cls(rng)
