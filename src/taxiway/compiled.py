"""Which build of the request hot path runs: the mypyc-compiled modules or the Python sources.

Why: `setup.py` compiles the modules every proxied request runs through (`COMPILED`: the proxy's
`app` (the `Balancer` every request reads), `accesslog`, `forward`, `http1`, `server`,
`settings`, `upstream` and `waitqueue`, and the balancing `model` and `strategies`) with mypyc,
builds the C request-head scanner (`NATIVE`: `proxy/_headscan.c`, whose Python twin is
`proxy/headscan.py`) beside them, and records the SHA-256 of each source it compiled in
`_compiled.json`. A compiled module is a snapshot, so
`taxiway/__init__.py` calls `select` before any of them can be imported, and the sources are
imported instead when:
- a source was edited after the build (an editable install: the edit must take effect);
- a compiled module or mypyc's shared library is missing (no compiler at install: optional);
- `TAXIWAY_PURE_PYTHON=1` is set (to compare the two, or to debug with Python tracebacks).
All of them run the same way or none does: compiled modules call each other natively, so mixing
a compiled module with another's source would run the stale compiled copy.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from types import ModuleType

# Modules under the taxiway package, compiled together (setup.py reads this list from here).
COMPILED = ("proxy.accesslog", "proxy.app", "proxy.forward", "proxy.http1", "proxy.server",
            "proxy.settings", "proxy.upstream", "proxy.waitqueue", "balancing.model",
            "balancing.strategies")
# C extensions built with them (a C source per module, `.c` beside it): chosen, checked and
# digested with the mypyc modules, so an edited `.c` falls back to the Python twin as an edited
# `.py` falls back to its source.
NATIVE = ("proxy._headscan",)
MANIFEST = "_compiled.json"   # written by setup.py beside this file
_DIR = os.path.dirname(os.path.abspath(__file__))   # the taxiway package


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' `.py` files, ahead of their extensions."""

    def find_spec(self, fullname: str, path: object = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        top, _, name = fullname.partition(".")
        if top != "taxiway" or name not in COMPILED:
            return None
        return importlib.util.spec_from_file_location(fullname, _source(_DIR, name))


def _source(directory: str, name: str, suffix: str = ".py") -> str:
    return os.path.join(directory, *name.split(".")) + suffix


def source_digests(directory: str = _DIR) -> dict[str, str]:
    """Module name -> SHA-256 of its source: what setup.py records and `why_not_compiled` checks."""
    digests = {}
    for name, suffix in [(n, ".py") for n in COMPILED] + [(n, ".c") for n in NATIVE]:
        with open(_source(directory, name, suffix), "rb") as f:
            digests[name] = hashlib.sha256(f.read()).hexdigest()
    return digests


def compiled_files(directory: str = _DIR) -> dict[str, str]:
    """Module name -> its compiled extension's path, for the compiled modules that have one."""
    found = {}
    for name in COMPILED + NATIVE:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = _source(directory, name, suffix)
            if os.path.exists(path):
                found[name] = path
                break
    return found


def why_not_compiled(directory: str = _DIR) -> str | None:
    """None when the compiled hot path matches the sources; else the reason it cannot be used."""
    if os.environ.get("TAXIWAY_PURE_PYTHON", "") not in ("", "0"):
        return "TAXIWAY_PURE_PYTHON is set"
    try:
        with open(os.path.join(directory, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
        digests: dict[str, str] = manifest["sha256"]
        runtime: str = manifest["runtime"]
    except FileNotFoundError:
        return "not compiled at install (TAXIWAY_COMPILE=0, no C compiler, or mypyc missing)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable {MANIFEST} ({exc})"
    missing = [n for n in COMPILED + NATIVE if n not in compiled_files(directory)]
    if missing:
        return f"the compile failed at install ({', '.join(missing)} not built)"
    if importlib.util.find_spec(runtime) is None:
        return f"mypyc's shared library {runtime} is missing"
    for name, digest in source_digests(directory).items():
        if digest != digests.get(name):
            path = name.replace(".", "/") + (".c" if name in NATIVE else ".py")
            return f"{path} changed since it was compiled (reinstall to recompile)"
    return None


def select() -> str:
    """Decide once per process, before the first compiled module is imported; returns the build."""
    reason = why_not_compiled()
    if reason is None:
        return "compiled (mypyc)"
    if not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())
    return f"python ({reason})"
