"""EdgeGuard: API-key and rate-limit decisions the balancer makes before any upstream work.

The proxy calls `guard.check(head)` once per request (see proxy/forward.py). The answer is
`None` (forward it) or a `Rejection` (answer it here). With the memory store the answer is a plain
value, so the proxy's callback chain never awaits; only the Redis store returns an awaitable.

Order of checks, and why:
1. API key, when the request's route requires one: 401 without a valid key (missing, unknown,
   expired, revoked), 403 when the key lacks a scope. First, so unauthenticated floods cannot use
   up an authenticated client's rate allowance.
2. Rate limits: every rule whose route matches is checked in one store call, all or nothing
   (a request refused by one rule does not use up another's allowance). 429 with Retry-After and
   the IETF draft's RateLimit-* headers.

Paths are matched after normalisation (see `normalize_path`), so `/%61pi/x`, `/public/../api/x`,
`/API/x`, `/api;x/y`, `/api./x` or `/api%20/x` cannot slip past a rule for `/api`: the matcher
over-matches on purpose. Whatever one app server reads as `/api`, the guard does too; a path that
no app reads as `/api` but that the guard takes for it only costs its sender a key check. A prefix
matches whole segments: `/api` covers `/api` and `/api/...` but not `/apix`. Rule prefixes go
through the same normalisation when the guard is built.

Methods: a rule or route for GET also covers HEAD (RFC 9110 §9.3.2: HEAD is GET without the body,
and most app servers answer it with the GET handler).

Keys never appear in logs or in `Rejection.reason`; the key's name does.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Awaitable
from typing import Any, Protocol
from urllib.parse import unquote

from taxiway.config import ApiKeyRoute, Config, RateLimitConfig, RateLimitRule
from taxiway.security.apikeys import ApiKey, KeyRing, KeyStatus
from taxiway.security.ratelimit import Limit, Verdict, ceil_seconds
from taxiway.security.ratestore import MemoryStore, RateStoreError, RedisStore
from taxiway.security.rejection import Rejection

log = logging.getLogger("taxiway.security")

STORE_ERROR_LOG_EVERY_S = 10.0   # one warning per interval while the shared store is down
REJECT_LOG_EVERY_S = 10.0        # refusals are logged as a summary at most this often


class Head(Protocol):
    """What EdgeGuard reads from the proxy's RequestHead."""

    method: str
    client_ip: str

    @property
    def path(self) -> str: ...

    def header(self, name: bytes) -> bytes | None: ...


def normalize_path(path: str) -> str:
    """The path a rule is matched against: a superset of the ways app servers route `path`.

    Steps, each one there because some server reads the path that way:
    1. Percent-decoding, repeated until nothing decodes (an app that decodes twice reads
       `%2561` as `a`; the proxy refuses `%25XX`, this keeps the function idempotent anyway).
    2. Lower-casing: case-insensitive routers (IIS, Spring with case-insensitive matching,
       macOS/Windows file systems) read `/API` as `/api`.
    3. Per segment, everything from the first `;` on is dropped: matrix parameters, which
       Tomcat/Spring strip before routing (`/api;x=1/y` and `/public/..;/api` reach `/api`).
    4. Empty and `.` segments are dropped and `..` removes the previous one (RFC 3986 §5.2.4),
       after trailing blanks are cut, so `.. ` counts as `..`.
    5. Trailing spaces, tabs and dots of a segment are dropped (Windows/IIS map `api.` and
       `api ` to `api`); a segment that is nothing but dots and blanks (`...`) is dropped.

    Args:
        path: the request path without the query (any string: never raises).
    Returns:
        A string that starts with "/", ends with "/" only when the decoded `path` did,
        and is a fixed point: `normalize_path(normalize_path(p)) == normalize_path(p)`.
    """
    decoded = path
    while "%" in decoded:
        again = unquote(decoded, errors="replace")
        if again == decoded:
            break
        decoded = again
    decoded = decoded.lower()
    out: list[str] = []
    for raw in decoded.split("/"):
        seg = raw.partition(";")[0].rstrip(" \t")
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        seg = seg.rstrip(" \t.")
        if seg:
            out.append(seg)
    tail = "/" if decoded.endswith("/") and out else ""
    return "/" + "/".join(out) + tail


