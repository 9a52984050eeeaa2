"""Which build of the proxy's hot path runs: the mypyc-compiled modules or the Python sources.

Why: `setup.py` compiles `forward`, `http1`, `server` and `upstream` with mypyc (about half the
CPU per request) and records the SHA-256 of each source it compiled in `_compiled.json`. A
compiled module is a snapshot, so before any of them is imported this module checks the snapshot
still matches. The sources are imported instead when:
- a source was edited after the build (an editable install: the edit must take effect);
- a compiled module or mypyc's shared library is missing (no compiler at install: optional);
- `TAXIWAY_PURE_PYTHON=1` is set (to compare the two, or to debug with Python tracebacks).
All four run the same way or none does: compiled modules call each other natively, so mixing a
compiled module with another's source would run the stale compiled copy.
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

HOT_PATH = ("forward", "http1", "server", "upstream")   # keep in step with setup.py
PACKAGE = "taxiway.proxy"
_DIR = os.path.dirname(os.path.abspath(__file__))


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the four hot-path modules as `.py` files, ahead of the compiled extensions."""

    def find_spec(self, fullname: str, path: object = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != PACKAGE or name not in HOT_PATH:
            return None
        return importlib.util.spec_from_file_location(fullname, os.path.join(_DIR, name + ".py"))


def compiled_files(directory: str = _DIR) -> dict[str, str]:
    """Module name -> its compiled extension's path, for the hot-path modules that have one."""
    found = {}
    for name in HOT_PATH:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(directory, name + suffix)
            if os.path.exists(path):
                found[name] = path
                break
    return found


def why_not_compiled(directory: str = _DIR) -> str | None:
    """None when the compiled hot path matches the sources; else the reason it cannot be used."""
    if os.environ.get("TAXIWAY_PURE_PYTHON", "") not in ("", "0"):
        return "TAXIWAY_PURE_PYTHON is set"
    try:
        with open(os.path.join(directory, "_compiled.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        digests: dict[str, str] = manifest["sha256"]
        runtime: str = manifest["runtime"]
    except FileNotFoundError:
        return "not compiled at install (TAXIWAY_COMPILE=0, no C compiler, or mypyc missing)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable _compiled.json ({exc})"
    missing = [n for n in HOT_PATH if n not in compiled_files(directory)]
    if missing:
        return f"the compile failed at install ({', '.join(missing)} not built)"
    if importlib.util.find_spec(runtime) is None:
        return f"mypyc's shared library {runtime} is missing"
    for name in HOT_PATH:
        with open(os.path.join(directory, name + ".py"), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != digests.get(name):
                return f"{name}.py changed since it was compiled (reinstall to recompile)"
    return None


def select() -> str:
    """Decide once per process, before the first hot-path import; returns the build in use."""
    reason = why_not_compiled()
    if reason is None:
        return "compiled (mypyc)"
    if not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())
    return f"python ({reason})"
