"""Login attempt limit per (username, client address), kept in the shared cache.

Why per username+address: a per-address limit alone locks out everyone behind one NAT, a
per-username limit alone lets an attacker lock any user out from anywhere. Failures are counted in
a fixed window of FLIGHTS_LOGIN_LIMIT attempts per 15 minutes; a success clears the count. The
cache is shared (database or Redis), so spreading guesses over several servers does not help.
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest


def client_address(request: HttpRequest) -> str:
    """The socket peer, or behind taxiway (FLIGHTS_TRUST_FORWARDED=1) the last X-Forwarded-For hop:
    the one the balancer appended. Earlier hops are client-supplied and could be forged."""
    if settings.TRUST_FORWARDED:
        hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
        if hops:
            return hops[-1]
    return request.META.get("REMOTE_ADDR", "")


def _key(username: str, address: str) -> str:
    # Hashed: usernames are user input of any length and characters; cache keys must be short/safe.
    digest = hashlib.sha256(f"{username.strip().lower()}\0{address}".encode()).hexdigest()[:32]
    return f"login-failures:{digest}"


def is_locked(username: str, address: str) -> bool:
    return int(cache.get(_key(username, address), 0)) >= settings.LOGIN_LIMIT


def record_failure(username: str, address: str) -> None:
    key = _key(username, address)
    if not cache.add(key, 1, settings.LOGIN_LIMIT_WINDOW_S):
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 1, settings.LOGIN_LIMIT_WINDOW_S)


def record_success(username: str, address: str) -> None:
    cache.delete(_key(username, address))