def needs_normalizing(path: str) -> bool:
    """False for the common plain path (`/api/v1/flights`), which `normalize_path` leaves as is.

    The hot path asks this before paying for `normalize_path`: a few `in` scans, and for a path with
    letters `islower()` answers the case question without building a lower-cased copy.
    """
    return ("%" in path or "." in path or ";" in path or "//" in path or " " in path or "\t" in path
            or not (path.islower() or path == path.lower()))


def method_set(methods: list[str]) -> frozenset[str]:
    """The methods a rule covers (empty = all). GET implies HEAD (RFC 9110 §9.3.2), so a
    `methods = ["GET"]` key route cannot be skipped by asking HEAD, which apps answer with GET's
    handler."""
    out = {m.upper() for m in methods}
    if "GET" in out:
        out.add("HEAD")
    return frozenset(out)


def prefix_matches(prefix: str, path: str) -> bool:
    """Whole-segment prefix match on normalised paths: "/api" covers "/api" and "/api/x", not "/apix"."""
    if prefix in ("", "/"):
        return True
    base = prefix.rstrip("/")
    return path == base or path.startswith(base + "/")


@functools.lru_cache(maxsize=65536)
def client_bucket(ip: str) -> str:
    """The address a per-client limit counts by: IPv4 as is, IPv6 by its /64 network.

    One IPv6 subscriber usually gets a whole /64 (RFC 6177), so counting single IPv6 addresses
    would hand an attacker 2**64 fresh allowances.
    """
    if ":" not in ip:
        return ip
    try:
        addr = ipaddress.IPv6Address(ip.partition("%")[0])
    except ValueError:
        return ip
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))


class _Route:
    __slots__ = ("methods", "prefix", "scopes")

    def __init__(self, cfg: ApiKeyRoute) -> None:
        self.prefix = normalize_path(cfg.path_prefix)
        self.methods = method_set(cfg.methods)
        self.scopes = tuple(cfg.scopes)

    def matches(self, method: str, path: str) -> bool:
        return (not self.methods or method in self.methods) and prefix_matches(self.prefix, path)


class _Rule:
    __slots__ = ("key", "limit", "limit_header", "methods", "name", "policy_header", "prefix")

    def __init__(self, cfg: RateLimitRule) -> None:
        self.name = cfg.name
        self.key = cfg.key
        self.prefix = normalize_path(cfg.path_prefix)
        self.methods = method_set(cfg.methods)
        self.limit = Limit.from_rate(cfg.rate.count, cfg.rate.period_s, cfg.burst)
        self.limit_header = str(cfg.rate.count).encode()
        self.policy_header = f"{cfg.rate.count};w={cfg.rate.period_s:g};burst={cfg.burst}".encode()

    def matches(self, method: str, path: str) -> bool:
        return (not self.methods or method in self.methods) and prefix_matches(self.prefix, path)


def _presented_key(head: Head) -> str | None:
    """`Authorization: Bearer <key>` (RFC 6750) or `X-API-Key: <key>`."""
    auth = head.header(b"authorization")
    if auth is not None:
        scheme, _, value = auth.decode("latin-1").strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    alt = head.header(b"x-api-key")
    if alt is not None and alt.strip():
        return alt.decode("latin-1").strip()
    return None


_TEXT = [(b"Cache-Control", b"no-store")]
_BEARER = b'Bearer realm="taxiway"'


