"""Settings for the flights reference app. Everything that differs per deployment comes from the
environment (12-factor), so the same code runs embedded (SQLite + database cache, nothing to install)
or on PostgreSQL/Redis, on one server or on many behind taxiway.

Environment (all optional except the secret key outside DEBUG):
    DJANGO_SECRET_KEY     signs sessions, CSRF tokens, signed-cookie sessions. Required unless DEBUG.
    DJANGO_DEBUG=1        development mode; the only mode with a built-in (insecure) dev key.
    TAXIWAY_ENV           "production" refuses DEBUG (the debug page leaks settings and source).
    DJANGO_ALLOWED_HOSTS  comma list, default "127.0.0.1,localhost,[::1]".
    DATABASE_URL          postgres://user:pass@host:port/name, or sqlite:////abs/path.sqlite3.
    REDIS_URL             redis://host:port/db: the cache (and sessions when TAXIWAY_SESSIONS=redis).
    TAXIWAY_SESSIONS      db (default) | cache (per-process memory) | redis | signed_cookies.
    FLIGHTS_CACHES        which app caches are on: "all" (default), "none", or a comma list of
                          view, fragment, data (per-view, template fragment, low-level seat cache).
    FLIGHTS_CACHE_PREFIX  key prefix in the shared cache (several deployments on one Redis).
    FLIGHTS_STATIC_ROOT   where collectstatic writes hashed files (default ./staticfiles).
    FLIGHTS_TRUST_FORWARDED=1  behind taxiway: the client address for the login limit is the last
                          X-Forwarded-For hop (the one the balancer appended), not the socket peer,
                          and X-Forwarded-Proto: https marks the request secure.
    FLIGHTS_LOGIN_LIMIT   failed logins allowed per username+address per 15 minutes (default 5).
    FLIGHTS_SERVER_NAME   what X-Served-By-App says (default: TAXIWAY_SERVER_NAME set by `taxiway up`,
                          else the listening host:port).

Refusing to start prints one line and exits with status 4, which gunicorn treats as "App failed to
load" and halts on (instead of respawning workers forever).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

# Exit status gunicorn's arbiter treats as fatal (gunicorn.arbiter.Arbiter.APP_LOAD_ERROR).
REFUSE_EXIT_STATUS = 4


def _refuse(why: str) -> None:
    print(f"flights: refusing to start: {why}", file=sys.stderr, flush=True)
    raise SystemExit(REFUSE_EXIT_STATUS)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


DEBUG = _flag("DJANGO_DEBUG")
PRODUCTION = os.environ.get("TAXIWAY_ENV", "").strip().lower() == "production"
if PRODUCTION and DEBUG:
    _refuse("DJANGO_DEBUG is on while TAXIWAY_ENV=production (the debug page leaks settings)")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        _refuse("DJANGO_SECRET_KEY is not set (only DJANGO_DEBUG=1 has a built-in development key)")
    # Development only: never valid outside DEBUG, so a forgotten variable cannot ship it.
    SECRET_KEY = "dev-only-insecure-flights-key-never-use-in-production"
elif PRODUCTION and len(SECRET_KEY) < 32:
    _refuse("DJANGO_SECRET_KEY is shorter than 32 characters")

ALLOWED_HOSTS = [h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
                 .split(",") if h.strip()]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "airline",
]

# Order matters (numbered because it is easy to get wrong):
# 1. ServedBy first so even errors and 304s say which server answered.
# 2. ContentSecurityPolicy next, for the same reason.
# 3. ConditionalGet wraps everything that produces a body, so it can hash it into an ETag and
#    answer 304 to If-None-Match.
MIDDLEWARE = [
    "flights.middleware.ServedByMiddleware",
    "flights.middleware.ContentSecurityPolicyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.http.ConditionalGetMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# One-time notices ("Booked: seat 12C ...") after a POST-redirect-GET ride in a signed cookie (with
# the session cookie's Secure/HttpOnly/SameSite flags), not in the session: they reach the next page
# whichever server renders it, under every TAXIWAY_SESSIONS design (even per-process memory).
# Only the page a redirect lands on reads them (my_bookings), so no cached page ever contains one.
MESSAGE_STORAGE = "django.contrib.messages.storage.cookie.CookieStorage"

ROOT_URLCONF = "flights.urls"
WSGI_APPLICATION = "flights.wsgi.application"

TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {
        "context_processors": [
            "django.template.context_processors.request",
            "django.contrib.auth.context_processors.auth",
            "airline.views.served_by_context",
        ],
    },
}]


def _database(url: str) -> dict[str, object]:
    """DATABASE_URL -> Django DATABASES entry (postgres:// or sqlite:///path)."""
    parts = urlsplit(url)
    if parts.scheme in {"postgres", "postgresql"}:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")) or "postgres",
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "127.0.0.1",
            "PORT": str(parts.port or 5432),
            # Persistent connections: one connect per worker instead of per request.
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
        }
    if parts.scheme == "sqlite":
        return _sqlite(Path(unquote(parts.path)))
    _refuse(f"DATABASE_URL must start with postgres:// or sqlite:///, got {parts.scheme!r}")
    raise AssertionError  # unreachable: _refuse exits


