"""One error hierarchy, named for who or what failed.

Cores raise these domain errors only; drivers translate third-party errors into them in one place
and map each to a status code once. `sys.exit` appears only in `cli.py`, which prints any
TaxiwayError as one line. Every class here is raised somewhere (a test keeps it so).
"""

from __future__ import annotations


class TaxiwayError(Exception):
    """Base class: anything taxiway raises on purpose."""


class ConfigError(TaxiwayError):
    """The configuration is wrong. Rendered as one line naming the key and what was expected.

    The caller should print `str(err)` and exit non-zero; there is nothing to retry.
    """

    def __init__(self, key: str, expected: str, value: object = None, source: str | None = None) -> None:
        self.key = key
        self.expected = expected
        self.value = value
        self.source = source
        where = f"{source}: " if source else ""
        got = f" (got {value!r})" if value is not None else ""
        # "expected ..." reads the same for every rule; messages that already say it, or say what is
        # wrong some other way ("is not a known setting", "required (...)", "program 'x' not found"),
        # keep theirs.
        wording = expected if expected.startswith(("expected", "is ", "required", "program ")) \
            else f"expected {expected}"
        super().__init__(f"{where}{key}: {wording}{got}")


class UsageError(TaxiwayError):
    """A command was called wrongly (bad URL, missing file). One line, exit status 2."""


class RequestRefused(TaxiwayError):
    """The client's request head breaks a framing or hygiene rule: the proxy answers `status`
    (400, 405, 413, 414, 417, 431, 505) and closes the connection; `reason` goes to the log.

    Raised by `proxy/http1.py`'s rules and the connection protocol; mapped to the answer in one
    place (`ClientProtocol._refuse_head`)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class UpstreamFailed(TaxiwayError):
    """A server failed a request before its answer was whole. Each subclass is one way of
    failing, with the status a client gets when no retry can save the request and the reason the
    events and the log give (`Exchange._failed`, the one place both are read).

    Reported, not raised: an upstream connection learns of a failure in an event-loop callback,
    where nothing up the stack could catch an exception, so the class itself travels as a value
    (`Exchange.failure`), like a gRPC status code."""

    status = 502
    reason = "upstream failed"


class ConnectRefused(UpstreamFailed):
    """The server's port refused the connection (or the host could not be reached)."""

    reason = "connect refused"


class ConnectTimeout(UpstreamFailed):
    """No connection within `timeouts.connect`."""

    status = 504
    reason = "connect timeout"


class UpstreamClosed(UpstreamFailed):
    """The server closed the connection before answering, having read nothing of the request
    and sent nothing back."""

    reason = "closed"


class UpstreamReset(UpstreamFailed):
    """The connection broke after request bytes were sent or response bytes came, before the
    response head was whole."""

    reason = "reset"


class InvalidResponse(UpstreamFailed):
    """The server broke HTTP/1.1 or a bound (an oversized head, a status outside 100-599, an
    unasked 101, a transfer coding an HTTP/1.0 client cannot take)."""

    reason = "invalid response"


class ResponseTimeout(UpstreamFailed):
    """No response head within `timeouts.upstream_response` of the request's end."""

    status = 504
    reason = "response timeout"


class ReadTimeout(UpstreamFailed):
    """The response body did not move for `timeouts.upstream_read` (the response had started:
    the client sees a cut, not a status)."""

    status = 504
    reason = "read timeout"


class StoreError(TaxiwayError):
    """A shared store the balancer relies on (Redis, for rate limits) failed."""


class RespError(StoreError):
    """Redis could not be reached, timed out, or answered with an error reply (`.reply` is set).
    Raised by `security/resp.py`; `security/ratestore.py` turns it into a RateStoreError."""

    def __init__(self, message: str, reply: str | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class RateStoreError(StoreError):
    """The shared rate-limit store cannot answer. The edge guard applies `ratelimit.on_store_error`
    (serve, or answer 503) and logs it, at most every 10 s."""