class EdgeGuard:
    """API keys and rate limits at the edge. Build with `from_config`; see the module docstring."""

    def __init__(self, ratelimit: RateLimitConfig, routes: list[ApiKeyRoute],
                 keyring: KeyRing | None, store: MemoryStore | RedisStore | None) -> None:
        self.rules = [_Rule(r) for r in ratelimit.rules]
        # Longest prefix first, so a narrower route can ask for other scopes than its parent.
        self.routes = sorted((_Route(r) for r in routes), key=lambda r: len(r.prefix), reverse=True)
        self.keyring = keyring
        self.store = store
        self.key_prefix = ratelimit.key_prefix
        self.fail_open = ratelimit.on_store_error == "open"
        self.is_async = isinstance(store, RedisStore)
        self.counters: Counter[str] = Counter()
        self._store_errors_unlogged = 0
        self._unlogged: Counter[str] = Counter()
        self._next_reject_log = 0.0
        self._next_store_log = 0.0

    @classmethod
    def from_config(cls, cfg: Config) -> EdgeGuard | None:
        """The guard for this config, or None when there are no rate-limit rules and no key routes.

        Raises ConfigError when the keys file exists but is unreadable or malformed.
        """
        rl, ak = cfg.ratelimit, cfg.apikeys
        if not rl.rules and not ak.routes:
            return None
        needs_keys = bool(ak.routes) or any(r.key == "api_key" for r in rl.rules)
        keyring = KeyRing(ak.file) if needs_keys else None
        store: MemoryStore | RedisStore | None = None
        if rl.rules:
            store = RedisStore(rl.redis_url) if rl.store == "redis" else MemoryStore()
        return cls(rl, ak.routes, keyring, store)

    # -- the hot path ---------------------------------------------------------------------------

    def check(self, head: Head) -> Rejection | Awaitable[Rejection | None] | None:
        """Called by the proxy for each request before it is forwarded."""
        path = head.path
        if needs_normalizing(path):
            path = normalize_path(path)
        method = head.method
        key_rec: ApiKey | None = None
        for route in self.routes:
            if route.matches(method, path):
                rej, key_rec = self._authorize(head, route)
                if rej is not None:
                    self._note(rej)
                    return rej
                break
        if not self.rules or self.store is None:
            return None
        rules = [r for r in self.rules if r.matches(method, path)]
        if not rules:
            return None
        keys = [self._bucket(r, head, key_rec) for r in rules]
        limits = [r.limit for r in rules]
        if self.is_async:
            return self._check_async(keys, limits, rules)
        denied, verdicts = self.store.check(keys, limits)  # type: ignore[misc]
        return self._note(self._decide(denied, verdicts, rules))

    def _authorize(self, head: Head, route: _Route) -> tuple[Rejection | None, ApiKey | None]:
        assert self.keyring is not None
        status, rec = self.keyring.authenticate(_presented_key(head))
        if status is KeyStatus.VALID and rec is not None:
            if rec.has_scopes(route.scopes):
                return None, rec
            missing = " ".join(s for s in route.scopes if s not in rec.scopes)
            self.counters["apikey_forbidden"] += 1
            hdr = _BEARER + b', error="insufficient_scope", scope="' + " ".join(route.scopes).encode() + b'"'
            return Rejection(403, [(b"WWW-Authenticate", hdr), *_TEXT],
                             f"API key lacks scope: {missing}\n".encode(),
                             f"apikey {rec.name!r} lacks scope {missing}"), None
        self.counters[f"apikey_{status.value}"] += 1
        if status is KeyStatus.MISSING:
            return Rejection(401, [(b"WWW-Authenticate", _BEARER), *_TEXT],
                             b"API key required: send Authorization: Bearer <key> or X-API-Key\n",
                             "apikey missing"), None
        who = f" {rec.name!r}" if rec is not None else ""
        desc = {KeyStatus.UNKNOWN: "invalid", KeyStatus.EXPIRED: "expired",
                KeyStatus.REVOKED: "revoked"}[status]
        hdr = _BEARER + b', error="invalid_token", error_description="' + desc.encode() + b' key"'
        return Rejection(401, [(b"WWW-Authenticate", hdr), *_TEXT], f"API key {desc}\n".encode(),
                         f"apikey{who} {desc}"), None

    def _bucket(self, rule: _Rule, head: Head, key_rec: ApiKey | None) -> str:
        if rule.key == "global":
            ident = "global"
        elif rule.key == "api_key":
            if key_rec is None and self.keyring is not None:
                status, rec = self.keyring.authenticate(_presented_key(head))
                key_rec = rec if status is KeyStatus.VALID else None
            # No valid key: count by address, so random keys cannot buy fresh allowances.
            ident = f"key:{key_rec.id}" if key_rec is not None else f"ip:{client_bucket(head.client_ip)}"
        else:
            ident = f"ip:{client_bucket(head.client_ip)}"
        return f"{self.key_prefix}{rule.name}:{ident}"

    async def _check_async(self, keys: list[str], limits: list[Limit],
                           rules: list[_Rule]) -> Rejection | None:
        assert isinstance(self.store, RedisStore)
        try:
            denied, verdicts = await self.store.check(keys, limits)
        except RateStoreError as exc:
            return self._note(self._store_failed(exc))
        return self._note(self._decide(denied, verdicts, rules))

    def _decide(self, denied: int, verdicts: list[Verdict], rules: list[_Rule]) -> Rejection | None:
        if denied < 0:
            return None
        rule, v = rules[denied], verdicts[denied]
        self.counters[f"ratelimit_{rule.name}"] += 1
        wait_s = max(1, ceil_seconds(v.retry_after))
        headers = [
            (b"Retry-After", str(wait_s).encode()),
            (b"RateLimit-Limit", rule.limit_header),
            (b"RateLimit-Remaining", b"0"),
            (b"RateLimit-Reset", str(wait_s).encode()),
            (b"RateLimit-Policy", rule.policy_header),
            *_TEXT,
        ]
        return Rejection(429, headers, b"too many requests: slow down and retry later\n",
                         f"ratelimit {rule.name}")

    def _store_failed(self, exc: RateStoreError) -> Rejection | None:
        """Apply ratelimit.on_store_error, and log it (at most once per interval, with a count)."""
        self.counters["ratelimit_store_error"] += 1
        self._store_errors_unlogged += 1
        now = time.monotonic()
        if now >= self._next_store_log:
            action = "allowing requests (on_store_error = open)" if self.fail_open \
                else "refusing requests with 503 (on_store_error = closed)"
            log.warning("%s; %s; %d request(s) affected since the last report",
                        exc, action, self._store_errors_unlogged)
            self._store_errors_unlogged = 0
            self._next_store_log = now + STORE_ERROR_LOG_EVERY_S
        if self.fail_open:
            return None
        return Rejection(503, [(b"Retry-After", b"1"), *_TEXT],
                         b"service unavailable: rate-limit store unreachable\n", "ratelimit store error")

    def _note(self, rej: Rejection | None) -> Rejection | None:
        """Log refusals by reason (key *names*, never keys): the first at once, then a summary at
        most every REJECT_LOG_EVERY_S, so a flood cannot flood the log too."""
        if rej is None:
            return None
        self._unlogged[rej.reason] += 1
        now = time.monotonic()
        if now >= self._next_reject_log:
            self._next_reject_log = now + REJECT_LOG_EVERY_S
            summary = ", ".join(f"{reason} x{n}" for reason, n in self._unlogged.most_common(8))
            log.info("refused at the edge: %s", summary)
            self._unlogged.clear()
        return rej

    def stats(self) -> dict[str, Any]:
        """Counters for the admin API: rejections by reason (names, never keys)."""
        return dict(self.counters)

    async def close(self) -> None:
        if self._unlogged:
            summary = ", ".join(f"{reason} x{n}" for reason, n in self._unlogged.most_common(8))
            log.info("refused at the edge: %s", summary)
            self._unlogged.clear()
        if self.store is not None:
            await self.store.close()
