"""The answer a balancer gives itself instead of forwarding a request.

Its own module, below both the edge guard that decides most of them (security/edge.py) and the
proxy that sends them (proxy/http1.py, forward.py), so neither has to import the other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rejection:
    """An HTTPS redirect, or what an edge guard decided: a status, header lines and a body.
    `reason` is for logs and counters, never a secret (a key's name, not the key)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    reason: str = ""