def _sqlite(path: Path) -> dict[str, object]:
    # Several gunicorn processes share one file: WAL lets readers run during a write, IMMEDIATE
    # takes the write lock at BEGIN (no deadlock-prone lock upgrade), and the timeout waits for it.
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }


def _default_sqlite() -> Path:
    # Under .taxiway/ (gitignored) so the database and its -wal/-shm files never get committed.
    path = BASE_DIR / ".taxiway" / "db.sqlite3"
    path.parent.mkdir(exist_ok=True)
    return path


DATABASES = {"default": (_database(os.environ["DATABASE_URL"]) if os.environ.get("DATABASE_URL")
                         else _sqlite(_default_sqlite()))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "")
CACHE_PREFIX = os.environ.get("FLIGHTS_CACHE_PREFIX", "flights")
CACHES: dict[str, dict[str, object]] = {
    # Shared by every server: a booking on server A invalidates seat counts that B serves.
    "default": ({"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                 "KEY_PREFIX": CACHE_PREFIX}
                if REDIS_URL else
                {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "flights_cache",
                 "KEY_PREFIX": CACHE_PREFIX, "OPTIONS": {"MAX_ENTRIES": 20000}}),
}

SESSION_DESIGN = os.environ.get("TAXIWAY_SESSIONS", "db").strip().lower() or "db"
if SESSION_DESIGN == "db":
    SESSION_ENGINE = "django.contrib.sessions.backends.db"
elif SESSION_DESIGN == "cache":
    # Per-process memory: the design that breaks when the next request lands on another server.
    SESSION_ENGINE = "django.contrib.sessions.backends.cache"
    SESSION_CACHE_ALIAS = "sessions"
    CACHES["sessions"] = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                          "LOCATION": "flights-sessions"}
elif SESSION_DESIGN == "redis":
    if not REDIS_URL:
        _refuse("TAXIWAY_SESSIONS=redis needs REDIS_URL")
    SESSION_ENGINE = "django.contrib.sessions.backends.cache"
    SESSION_CACHE_ALIAS = "sessions"
    CACHES["sessions"] = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                          "KEY_PREFIX": CACHE_PREFIX + ":sessions"}
elif SESSION_DESIGN == "signed_cookies":
    # The session lives in the cookie, signed (HMAC with SECRET_KEY) but NOT encrypted: the client
    # can read it, cannot change it; a stolen cookie works until it expires (no server-side revoke).
    SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
else:
    _refuse(f"TAXIWAY_SESSIONS must be db, cache, redis or signed_cookies, got {SESSION_DESIGN!r}")

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = 8 * 3600
CSRF_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
TRUST_FORWARDED = _flag("FLIGHTS_TRUST_FORWARDED")
if TRUST_FORWARDED:
    # Behind taxiway the balancer alone sets X-Forwarded-Proto (issue 6). Without the flag the header
    # is ignored: a client talking to the app directly could otherwise claim "https".
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = PRODUCTION and not _flag("FLIGHTS_ALLOW_HTTP")
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "strict-origin-when-cross-origin"
X_FRAME_OPTIONS = "DENY"
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",")
                        if o.strip()]

# Argon2id first: new passwords and every login of an older hash use it (memory-hard, PHC winner).
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "flight-list"

_caches = os.environ.get("FLIGHTS_CACHES", "all").strip().lower()
FLIGHTS_CACHES = (frozenset({"view", "fragment", "data"}) if _caches == "all"
                  else frozenset() if _caches in {"none", ""}
                  else frozenset(c.strip() for c in _caches.split(",")))
if not FLIGHTS_CACHES.issubset({"view", "fragment", "data"}):
    _refuse(f"FLIGHTS_CACHES must be all, none or a list of view,fragment,data, got {_caches!r}")
FLIGHT_LIST_CACHE_S = 30
ROUTE_FRAGMENT_CACHE_S = 300
SEATS_CACHE_S = 300
_limit = os.environ.get("FLIGHTS_LOGIN_LIMIT", "5").strip()
if not _limit.isdigit() or int(_limit) < 1:
    _refuse(f"FLIGHTS_LOGIN_LIMIT must be a whole number >= 1, got {_limit!r}")
LOGIN_LIMIT = int(_limit)
LOGIN_LIMIT_WINDOW_S = 15 * 60
# `taxiway up` names each app process it starts (TAXIWAY_SERVER_NAME=app-<port>).
SERVER_NAME_OVERRIDE = os.environ.get("FLIGHTS_SERVER_NAME") or os.environ.get("TAXIWAY_SERVER_NAME", "")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(os.environ.get("FLIGHTS_STATIC_ROOT", BASE_DIR / "staticfiles"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Hashed names (site.3f2a9c1b.css): the content decides the URL, so the file can be cached forever.
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"flights": {"handlers": ["stderr"], "level": "INFO"}},
}
