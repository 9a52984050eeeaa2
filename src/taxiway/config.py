"""The one configuration schema: every command loads its TOML file through `load_config`.

Rules of this module:
1. Every section is a frozen msgspec Struct with `forbid_unknown_fields`, so a typo is an error
   naming the key path, not a silently ignored setting. `_translate` words msgspec's errors the
   way the file is written (a table, a list, a whole number, true or false), never msgspec's JSON
   terms, and names the key down to the missing field.
2. Durations are written like "2s", "150ms", "1m30s" (or a bare number of seconds) and become
   `float` seconds; sizes like "64k", "1m", "1g" become `int` bytes; rates like "100/m" become
   (count, period_s).
3. Values may be `${ENV_VAR}` or `file:/path` (secrets stay out of the file); a secret-looking key
   with a literal value produces a warning from `secret_warnings`. An unset variable is an error,
   except for `taxiway check` (`unset_env=`), which warns and checks the rest with a stand-in.
4. Range and cross-field rules (min <= max, files that must exist, unique names) live in
   `_check`, raising `ConfigError(key, expected, value)`: `taxiway check` refuses exactly what
   `lb` and `up` would refuse at start-up. What depends on the machine rather than the file (the
   [pool] programs on PATH) is checked by `taxiway.autoscale.command.check_programs`, which both
   `up` and `check` call.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import re
import shlex
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

import msgspec
import msgspec.inspect
import msgspec.structs

from taxiway.errors import ConfigError

log = logging.getLogger("taxiway.config")

# --------------------------------------------------------------------------------------------
# Value types with their own syntax


class Duration(float):
    """Seconds, written in the file as "2s", "150ms", "1m30s", "1h" or a number of seconds."""


class Size(int):
    """Bytes, written as 1024, "64k", "1m", "1g" (binary multiples)."""


class Rate:
    """`count` events per `period_s` seconds, written as "100/m", "10/s", "5000/h", "20/10s"."""

    __slots__ = ("count", "period_s")

    def __init__(self, count: int, period_s: float) -> None:
        self.count = count
        self.period_s = period_s

    def __repr__(self) -> str:
        return f"Rate({self.count}/{self.period_s:g}s)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rate) and (self.count, self.period_s) == (other.count, other.period_s)

    def __hash__(self) -> int:
        return hash((self.count, self.period_s))

    @property
    def per_second(self) -> float:
        return self.count / self.period_s


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|s|m|h|d)")
_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^(\d+)\s*([kmg]?)i?b?$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_duration(text: str | float | int) -> float:
    """Parse "2s", "150ms", "1m30s" into seconds. Raises ValueError with the expected form."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):   # a table, a list, a date
        raise ValueError(f"expected a duration like '2s' or '150ms', got {_show_value(text)}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"expected a non-negative duration, got {text!r}")
        return float(text)
    s = text.strip().lower()
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS_S[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"expected a duration like '2s', '150ms' or '1m30s', got {text!r}")
    return total


def parse_size(text: str | int) -> int:
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise ValueError(f"expected a size like 65536, '64k' or '1m', got {_show_value(text)}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"expected a non-negative size, got {text!r}")
        return text
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"expected a size like 65536, '64k' or '1m', got {text!r}")
    return int(m.group(1)) * _SIZE_MULT[m.group(2).lower()]


_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
            "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}


def parse_rate(text: str) -> Rate:
    if not isinstance(text, str) or "/" not in text:
        raise ValueError(f"expected a rate like '100/m' or '10/s', got {_show_value(text)}")
    count_s, period_s = (p.strip() for p in text.split("/", 1))
    if not count_s.isdigit() or int(count_s) <= 0:
        raise ValueError(f"expected a positive count before '/', got {text!r}")
    if period_s.lower() in _PERIODS:
        period = _PERIODS[period_s.lower()]
    else:
        try:
            period = parse_duration(period_s)
        except ValueError:
            raise ValueError(f"expected a period like s, m, h or 10s after '/', got {text!r}") from None
    if period <= 0:
        raise ValueError(f"expected a positive period, got {text!r}")
    return Rate(int(count_s), period)


def _show_value(value: object) -> str:
    """A value as the TOML file spells it, for "got ..." in messages: true (not True), 'text',
    and "a table" / "a list" rather than a dump of the whole thing."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str | int | float):
        return repr(value)
    return str(value)   # dates and times: TOML's own spelling


def _dec_hook(tp: type, obj: Any) -> Any:
    if tp is Duration:
        return Duration(parse_duration(obj))
    if tp is Size:
        return Size(parse_size(obj))
    if tp is Rate:
        return parse_rate(obj)
    raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Sections


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class TLSConfig(_Section, frozen=True):
    cert: str
    key: str
    min_version: Literal["1.2", "1.3"] = "1.2"
    # HSTS header on HTTPS answers; 0 disables it. One year is what hstspreload.org asks for.
    hsts_max_age: Duration = Duration(31536000)


class ListenConfig(_Section, frozen=True):
    http: str | None = "127.0.0.1:8080"
    https: str | None = None
    tls: TLSConfig | None = None
    # With https set: answer plain-HTTP requests with a 308 to the HTTPS address.
    redirect_to_https: bool = False


def redact_url(url: str) -> str:
    """`url` fit for a log line: a password in the userinfo (or a `password=` query parameter, the
    redis-py form) becomes `***`, the rest is kept.

    `redis://:secret@host:6379/0` -> `redis://:***@host:6379/0`, `redis://app:secret@host/0` ->
    `redis://app:***@host/0`: the username helps find the account; the password must never reach a
    log, an error message or /status. A URL that does not parse is shown as `<unparsable URL>`
    rather than risk printing a password inside it.
    """
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return "<unparsable URL>"
    netloc, query = parts.netloc, parts.query
    if has_password:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    if "password=" in query.lower():
        query = urlencode([(k, "***" if k.lower() == "password" else v)
                           for k, v in parse_qsl(query, keep_blank_values=True)], safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # Rebuilt by hand: urlunsplit would turn "unix:///x" into "unix:/x".
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "") \
        + (f"#{parts.fragment}" if parts.fragment else "")


class AdminConfig(_Section, frozen=True):
    # /status and /metrics; loopback by default (it names every server). "" turns it off
    # (TOML has no null).
    listen: str | None = "127.0.0.1:9901"
    # Host names the admin API answers to besides IP literals and localhost (DNS rebinding:
    # any other name gets 421), e.g. the name Prometheus scrapes it by.
    allowed_hosts: list[str] = msgspec.field(default_factory=list)


class BalancerConfig(_Section, frozen=True):
    strategy: Literal[
        "random", "round-robin", "weighted-round-robin", "least-connections",
        "power-of-two", "peak-ewma", "consistent-hash",
    ] = "least-connections"
    retries: int = 2
    # Retries may add at most this share of requests on top of the original ones (Envoy/Finagle).
    retry_budget: float = 0.2
    # consistent-hash: "client_ip", "path", "header:NAME" or "cookie:NAME".
    hash_key: str = "client_ip"
    # Bounded loads (Mirrokni et al.): no server takes more than balance_factor x the mean load.
    balance_factor: float = 1.25
    # A server that joins or recovers ramps its share up over this time (0 = at once).
    slow_start: Duration = Duration(0)
    # Add this response header naming the server that answered ("" = off).
    served_by_header: str = ""
    # SO_REUSEPORT worker processes; each runs its own balancer state.
    workers: int = 1
    seed: int | None = None


class HealthConfig(_Section, frozen=True):
    path: str = "/healthz"
    interval: Duration = Duration(2)
    # 2 s, as HAProxy (whose check timeout is `inter` unless set): a saturated 2-worker gunicorn
    # answered /healthz in up to 0.82 s (BENCHMARKS.md, "Health checks under load"), too close to 1 s.
    timeout: Duration = Duration(2)
    rise: int = 2
    fall: int = 3
    expected_status: list[int] = msgspec.field(default_factory=lambda: [200])
    enabled: bool = True


class OutlierConfig(_Section, frozen=True):
    # Envoy's outlier detection defaults: 5 consecutive errors, 30 s base ejection, 10 % cap
    # (we allow 50 % by default: small pools would otherwise never eject anything).
    consecutive_failures: int = 5
    base_ejection: Duration = Duration(30)
    max_ejection: Duration = Duration(300)
    max_ejected_percent: int = 50
    enabled: bool = True


class TimeoutsConfig(_Section, frozen=True):
    connect: Duration = Duration(2)
    client_header: Duration = Duration(10)  # whole request head; data does not extend it (slowloris)
    client_body: Duration = Duration(30)    # max gap between body reads from the client
    client_idle: Duration = Duration(60)    # keep-alive idle between requests
    upstream_response: Duration = Duration(60)  # first response byte after the request was sent
    upstream_read: Duration = Duration(60)  # longest a started response body may stall (nginx: 60s)
    upstream_idle: Duration = Duration(30)  # pooled upstream connection unused this long is closed
    shutdown: Duration = Duration(30)       # SIGTERM: in-flight requests get this long to finish
    queue: Duration = Duration(5)           # a request waits this long for a server slot, then 503


class LimitsConfig(_Section, frozen=True):
    max_header_bytes: Size = Size(32 * 1024)   # nginx large_client_header_buffers-ish
    max_response_header_bytes: Size = Size(64 * 1024)   # an app's response head; more is a 502
    max_headers: int = 100                     # like h11/Apache's LimitRequestFields
    max_body_bytes: Size = Size(0)             # 0 = unlimited (stream); nginx default is 1m
    max_connections_per_client: int = 0        # 0 = unlimited
    max_connections: int = 10000
    upstream_pool_size: int = 64               # idle keep-alive connections kept per server
    # Requests (so connections) in flight per server at most; a full server takes no new request
    # (nginx's max_conns, HAProxy's maxconn). 0 = no cap.
    upstream_max_connections: int = 0
    # When every server is full, or none is in rotation but one is coming (starting, down for
    # now), up to this many requests wait (first in, first out) for it, each at most
    # timeouts.queue (HAProxy's queue, Knative's activator); more, or a longer wait, get 503.
    # 0 = no queue: 503 at once.
    upstream_queue: int = 1024


class HeadersConfig(_Section, frozen=True):
    # Only these peers' X-Forwarded-*/Forwarded headers are believed; others are overwritten.
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    request_id: str = "X-Request-Id"
    via: bool = True
    # Added to responses when the app did not set them; "" removes a default.
    security: dict[str, str] = msgspec.field(default_factory=lambda: {
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "strict-origin-when-cross-origin",
        "X-Frame-Options": "SAMEORIGIN",
    })


class ServerConfig(_Section, frozen=True):
    url: str
    weight: int = 1
    name: str | None = None


class PoolConfig(_Section, frozen=True):
    command: str
    # Commands run once, in order (in cwd, with env), before the first server starts: migrations,
    # seed data. Like Kubernetes init containers: a non-zero exit stops `taxiway up` before
    # anything listens.
    setup: list[str] = msgspec.field(default_factory=list)
    setup_timeout: Duration = Duration(600)
    cwd: str | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)
    min: int = 1
    max: int = 4
    ready_path: str = "/healthz"
    ready_timeout: Duration = Duration(30)
    stop_grace: Duration = Duration(10)     # SIGTERM -> SIGKILL
    drain_timeout: Duration = Duration(30)  # leave rotation -> in-flight done
    host: str = "127.0.0.1"
    # Rolling deploys (a reload that changes command, env or cwd), as a Kubernetes Deployment's
    # RollingUpdate: at most desired + max_surge servers live, at least desired - max_unavailable
    # ready, while the new version replaces the old one server by server.
    max_surge: int = 1
    max_unavailable: int = 0


class AutoscaleConfig(_Section, frozen=True):
    metric: Literal["inflight", "rps", "p95"] = "inflight"
    target: float = 10
    tolerance: float = 0.1                       # Kubernetes HPA's default band
    period: Duration = Duration(1)
    scale_up_window: Duration = Duration(0)
    scale_down_window: Duration = Duration(120)
    max_scale_up: int = 4                        # servers added per period at most
    max_scale_down: int = 1
    # With pool.min = 0: the last server is stopped after the pool was idle this long (Knative's
    # scale-to-zero grace period); the next request starts one and waits for it.
    scale_to_zero_after: Duration = Duration(30)
    panic_window: Duration = Duration(6)         # Knative: 10 % of the 60 s stable window
    panic_threshold: float = 2.0                 # desired >= 2x current: scale up at once
    enabled: bool = True


class AffinityConfig(_Section, frozen=True):
    mode: Literal["none", "cookie", "ip"] = "none"
    cookie_name: str = "taxiway_srv"
    # HMAC key for the sticky cookie. Put "${TAXIWAY_AFFINITY_SECRET}" here, never a literal.
    secret: str | None = None


class RateLimitRule(_Section, frozen=True):
    name: str
    rate: Rate
    burst: int = 0                     # extra requests allowed at once on top of the rate
    key: Literal["ip", "api_key", "global"] = "ip"
    path_prefix: str = "/"
    methods: list[str] = msgspec.field(default_factory=list)  # empty = all


class RateLimitConfig(_Section, frozen=True):
    store: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "taxiway:rl:"
    on_store_error: Literal["open", "closed"] = "open"
    rules: list[RateLimitRule] = msgspec.field(default_factory=list)


class ApiKeyRoute(_Section, frozen=True):
    path_prefix: str
    methods: list[str] = msgspec.field(default_factory=list)
    scopes: list[str] = msgspec.field(default_factory=list)


class ApiKeysConfig(_Section, frozen=True):
    file: str = ".taxiway/keys.json"
    routes: list[ApiKeyRoute] = msgspec.field(default_factory=list)


class AccessLogConfig(_Section, frozen=True):
    enabled: bool = True
    path: str = "-"   # "-" = stderr


class Config(_Section, frozen=True):
    listen: ListenConfig = msgspec.field(default_factory=ListenConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    balancer: BalancerConfig = msgspec.field(default_factory=BalancerConfig)
    health: HealthConfig = msgspec.field(default_factory=HealthConfig)
    outlier: OutlierConfig = msgspec.field(default_factory=OutlierConfig)
    timeouts: TimeoutsConfig = msgspec.field(default_factory=TimeoutsConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    headers: HeadersConfig = msgspec.field(default_factory=HeadersConfig)
    servers: list[ServerConfig] = msgspec.field(default_factory=list)
    pool: PoolConfig | None = None
    autoscale: AutoscaleConfig = msgspec.field(default_factory=AutoscaleConfig)
    affinity: AffinityConfig = msgspec.field(default_factory=AffinityConfig)
    ratelimit: RateLimitConfig = msgspec.field(default_factory=RateLimitConfig)
    apikeys: ApiKeysConfig = msgspec.field(default_factory=ApiKeysConfig)
    access_log: AccessLogConfig = msgspec.field(default_factory=AccessLogConfig)


# --------------------------------------------------------------------------------------------
# Loading

_TOKEN = re.compile(r"^[A-Za-z0-9-]+$")
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]+@", re.IGNORECASE)
_SECRET_KEYS = ("secret", "password", "token", "api_key", "private")


_INDEX = re.compile(r"\[\d+\]")


def schema_key(key: str) -> str:
    """A key as the schema names it: list indexes as `[]` (`servers[2].url` -> `servers[].url`)."""
    return _INDEX.sub("[]", key)


# A stand-in for an unset `${VAR}` under `taxiway check` that no rule refuses: letters and '-' only
# (header names, cookie names) and 32 bytes (affinity.secret wants 16).
_UNSET_STAND_IN = "unset-variable-placeholder-value"
# Required strings with a syntax of their own get an example as the stand-in instead ({n}: each
# one differs, as servers must).
_UNSET_EXAMPLES = {"servers[].url": "http://127.0.0.1:{n}"}


def resolve_refs(node: Any, path: str, env: dict[str, str], base: Path,
                  unset: list[tuple[str, str]] | None = None) -> Any:
    """Replace `${VAR}` and `file:/path` string values, so secrets live outside the file.

    An unset variable fails, naming the key, unless `unset` is a list: then `(key, VAR)` is appended
    and a stand-in value takes its place. That is for `taxiway check`, which often runs where the
    production secrets are not (a laptop, CI) and should still check the rest of the file; `lb`
    and `up` pass no list, so they refuse to start without the value.
    """
    if isinstance(node, dict):
        return {k: resolve_refs(v, f"{path}.{k}" if path else k, env, base, unset) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_refs(v, f"{path}[{i}]", env, base, unset) for i, v in enumerate(node)]
    if isinstance(node, str):
        m = _ENV_REF.match(node)
        if m:
            var = m.group(1)
            if var in env:
                return env[var]
            if unset is None:
                raise ConfigError(path, f"the environment variable {var} to be set (the value "
                                  f"is {node})")
            unset.append((path, var))
            return _stand_in(path, len(unset))
        if node.startswith("file:"):
            p = Path(node[5:])
            p = p if p.is_absolute() else base / p
            try:
                return p.read_text().strip()
            except OSError as exc:
                raise ConfigError(path, f"a readable file ({exc.strerror})", str(p)) from None
    return node


def _stand_in(key: str, n: int) -> Any:
    """The value checked in place of an unset `${VAR}` at `key`: the setting's own default when it
    has one (the default redis_url is a valid redis:// URL, a default duration parses), else an
    example or `_UNSET_STAND_IN`. A rule that still refuses it is reported as the unset variable
    (see `parse_config`), never as a complaint about a value the user did not write."""
    field, _ = _schema_at(key)
    default = getattr(field, "default", msgspec.NODEFAULT)
    if isinstance(default, str | Duration | Size) and default != "":
        return default
    return _UNSET_EXAMPLES.get(schema_key(key), _UNSET_STAND_IN).format(n=n)


def secret_warnings(raw: dict[str, Any], path: str = "") -> list[str]:
    """Keys that look like secrets but hold a literal value instead of ${VAR} or file:."""
    out: list[str] = []
    for k, v in raw.items():
        key = f"{path}.{k}" if path else k
        if isinstance(v, dict):
            out += secret_warnings(v, key)
        elif isinstance(v, str) and not (_ENV_REF.match(v) or v.startswith("file:")):
            if any(s in k.lower() for s in _SECRET_KEYS):
                out.append(f"{key} holds a secret in plain text; use \"${{ENV_VAR}}\" or \"file:/path\"")
            elif _URL_PASSWORD.search(v):
                out.append(f"{key} holds a URL with a password in plain text; use \"${{ENV_VAR}}\"")
    return out


_MISSING = object()
_KEY_PART = re.compile(r"[^.\[\]]+|\[[^\]]*\]")


def _lookup(raw: Any, key: str) -> Any:
    """The node the file gave at `key` ("a.b[2].c"), or `_MISSING`: error messages quote it."""
    node = raw
    for part in _KEY_PART.findall(key):
        if part.startswith("["):
            if not (isinstance(node, list) and part[1:-1].isdigit() and int(part[1:-1]) < len(node)):
                return _MISSING
            node = node[int(part[1:-1])]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return _MISSING
    return node


def _unwrap(t: Any) -> Any:
    """`X | None` -> X: TOML has no null, so "or nothing" never helps the reader."""
    if isinstance(t, msgspec.inspect.UnionType):
        kept = [x for x in t.types if not isinstance(x, msgspec.inspect.NoneType)]
        if len(kept) == 1:
            return kept[0]
    return t


def _schema_at(key: str) -> tuple[Any, Any]:
    """(field, type) of the setting at `key` ("pool.env.X", "servers[0].url"), found by walking the
    schema; the field is None for a list item or table entry, both are None off the schema."""
    info: Any = msgspec.inspect.type_info(Config)
    field = None
    for part in _KEY_PART.findall(key):
        info = _unwrap(info)
        if isinstance(info, msgspec.inspect.StructType) and not part.startswith("["):
            field = next((f for f in info.fields if f.name == part), None)
            if field is None:
                return None, None
            info = field.type
        elif isinstance(info, msgspec.inspect.ListType) and part.startswith("["):
            field, info = None, info.item_type
        elif isinstance(info, msgspec.inspect.DictType):
            field, info = None, info.value_type
        else:
            return None, None
    return field, info


_CUSTOM_WORDS = {Duration: "a duration like '2s' or '150ms'", Size: "a size like 65536, '64k' or '1m'",
                 Rate: "a rate like '100/m' or '10/s'"}
_PLURAL = {"str": "strings", "int": "whole numbers", "float": "numbers", "bool": "true/false values"}


def _plain(t: Any, key: str) -> str:
    """A schema type in plain words, the way the TOML file writes it: "a whole number", "a list of
    strings", "a table ([health] section)"."""
    t = _unwrap(t)
    section = re.sub(r"\[\d+\]$", "", key)
    section = schema_key(section)
    mi = msgspec.inspect
    if isinstance(t, mi.StrType):
        return "a string"
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.IntType):
        return "a whole number"
    if isinstance(t, mi.FloatType):
        return "a number"
    if isinstance(t, mi.LiteralType):
        return "one of " + " | ".join(str(v) for v in t.values)
    if isinstance(t, mi.CustomType):
        return _CUSTOM_WORDS.get(t.cls, "a value")
    if isinstance(t, mi.StructType):
        return f"a table ([[{section}]] entry)" if key.endswith("]") else f"a table ([{section}] section)"
    if isinstance(t, mi.ListType):
        item = _unwrap(t.item_type)
        if isinstance(item, mi.StructType):
            return f"a list of tables ([[{section}]] entries)"
        return "a list of " + _PLURAL.get(type(item).__name__.removesuffix("Type").lower(), "values")
    if isinstance(t, mi.DictType):
        return f"a table of strings ([{section}] with NAME = \"value\" lines)"
    if isinstance(t, mi.UnionType):
        return " or ".join(_plain(x, key) for x in t.types if not isinstance(x, mi.NoneType))
    return "a value"


# msgspec names JSON types; used only when the key is off the schema (it never should be).
_JSON_WORDS = {"int": "a whole number", "float": "a number", "str": "a string", "bool": "true or false",
               "array": "a list", "object": "a table", "datetime": "a date-time", "date": "a date",
               "time": "a time"}

# What a required setting holds, said with an example (a type alone does not tell a new user).
_REQUIRED = {
    "servers[].url": "a URL like 'http://127.0.0.1:8001'",
    "pool.command": "a command line with {port}, like '{python} -m gunicorn app.wsgi -b {host}:{port}'",
    "listen.tls.cert": "the path of a PEM certificate file; `taxiway cert dev` makes one",
    "listen.tls.key": "the path of the certificate's PEM private key file",
    "ratelimit.rules[].name": "a name for the rule, like 'login'",
    "ratelimit.rules[].rate": "a rate like '100/m' or '10/s'",
    "apikeys.routes[].path_prefix": "a path like '/api/'",
}


def _all_keys(info: Any = None, prefix: str = "") -> list[str]:
    """Every setting's key in schema order, lists written `servers[].url`."""
    info = msgspec.inspect.type_info(Config) if info is None else info
    out = []
    for f in info.fields:
        t = _unwrap(f.type)
        item = _unwrap(t.item_type) if isinstance(t, msgspec.inspect.ListType) else None
        if isinstance(item, msgspec.inspect.StructType):
            out += _all_keys(item, f"{prefix}{f.name}[].")
        elif isinstance(t, msgspec.inspect.StructType):
            out += _all_keys(t, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _suggest(section: str, name: str) -> str:
    """"did you mean ...? " for an unknown setting: a close spelling in the same table, or the same
    name in another table (a setting put under the wrong [section])."""
    _, t = _schema_at(section) if section else (None, msgspec.inspect.type_info(Config))
    t = _unwrap(t)
    if isinstance(t, msgspec.inspect.ListType):
        t = _unwrap(t.item_type)
    if isinstance(t, msgspec.inspect.StructType):
        close = difflib.get_close_matches(name, [f.name for f in t.fields], n=1, cutoff=0.6)
        if close:
            return f"did you mean {f'{section}.' if section else ''}{close[0]}? "
    elsewhere = [k for k in _all_keys() if k.rpartition(".")[2] == name]
    if elsewhere:
        return f"it belongs in [{elsewhere[0].rpartition('.')[0]}]; "
    return "check the spelling; "


def _dict_entry(raw: Any, key: str) -> str:
    """msgspec says `pool.env[...]` for a table entry; name the entry whose value is not a string."""
    prefix, _, rest = key.partition("[...]")
    node = _lookup(raw, prefix)
    if isinstance(node, dict):
        bad = next((k for k, v in node.items() if not isinstance(v, str)), None)
        if bad is not None:
            return f"{prefix}.{bad}{rest}"
    return prefix


def _translate(err: msgspec.ValidationError, source: str | None, raw: Any = None) -> ConfigError:
    """msgspec's message in taxiway's words, naming the key.

    msgspec speaks JSON ("Expected `object`, got `str`", "Object missing required field `url`");
    the reader wrote TOML and may not know either. Every path ends in one of: not a known setting
    (with a suggestion), required (with an example), one of the allowed values, or "expected <plain
    words>, got <the value as written>". Messages from our own parsers (durations, sizes, rates)
    already read that way and pass through.
    """
    msg = str(err)
    key = ""
    m = re.search(r" - at `\$\.?(.*)`$", msg)
    if m:
        key, msg = m.group(1), msg[: m.start()]
    if "[...]" in key:
        key = _dict_entry(raw, key)
    where = key or "(top level)"

    def below(name: str) -> str:
        return f"{key}.{name}" if key else name

    if msg.startswith("Object contains unknown field"):
        name = msg.split("`")[1]
        return ConfigError(below(name), f"is not a known setting ({_suggest(key, name)}"
                           "see docs/configuration.md)", source=source)
    if msg.startswith("Object missing required field"):
        name = below(msg.split("`")[1])
        _, t = _schema_at(name)
        what = _REQUIRED.get(schema_key(name)) or _plain(t, name)
        return ConfigError(name, f"required (expected {what})", source=source)
    value = _lookup(raw, key)
    got = "" if value is _MISSING else f", got {_show_value(value)}"
    _, t = _schema_at(key)
    if msg.startswith(("Expected", "Invalid enum value")):
        if t is not None:
            expected = _plain(t, key)
        else:
            types = re.match(r"\w+ `([^`]*)`", msg)
            names = types.group(1).split(" | ") if types else []
            words = [_JSON_WORDS.get(x, x) for x in names if x != "null"]
            expected = " or ".join(words) or "another value"
        if not got and (g := re.search(r"got `(\w+)`", msg)):
            got = f", got {_JSON_WORDS.get(g.group(1), g.group(1))}"
        return ConfigError(where, f"expected {expected}{got}", source=source)
    return ConfigError(where, msg.replace("`", ""), source=source)


def _behind(key: str, unset: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The unset `${VAR}` (key, VAR) that a refusal of `key` is about, if any: the setting itself
    or one inside it (a `${VAR}` is always one string, never a table)."""
    for k, var in unset:
        if k == key or k.startswith((f"{key}.", f"{key}[")):
            return k, var
    return None


def parse_config(raw: dict[str, Any], source: str | None = None,
                 env: dict[str, str] | None = None, base: Path | None = None, *,
                 unset_env: list[tuple[str, str]] | None = None) -> Config:
    """Validate a decoded TOML document. Raises ConfigError (one line) on any problem.

    `unset_env`: a list to collect `(key, VAR)` for each `${VAR}` whose variable is unset instead
    of refusing (see `_resolve_refs`); only `taxiway check` passes one. If a rule then refuses the
    stand-in value, the error names the unset variable: that value cannot be checked without it.
    """
    env = dict(os.environ) if env is None else env
    base = base or Path.cwd()
    try:
        resolved = resolve_refs(raw, "", env, base, unset_env)
        try:
            cfg = msgspec.convert(resolved, Config, dec_hook=_dec_hook)
        except msgspec.ValidationError as err:
            raise _translate(err, source, resolved) from None
        cfg = _anchor_paths(cfg, base)
        _check(cfg, source, base)
    except ConfigError as err:
        blocked = _behind(err.key, unset_env or [])
        if blocked is not None:
            raise ConfigError(blocked[0], f"the environment variable {blocked[1]} to be set: this setting "
                              "cannot be checked without its value", source=source) from None
        if err.source is None and source is not None:   # raised by a helper that knows no file
            raise ConfigError(err.key, err.expected, err.value, source=source) from None
        raise
    return cfg


def load_config(path: str | os.PathLike[str], env: dict[str, str] | None = None, *,
                unset_env: list[tuple[str, str]] | None = None) -> Config:
    """Read and validate one TOML file. Raises ConfigError naming the file and key.

    `unset_env`: see `parse_config` (`taxiway check` warns about unset variables and goes on).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError("--config", "an existing file", str(p)) from None
    except OSError as exc:
        raise ConfigError("--config", f"a readable file ({exc.strerror})", str(p)) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(syntax)", f"valid TOML: {exc}", source=str(p)) from None
    cfg = parse_config(raw, source=str(p), env=env, base=p.parent, unset_env=unset_env)
    # Every command that loads the file warns, not only `taxiway check`: a secret committed with a
    # config file is the leak the notes warn about.
    for warning in secret_warnings(raw):
        log.warning("taxiway: warning: %s: %s", p, warning)
    return cfg


def address_family(host: str) -> socket.AddressFamily:
    """The socket family for a host as `split_hostport` returns it (IPv6 literals carry a ':')."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def split_hostport(value: str, key: str, default_port: int | None = None) -> tuple[str, int]:
    """"127.0.0.1:8080" / "[::1]:80" / ":8080" -> (host, port); ConfigError names `key`."""
    host, sep, port_s = value.rpartition(":")
    if not sep:
        if default_port is None:
            raise ConfigError(key, "an address like 127.0.0.1:8080", value)
        host, port_s = value, str(default_port)
    host = host.strip("[]") or "0.0.0.0"
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ConfigError(key, "a port number between 0 and 65535", value)
    return host, int(port_s)


def parse_server_url(url: str, key: str) -> tuple[str, int]:
    """"http://host:port" -> (host, port). Only plain HTTP upstreams are supported."""
    if not url.startswith("http://"):
        raise ConfigError(key, "an http:// URL like http://127.0.0.1:9001", url)
    rest = url[len("http://"):].rstrip("/")
    if not rest or "/" in rest:
        raise ConfigError(key, "an http:// URL with host and port and no path", url)
    return split_hostport(rest, key, default_port=80)


def _anchor_paths(cfg: Config, base: Path) -> Config:
    """Relative file paths in the file mean "next to this config file", whatever the cwd."""
    replace = msgspec.structs.replace
    if cfg.listen.tls is not None:
        tls = cfg.listen.tls
        tls = replace(tls, cert=str(base / tls.cert), key=str(base / tls.key))
        cfg = replace(cfg, listen=replace(cfg.listen, tls=tls))
    if cfg.access_log.path != "-":
        cfg = replace(cfg, access_log=replace(cfg.access_log, path=str(base / cfg.access_log.path)))
    return cfg


def _check(cfg: Config, source: str | None, base: Path) -> None:
    """Cross-field and range rules. Every command loads through here, so `taxiway check` refuses
    exactly what `lb` and `up` would refuse at start-up."""

    def fail(key: str, expected: str, value: object = None) -> None:
        raise ConfigError(key, expected, value, source=source)

    def positive(key: str, value: float) -> None:
        if value <= 0:
            fail(key, "a positive duration", value)

    # 1. Listeners and TLS files.
    if cfg.listen.http is None and cfg.listen.https is None:
        fail("listen", "at least one of http or https")
    for name in ("http", "https"):
        addr = getattr(cfg.listen, name)
        if addr is not None:
            split_hostport(addr, f"listen.{name}")
    if cfg.listen.https is not None and cfg.listen.tls is None:
        fail("listen.tls", "a [listen.tls] table with cert and key when listen.https is set")
    if cfg.listen.https is None and cfg.listen.redirect_to_https:
        fail("listen.redirect_to_https", "listen.https to be set (where would it redirect?)", True)
    if cfg.listen.tls is not None:
        if cfg.listen.https is None:
            fail("listen.https", "an HTTPS address when [listen.tls] is given", None)
        for which in ("cert", "key"):
            path = Path(getattr(cfg.listen.tls, which))
            path = path if path.is_absolute() else base / path
            if not path.is_file():
                fail(f"listen.tls.{which}", "a readable PEM file (`taxiway cert dev` makes one)", str(path))
    if cfg.admin.listen:
        split_hostport(cfg.admin.listen, "admin.listen")
    # 2. Balancer.
    b = cfg.balancer
    if b.retries < 0:
        fail("balancer.retries", "a number >= 0", b.retries)
    if not 0 <= b.retry_budget <= 1:
        fail("balancer.retry_budget", "a share between 0 and 1", b.retry_budget)
    if b.balance_factor < 1:
        fail("balancer.balance_factor", "a number >= 1 (1.25 is a good start)", b.balance_factor)
    if not (b.hash_key in ("client_ip", "path") or b.hash_key.startswith(("header:", "cookie:"))):
        fail("balancer.hash_key", "client_ip, path, header:NAME or cookie:NAME", b.hash_key)
    if b.workers < 1:
        fail("balancer.workers", "a number >= 1", b.workers)
    if b.served_by_header and not _TOKEN.match(b.served_by_header):
        fail("balancer.served_by_header", "a header name (letters, digits, '-')", b.served_by_header)
    # 3. Health, outlier detection, timeouts, limits.
    h = cfg.health
    if h.rise < 1 or h.fall < 1:
        fail("health.rise/fall", "numbers >= 1", (h.rise, h.fall))
    positive("health.interval", h.interval)
    positive("health.timeout", h.timeout)
    if not h.path.startswith("/"):
        fail("health.path", "a path starting with /", h.path)
    if not h.expected_status or any(not 100 <= c <= 599 for c in h.expected_status):
        fail("health.expected_status", "HTTP status codes between 100 and 599", h.expected_status)
    o = cfg.outlier
    if not 0 <= o.max_ejected_percent <= 100:
        fail("outlier.max_ejected_percent", "a percentage 0..100", o.max_ejected_percent)
    if o.consecutive_failures < 1:
        fail("outlier.consecutive_failures", "a number >= 1", o.consecutive_failures)
    positive("outlier.base_ejection", o.base_ejection)
    if o.max_ejection < o.base_ejection:
        fail("outlier.max_ejection", "a duration >= outlier.base_ejection", o.max_ejection)
    for name in ("connect", "client_header", "client_body", "client_idle", "upstream_response",
                 "upstream_idle", "queue"):
        positive(f"timeouts.{name}", getattr(cfg.timeouts, name))
    lim = cfg.limits
    if lim.max_header_bytes < 1024:
        fail("limits.max_header_bytes", "at least 1k", lim.max_header_bytes)
    for name in ("max_headers", "max_connections"):
        if getattr(lim, name) < 1:
            fail(f"limits.{name}", "a number >= 1", getattr(lim, name))
    for name in ("max_connections_per_client", "upstream_pool_size", "upstream_max_connections",
                 "upstream_queue"):
        if getattr(lim, name) < 0:
            fail(f"limits.{name}", "a number >= 0 (0 = none)", getattr(lim, name))
    for i, net in enumerate(cfg.headers.trusted_proxies):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            fail(f"headers.trusted_proxies[{i}]", "an IP address or network like 10.0.0.0/8", net)
    for name in cfg.headers.security:
        if not _TOKEN.match(name):
            fail(f"headers.security.{name}", "a header name (letters, digits, '-')")
    if cfg.headers.request_id and not _TOKEN.match(cfg.headers.request_id):
        fail("headers.request_id", "a header name (letters, digits, '-')", cfg.headers.request_id)
    if cfg.access_log.enabled and cfg.access_log.path != "-":
        log_path = Path(cfg.access_log.path)
        log_path = log_path if log_path.is_absolute() else base / log_path
        if log_path.is_dir() or not log_path.parent.is_dir():
            fail("access_log.path", "a file in an existing directory, or \"-\" for stderr", str(log_path))
    # 4. Static servers.
    names: set[str] = set()
    for i, s in enumerate(cfg.servers):
        host, port = parse_server_url(s.url, f"servers[{i}].url")
        if s.weight < 0:
            fail(f"servers[{i}].weight", "a weight >= 0", s.weight)
        name = s.name or f"{host}:{port}"
        if name in names:
            fail(f"servers[{i}]", "a unique url or name", name)
        names.add(name)
    # 5. Pool and autoscaling.
    if cfg.pool is not None:
        p = cfg.pool
        if "{port}" not in p.command:
            fail("pool.command", "a command containing {port}", p.command)
        for key, command in [("pool.command", p.command)] + \
                [(f"pool.setup[{i}]", c) for i, c in enumerate(p.setup)]:
            try:
                if not shlex.split(command):
                    fail(key, "a command line", command)
            except ValueError as exc:
                fail(key, f"a command line that parses like a shell's ({exc})", command)
        if p.min < 0 or p.max < 1 or p.min > p.max:
            fail("pool.min/max", "0 <= min <= max and max >= 1", (p.min, p.max))
        if not p.ready_path.startswith("/"):
            fail("pool.ready_path", "a path starting with /", p.ready_path)
        try:
            ipaddress.ip_address(p.host)
        except ValueError:
            if p.host != "localhost":
                fail("pool.host", "an IP address the pool's servers bind (e.g. 127.0.0.1)", p.host)
        positive("pool.ready_timeout", p.ready_timeout)
        if p.max_surge < 0 or p.max_unavailable < 0 or p.max_surge + p.max_unavailable == 0:
            fail("pool.max_surge/max_unavailable", "numbers >= 0, not both 0 (a rollout could not move)",
                 (p.max_surge, p.max_unavailable))
    a = cfg.autoscale
    if a.target <= 0:
        fail("autoscale.target", "a positive number", a.target)
    if not 0 <= a.tolerance < 1:
        fail("autoscale.tolerance", "a share between 0 and 1 (0.1 = 10 %)", a.tolerance)
    positive("autoscale.period", a.period)
    if a.max_scale_up < 1 or a.max_scale_down < 1:
        fail("autoscale.max_scale_up/down", "numbers >= 1", (a.max_scale_up, a.max_scale_down))
    if a.panic_threshold <= 1:
        fail("autoscale.panic_threshold", "a factor > 1 (2.0 = 200 %)", a.panic_threshold)
    # 6. Affinity, rate limits.
    af = cfg.affinity
    if af.mode == "cookie":
        if not af.secret:
            fail("affinity.secret", "a signing key (\"${TAXIWAY_AFFINITY_SECRET}\") when mode = \"cookie\"")
        elif len(af.secret.encode()) < 16:
            fail("affinity.secret", "a signing key of at least 16 bytes (the value is not shown)")
    if not af.cookie_name.isascii() or not _TOKEN.match(af.cookie_name.replace("_", "-")):
        fail("affinity.cookie_name", "letters, digits, '_' or '-'", af.cookie_name)
    rl = cfg.ratelimit
    if rl.store == "redis" and not rl.redis_url.startswith(("redis://", "rediss://")):
        fail("ratelimit.redis_url", "a redis:// or rediss:// (TLS) URL", redact_url(rl.redis_url))
    rule_names: set[str] = set()
    for i, r in enumerate(rl.rules):
        if r.name in rule_names:
            fail(f"ratelimit.rules[{i}].name", "a name no other rule has (the name keys the counter)", r.name)
        rule_names.add(r.name)
        if not r.path_prefix.startswith("/"):
            fail(f"ratelimit.rules[{i}].path_prefix", "a path starting with /", r.path_prefix)
        if r.burst < 0:
            fail(f"ratelimit.rules[{i}].burst", "a number >= 0", r.burst)
    for i, route in enumerate(cfg.apikeys.routes):
        if not route.path_prefix.startswith("/"):
            fail(f"apikeys.routes[{i}].path_prefix", "a path starting with /", route.path_prefix)
