"""API keys: how they are made, stored, checked and reloaded.

Rules of this module:
1. A key is shown once, when created, and never stored, logged or returned again. The file holds
   only its SHA-256 hash, with a public id, a name, scopes, an optional expiry and a revoked flag.
   Logs and rejection reasons name the key by its `name` (or id), never by the key.
2. Comparison is constant time: the presented key is hashed and compared with
   `hmac.compare_digest`, also when the id is unknown (against a dummy), so response timing says
   nothing about which ids or hashes exist.
3. The hot path (`KeyRing.authenticate`) does a dict lookup, one SHA-256 and one compare; it checks
   the file's mtime at most once per `RELOAD_CHECK_S`, so `taxiway keys revoke` reaches a running
   balancer within about a second without a restart.

Why SHA-256 and not a password hash (Argon2, bcrypt): those are slow on purpose, to make guessing
a *low-entropy human password* from a stolen hash expensive. Our keys are 256 random bits from
`secrets`; no one can enumerate 2**256 candidates at any hash speed, so a slow hash would add
nothing but tens of milliseconds and a CPU-exhaustion lever to every API request.

Key format: `tw_<id>_<secret>`. The id (8 hex digits) is public and lets us find the record without
comparing against every stored hash; the `tw_` prefix makes leaked keys easy to grep for (the
repository's secret scan does) and easy for users to recognise.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from taxiway.errors import ConfigError, UsageError

log = logging.getLogger("taxiway.security")

RELOAD_CHECK_S = 1.0
KEY_PREFIX = "tw_"
SECRET_BYTES = 32
_KEY_RE = re.compile(r"^tw_([0-9a-f]{8})_([A-Za-z0-9_-]{20,})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_SCOPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:/-]{0,63}$")
_DUMMY_HASH = "sha256:" + "0" * 64


class KeyStatus(enum.Enum):
    VALID = "valid"
    MISSING = "missing"      # no key presented
    UNKNOWN = "unknown"      # malformed, unknown id, or wrong secret
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One stored key. `hash` is "sha256:<hex>"; times are Unix seconds (UTC)."""

    id: str
    name: str
    hash: str
    scopes: tuple[str, ...] = ()
    created: float = 0.0
    expires: float | None = None
    revoked: bool = False

    def has_expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def has_scopes(self, required: list[str] | tuple[str, ...]) -> bool:
        return all(s in self.scopes for s in required)

    def status(self, now: float) -> KeyStatus:
        if self.revoked:
            return KeyStatus.REVOKED
        if self.has_expired(now):
            return KeyStatus.EXPIRED
        return KeyStatus.VALID


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> tuple[str, str]:
    """A new (key, id). The secret part has SECRET_BYTES of entropy from the OS CSPRNG."""
    key_id = secrets.token_hex(4)
    return f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}", key_id


def authenticate(keys: dict[str, ApiKey], presented: str | None,
                 now: float) -> tuple[KeyStatus, ApiKey | None]:
    """Check a presented key against `keys` (by id). Pure; constant time in the secret.

    Returns (status, record). The record is returned for EXPIRED/REVOKED too, so logs can name it.
    """
    if not presented:
        return KeyStatus.MISSING, None
    m = _KEY_RE.match(presented)
    record = keys.get(m.group(1)) if m else None
    stored = record.hash if record is not None else _DUMMY_HASH
    matches = hmac.compare_digest(hash_key(presented), stored)
    if record is None or not matches:
        return KeyStatus.UNKNOWN, None
    return record.status(now), record


# --------------------------------------------------------------------------------------------
# The file (driver)


