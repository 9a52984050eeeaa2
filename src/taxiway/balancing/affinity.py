"""Session affinity: a signed sticky cookie naming the server, or a hash of the client address.

Rules of this module:
1. Pure: no I/O, no clock, no RNG creation. The secret comes from the config (`${ENV}` or `file:`),
   never from the repo.
2. A cookie is a claim by the client, so it is verified, never trusted: a value that is malformed,
   forged, signed with another key or names a server we do not have is treated as absent.

Theory of operation (docs/balancer.md, "Session affinity").
- `mode = "cookie"`: the first response carries `Set-Cookie: taxiway_srv=<b64(name)>.<b64(mac)>`
  where mac = HMAC-SHA256(secret, "taxiway-affinity/v1\\0" + name) truncated to 128 bits (RFC 2104
  allows truncation to >= half the output; 128 bits is what AES-CMAC and most session MACs use).
  Later requests go to the named server while it is a candidate (available, not draining). When it
  is not, the strategy picks another one and the proxy rewrites the cookie, so when the old server
  comes back its former clients stay where they are now: sessions are not yanked back.
  The signature stops a client from choosing a server by hand (e.g. to pile load onto one), it
  does not hide which server it was: names are not secrets.
- `mode = "ip"`: `ip_affinity` is a plain consistent hash of the client address (no bounded
  loads: a loaded server must not push its clients away, or their in-memory sessions break).
  Clients behind one NAT share a server; a server leaving moves only its own clients.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import random
from collections.abc import Container, Sequence

from taxiway.balancing.model import Server
from taxiway.balancing.strategies import ConsistentHash
from taxiway.errors import ConfigError

_DOMAIN = b"taxiway-affinity/v1\x00"
MAC_BYTES = 16


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64(data: bytes) -> bytes:
    """Strict base64url: any character outside the alphabet is an error, not silently skipped."""
    return base64.b64decode(data + b"=" * (-len(data) % 4), altchars=b"-_", validate=True)


class CookieAffinity:
    """Signs and verifies the sticky cookie.

    Args:
        secret: HMAC key; at least 16 bytes (config: `[affinity] secret = "${TAXIWAY_AFFINITY_SECRET}"`).
        cookie_name: the cookie to set and read (a token: letters, digits, `_`, `-`).
    Raises:
        ConfigError: a short secret or a cookie name that is not a plain token (the caller should
            print it and exit, like any config error).
    """

    def __init__(self, secret: bytes, cookie_name: str = "taxiway_srv") -> None:
        if len(secret) < 16:
            raise ConfigError("affinity.secret", "a signing key of at least 16 bytes")
        if not cookie_name or not all(c.isalnum() or c in "_-" for c in cookie_name) \
                or not cookie_name.isascii():
            raise ConfigError("affinity.cookie_name", "letters, digits, '_' or '-'", cookie_name)
        self._secret = secret
        self.cookie_name = cookie_name
        self._prefix = cookie_name.encode("ascii") + b"="

    def _mac(self, name: bytes) -> bytes:
        return hmac.new(self._secret, _DOMAIN + name, hashlib.sha256).digest()[:MAC_BYTES]

    def cookie_value(self, server_name: str) -> bytes:
        """The signed value: `<base64url(name)>.<base64url(mac)>` (cookie-safe characters only)."""
        name = server_name.encode("utf-8")
        return _b64(name) + b"." + _b64(self._mac(name))

    def verify(self, value: bytes) -> str | None:
        """The server name a cookie value carries, or None if malformed or not signed by us."""
        name_b64, dot, mac_b64 = value.partition(b".")
        if not dot or not name_b64 or not mac_b64:
            return None
        try:
            name = _unb64(name_b64)
            mac = _unb64(mac_b64)
            text = name.decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(mac, self._mac(name)):
            return None
        return text

    def server_from(self, cookie_header: bytes | None, known: Container[str] | None = None) -> str | None:
        """Parse a `Cookie` request header and return the verified server name, if any.

        Args:
            cookie_header: the raw header value (several headers joined with "; " by the caller).
            known: when given, a verified name not in it is also ignored (a removed server).
        Returns:
            the server name, or None when there is no cookie of ours, or it is malformed, forged,
            tampered or names an unknown server. The caller should then balance normally and set
            a fresh cookie; it should never answer with an error.
        """
        if not cookie_header:
            return None
        for part in cookie_header.split(b";"):
            part = part.strip()
            if not part.startswith(self._prefix):
                continue
            name = self.verify(part[len(self._prefix):].strip(b'"'))
            if name is not None and (known is None or name in known):
                return name
        return None

    def set_cookie_header(self, server_name: str, secure: bool) -> bytes:
        """The full `Set-Cookie` header value: a session cookie, HttpOnly, SameSite=Lax, Path=/.

        `Secure` is added on HTTPS, so the cookie never travels in clear text once set over TLS.
        """
        parts = [self._prefix + self.cookie_value(server_name), b"Path=/", b"HttpOnly", b"SameSite=Lax"]
        if secure:
            parts.append(b"Secure")
        return b"; ".join(parts)


def sticky_server(name: str | None, candidates: Sequence[Server]) -> Server | None:
    """The candidate the cookie names, or None when it is absent, down, draining or already tried.

    On None the caller picks with its strategy and, if the choice differs from `name`, rewrites the
    cookie (`set_cookie_header`) so the client sticks to its new server.
    """
    if name is None:
        return None
    for s in candidates:
        if s.name == name:
            return s
    return None


def record_sticky(previous: Server | None, chosen: Server) -> None:
    """Keep `Server.sticky_clients` (shown by /status and /metrics) as cookies issued minus moved.

    Called by the proxy each time it sets the cookie: `previous` is the server the client's valid
    cookie named (None for a new client or an invalid cookie), `chosen` the one the new cookie names.
    The balancer cannot see a client go away for good, so this counts cookies handed out and not yet
    superseded: enough to show that one server holds most sessions, not an exact head count.
    """
    if previous is chosen:
        return
    if previous is not None and previous.sticky_clients > 0:
        previous.sticky_clients -= 1
    chosen.sticky_clients += 1


def ip_affinity(rng: random.Random) -> ConsistentHash:
    """The strategy for `mode = "ip"`: consistent hash of the client address, no bounded loads."""
    return ConsistentHash(rng, key_kind="client_ip", balance_factor=None)
