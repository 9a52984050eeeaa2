"""Scenario files: what each virtual user sends. Parsing, validation and request bytes.

Rules of this file: pure. No sockets, no clock, no RNG (the driver passes a random.Random to
`pick`). Every request's bytes are built once here so the hot path only writes them.

A scenario is a small TOML file (format in docs/bench.md, "Scenario files"):

    base_url = "http://127.0.0.1:8000"    # optional; the URL on the command line wins
    think_time = "100ms"                   # or ["50ms", "300ms"] for a uniform range
    cookies = true                         # one cookie jar per virtual user (default true)

    [login]                                # optional: done once by every user before its requests
    page = "/accounts/login/"
    form = { username = "alice", password = "secret" }

    [[request]]
    path = "/"
    weight = 3

Any mistake is a UsageError naming the file and the key, so the command prints one line.
"""

from __future__ import annotations

import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from taxiway.bench.schedule import parse_duration
from taxiway.config import resolve_refs
from taxiway.errors import ConfigError, UsageError

DEFAULT_TOKEN_PATTERN = r'name="csrfmiddlewaretoken" value="([^"]+)"'  # Django's hidden form field
DEFAULT_TOKEN_FIELD = "csrfmiddlewaretoken"
USER_AGENT = b"taxiway-bench"
_Fail = Callable[..., UsageError]  # builds the one-line error for a key: fail(key, expected, value)
# No HEAD: a HEAD answer carries Content-Length without a body, and httptools' response parser
# cannot be told to skip it (it only skips bodies on upgrades), so the response would never end.
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class Request:
    """One request kind. `head` ends before the blank line so a Cookie line can be appended."""

    name: str
    method: str
    path: str
    weight: float
    head: bytes
    body: bytes

    def encode(self, cookie: bytes = b"") -> bytes:
        """The full request bytes, with `Cookie: <cookie>` when the user's jar is not empty."""
        if cookie:
            return b"".join((self.head, b"Cookie: ", cookie, b"\r\n\r\n", self.body))
        return b"".join((self.head, b"\r\n", self.body))


@dataclass(frozen=True)
class Login:
    """Fetch `page`, extract the CSRF token with `token_pattern`, POST `form` plus the token."""

    page: str
    post: str
    form: dict[str, str]
    token_pattern: str = DEFAULT_TOKEN_PATTERN
    token_field: str = DEFAULT_TOKEN_FIELD
    token_header: str = ""


@dataclass(frozen=True)
class Scenario:
    requests: tuple[Request, ...]
    base_url: str | None = None
    think_time_s: tuple[float, float] = (0.0, 0.0)
    cookies: bool = False
    login: Login | None = None
    cum_weights: tuple[float, ...] = field(default=())

    def has_think_time(self) -> bool:
        return self.think_time_s[1] > 0


def build_request(method: str, path: str, host: str, headers: dict[str, str] | None = None,
                  body: bytes = b"", name: str = "", weight: float = 1.0) -> Request:
    """Precompute the bytes of one request (HTTP/1.1, keep-alive, Content-Length when a body)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    given = {k.lower() for k in (headers or {})}
    if "user-agent" not in given:
        lines.append(f"User-Agent: {USER_AGENT.decode()}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
    return Request(name or f"{method} {path}", method, path, weight, head, body)


def single(method: str, path: str, host: str, headers: dict[str, str], body: bytes) -> Scenario:
    """The scenario for a plain `taxiway bench URL` run: one request, no cookies (like wrk)."""
    req = build_request(method, path, host, headers, body)
    return Scenario(requests=(req,), cum_weights=(1.0,))


def pick(scenario: Scenario, rng_value: float) -> Request:
    """The request for a uniform `rng_value` in [0, 1), by weight."""
    reqs = scenario.requests
    if len(reqs) == 1:
        return reqs[0]
    target = rng_value * scenario.cum_weights[-1]
    for req, cw in zip(reqs, scenario.cum_weights, strict=True):
        if target < cw:
            return req
    return reqs[-1]


def load_scenario(path: str | Path, host: str) -> Scenario:
    """Read and validate a scenario file. `host` is the Host header value for every request.

    Raises:
        UsageError: unreadable file, bad TOML or a bad key; the message names file and key.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"scenario {p}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"scenario {p}: not valid TOML ({exc})") from None
    return parse_scenario(data, host, source=str(p))