def iso_utc(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _from_iso(text: str | None) -> float | None:
    if text is None:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def _decode(path: Path, text: str) -> dict[str, ApiKey]:
    try:
        doc = json.loads(text)
        out: dict[str, ApiKey] = {}
        for item in doc["keys"]:
            k = ApiKey(id=str(item["id"]), name=str(item["name"]), hash=str(item["hash"]),
                       scopes=tuple(str(s) for s in item.get("scopes", [])),
                       created=_from_iso(item.get("created")) or 0.0,
                       expires=_from_iso(item.get("expires")), revoked=bool(item.get("revoked", False)))
            if not k.hash.startswith("sha256:"):
                raise ValueError(f"key {k.id}: unknown hash scheme")
            out[k.id] = k
        return out
    except (ValueError, KeyError, TypeError) as exc:
        expected = f"a keys file written by `taxiway keys` ({exc})"
        raise ConfigError("apikeys.file", expected, str(path)) from None


def _encode(keys: dict[str, ApiKey]) -> str:
    items = []
    for k in keys.values():
        d = asdict(k)
        d["scopes"] = list(k.scopes)
        d["created"], d["expires"] = iso_utc(k.created), iso_utc(k.expires)
        items.append(d)
    return json.dumps({"version": 1, "keys": items}, indent=2) + "\n"


class KeyFile:
    """The JSON keys file: read, and changed under an exclusive lock with an atomic replace."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, ApiKey]:
        """All keys; an absent file is an empty set. Raises ConfigError for an unreadable file."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError("apikeys.file", f"a readable file ({exc.strerror})", str(self.path)) from None
        return _decode(self.path, text)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, ApiKey]]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            keys = self.load()
            yield keys
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keys-")
            try:
                with os.fdopen(fd, "w") as f:   # mkstemp makes it 0600: only the owner reads hashes
                    f.write(_encode(keys))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def create(self, name: str, scopes: list[str], expires_in_s: float | None,
               now: float | None = None) -> tuple[str, ApiKey]:
        """Make a key; returns (the key, shown once; its record). Raises UsageError for a bad or
        duplicate name (names identify keys in logs, so active names are unique)."""
        if not _NAME_RE.match(name):
            raise UsageError(f"key name {name!r}: use 1-64 letters, digits, '.', '_', '@', '-'")
        for s in scopes:
            if not _SCOPE_RE.match(s):
                raise UsageError(f"scope {s!r}: use letters, digits, '.', '_', '@', ':', '/', '-'")
        now = time.time() if now is None else now
        with self._locked() as keys:
            if any(k.name == name and not k.revoked for k in keys.values()):
                raise UsageError(f"an active key named {name!r} exists; revoke it first or pick another name")
            key, key_id = generate_key()
            while key_id in keys:
                key, key_id = generate_key()
            rec = ApiKey(key_id, name, hash_key(key), tuple(scopes), now,
                         None if expires_in_s is None else now + expires_in_s)
            keys[key_id] = rec
        return key, rec

    def revoke(self, name_or_id: str) -> list[ApiKey]:
        """Revoke the active keys with this name or id; returns them. UsageError when none match."""
        with self._locked() as keys:
            hits = [k for k in keys.values() if not k.revoked and name_or_id in (k.name, k.id)]
            if not hits:
                raise UsageError(f"no active key named {name_or_id!r} in {self.path}")
            for k in hits:
                keys[k.id] = replace(k, revoked=True)
        return hits


class KeyRing:
    """The balancer's view of the keys file: reloaded when the file changes (checked cheaply)."""

    def __init__(self, path: str | os.PathLike[str], clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.file = KeyFile(path)
        self._clock = clock
        self._wall = wall_clock
        self._next_check = 0.0
        self._stamp: tuple[int, int, int] | None = None
        self.keys: dict[str, ApiKey] = {}
        self.reload_if_changed(force=True)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.file.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_ino, st.st_size

    def reload_if_changed(self, force: bool = False) -> None:
        """Called on the hot path; does a stat at most once per RELOAD_CHECK_S.

        A file that became unreadable or malformed keeps the previous keys (logged), so a bad edit
        does not open or close every route at once. At start (`force`), errors are raised.
        """
        now = self._clock()
        if not force and now < self._next_check:
            return
        self._next_check = now + RELOAD_CHECK_S
        stamp = self._file_stamp()
        if stamp == self._stamp and not force:
            return
        try:
            self.keys = self.file.load()
        except ConfigError as exc:
            if force:
                raise
            log.error("keeping previous API keys: %s", exc)
            return
        self._stamp = stamp
        if stamp is None:
            log.warning("API keys file %s does not exist: every key-protected route answers 401",
                        self.file.path)

    def authenticate(self, presented: str | None) -> tuple[KeyStatus, ApiKey | None]:
        self.reload_if_changed()
        return authenticate(self.keys, presented, self._wall())
