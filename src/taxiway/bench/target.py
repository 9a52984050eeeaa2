"""The URL under test: parsed and checked once, so a typo is one clear line, not a traceback."""

from __future__ import annotations

import socket
import urllib.parse
from dataclasses import dataclass

from taxiway.errors import UsageError


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    path: str          # path plus query, what the request line carries

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host_header}"


def parse_target(url: str) -> Target:
    """`http://host[:port][/path][?query]` -> Target.

    Raises:
        UsageError: not an http(s) URL, or a bad port; the caller should print it and stop.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"bad URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"bad URL {url!r}: expected http://host[:port]/path or https://...")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise UsageError(f"bad URL {url!r}: spaces and control characters must be percent-encoded (%20)")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url, parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path)


def check_reachable(target: Target, timeout_s: float = 5.0) -> None:
    """One TCP connect before the run: an unreachable target is a usage error, not 100% errors.

    Raises:
        UsageError: refused, unresolvable or timed out.
    """
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout_s):
            return
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve {target.host!r} ({exc.strerror})") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(f"cannot connect to {target.host}:{target.port} ({reason})") from None