def base_url_of(path: str | Path) -> str | None:
    """The scenario's `base_url`, read before the target is known (None if absent or unreadable)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    value = data.get("base_url")
    return value if isinstance(value, str) else None


def parse_scenario(data: dict[str, object], host: str, source: str = "scenario") -> Scenario:
    def fail(key: str, expected: str, value: object = None) -> UsageError:
        got = f" (got {value!r})" if value is not None else ""
        return UsageError(f"scenario {source}: {key}: {expected}{got}")

    known = {"base_url", "think_time", "cookies", "login", "request"}
    for key in data:
        if key not in known:
            raise fail(key, f"unknown key; expected one of {', '.join(sorted(known))}")
    base_url = data.get("base_url")
    if base_url is not None and not isinstance(base_url, str):
        raise fail("base_url", "expected a URL string", base_url)
    think = _think_time(data.get("think_time", 0), fail)
    raw_login = data.get("login")
    login = _login(raw_login, fail, Path(source).parent) if raw_login is not None else None
    cookies = data.get("cookies", True)
    if not isinstance(cookies, bool):
        raise fail("cookies", "expected true or false", cookies)
    raw_reqs = data.get("request")
    if not isinstance(raw_reqs, list) or not raw_reqs:
        raise fail("request", "expected at least one [[request]] table")
    requests = tuple(_request(i, r, host, fail) for i, r in enumerate(raw_reqs))
    cum: list[float] = []
    total = 0.0
    for r in requests:
        total += r.weight
        cum.append(total)
    return Scenario(requests, base_url, think, cookies or login is not None, login, tuple(cum))


def _think_time(value: object, fail: _Fail) -> tuple[float, float]:
    try:
        if isinstance(value, list) and len(value) == 2:
            lo, hi = (parse_duration(str(v), "think_time") for v in value)
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            lo = hi = parse_duration(str(value), "think_time")
        else:
            raise fail("think_time", "expected a duration or [min, max]", value)
    except UsageError as exc:
        raise fail("think_time", "expected a duration like 100ms or [min, max]", value) from exc
    if lo > hi:
        raise fail("think_time", "min must not exceed max", value)
    return (lo, hi)


def _request(i: int, raw: object, host: str, fail: _Fail) -> Request:
    key = f"request[{i}]"
    if not isinstance(raw, dict):
        raise fail(key, "expected a table")
    allowed = {"name", "method", "path", "weight", "headers", "body", "form"}
    for k in raw:
        if k not in allowed:
            raise fail(f"{key}.{k}", f"unknown key; expected one of {', '.join(sorted(allowed))}")
    method = raw.get("method", "GET")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise fail(f"{key}.method", f"expected one of {', '.join(sorted(METHODS))}", method)
    method = method.upper()
    path = raw.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise fail(f"{key}.path", "expected a path starting with /", path)
    weight = raw.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
        raise fail(f"{key}.weight", "expected a number > 0", weight)
    headers = raw.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise fail(f"{key}.headers", "expected a table of strings", headers)
    body_value = raw.get("body", "")
    form = raw.get("form")
    if form is not None:
        if not isinstance(form, dict):
            raise fail(f"{key}.form", "expected a table of fields", form)
        body_value = urllib.parse.urlencode({k: str(v) for k, v in form.items()})
        headers = {"Content-Type": "application/x-www-form-urlencoded", **headers}
    if not isinstance(body_value, str):
        raise fail(f"{key}.body", "expected a string", body_value)
    name = raw.get("name", f"{method} {path}")
    if not isinstance(name, str):
        raise fail(f"{key}.name", "expected a string", name)
    return build_request(method, path, host, headers, body_value.encode(), name, float(weight))


def _login(raw: object, fail: _Fail, base: Path) -> Login:
    if not isinstance(raw, dict):
        raise fail("login", "expected a table")
    allowed = {"page", "post", "form", "token_pattern", "token_field", "token_header"}
    for k in raw:
        if k not in allowed:
            raise fail(f"login.{k}", f"unknown key; expected one of {', '.join(sorted(allowed))}")
    page = raw.get("page")
    if not isinstance(page, str) or not page.startswith("/"):
        raise fail("login.page", "expected a path starting with /", page)
    post = raw.get("post", page)
    if not isinstance(post, str) or not post.startswith("/"):
        raise fail("login.post", "expected a path starting with /", post)
    form = raw.get("form", {})
    if not isinstance(form, dict):
        raise fail("login.form", "expected a table of fields", form)
    pattern = raw.get("token_pattern", DEFAULT_TOKEN_PATTERN)
    try:
        compiled = re.compile(pattern)
    except (re.error, TypeError):
        raise fail("login.token_pattern", "expected a regular expression with one group", pattern) from None
    if compiled.groups != 1:
        raise fail("login.token_pattern", "expected exactly one capture group", pattern)
    field_name = raw.get("token_field", DEFAULT_TOKEN_FIELD)
    header = raw.get("token_header", "")
    if not isinstance(field_name, str) or not isinstance(header, str):
        raise fail("login.token_field", "expected strings for token_field and token_header")
    # `"${NAME}"` and `"file:PATH"` as in the config file (one resolver): a scenario that logs in
    # needs a password, and a password must not have to live in the file.
    try:
        fields = resolve_refs({k: str(v) for k, v in form.items()}, "login.form", dict(os.environ), base)
    except ConfigError as exc:
        raise fail(exc.key, f"expected {exc.expected}") from None
    return Login(page, post, fields, pattern, field_name, header)


def extract_token(pattern: str, body: bytes) -> str | None:
    """The first capture group of `pattern` in the page, or None if the page has no token."""
    m = re.search(pattern, body.decode("utf-8", errors="replace"))
    return m.group(1) if m else None


def login_form_body(login: Login, token: str) -> bytes:
    return urllib.parse.urlencode({**login.form, login.token_field: token}).encode()


def parse_set_cookie(value: bytes) -> tuple[str, str | None] | None:
    """`Set-Cookie` value -> (name, value), value None when the cookie is being deleted.

    Only name, value and deletion (Max-Age=0) matter: a benchmark talks to one host.
    """
    text = value.decode("latin-1")
    first, _, attrs = text.partition(";")
    name, eq, val = first.partition("=")
    name = name.strip()
    if not eq or not name:
        return None
    for attr in attrs.split(";"):
        k, _, v = attr.strip().partition("=")
        if k.lower() == "max-age" and v.strip().lstrip("-").isdigit() and int(v) <= 0:
            return (name, None)
    return (name, val.strip())


def cookie_header(jar: dict[str, str]) -> bytes:
    return "; ".join(f"{k}={v}" for k, v in jar.items()).encode("latin-1")
