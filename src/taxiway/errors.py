"""One error hierarchy, named for who or what failed.

Cores raise these domain errors only; drivers translate third-party errors into them in one place
and map each to a status code once. `sys.exit` appears only in `cli.py`.
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


class NoServerAvailable(TaxiwayError):
    """No server can take the request now (all down, ejected or draining). Maps to 503."""


class ClientProtocolError(TaxiwayError):
    """The client sent something we must refuse. `status_hint` is the status to answer with."""

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.status_hint = status_hint


class UpstreamError(TaxiwayError):
    """Talking to an upstream server failed."""


class UpstreamProtocolError(UpstreamError):
    """The upstream answered with something that is not valid HTTP/1.1. Maps to 502."""


class UpstreamNetworkError(UpstreamError):
    """Connection refused, reset or closed early. Maps to 502 (or a retry)."""


class UpstreamTimeout(UpstreamError):
    """An upstream timer fired. Maps to 504."""


class ConnectTimeout(UpstreamTimeout):
    """The TCP connect did not finish in time: safe to retry elsewhere, nothing was sent."""


class ReadTimeout(UpstreamTimeout):
    """The upstream took too long to answer."""


class WriteTimeout(UpstreamTimeout):
    """The upstream stopped reading the request body."""
