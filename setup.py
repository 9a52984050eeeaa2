"""Build hook: compile the request hot path with mypyc (pyproject.toml holds everything else).

Why: the modules a proxied request runs through (the proxy's forward, http1, server, upstream;
the balancing model and strategies) spend most of their time in the CPython interpreter;
compiled by mypyc to C extensions, each request costs about half the Python work.
The compiled modules are an optimisation, never a requirement:
- TAXIWAY_COMPILE=0 installs the Python sources only (no compiler needed);
- a failed compile (no C compiler, a mypy error) is skipped, leaving the sources;
- `_compiled.json` (each compiled source's SHA-256) is written only after every extension of
  this build was built, and old outputs are removed first, so a failed rebuild can never leave a
  manifest that vouches for stale extensions;
- at import, `taxiway.compiled` falls back to the sources unless the manifest, the
  extensions and the sources all agree, so an edited source always takes effect.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from types import ModuleType

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE = os.path.join("src", "taxiway")
GROUP = "taxiway_hotpath"   # name of the shared library mypyc builds for the modules


def _load_compiled_module() -> ModuleType:
    """taxiway/compiled.py by path (stdlib only; importing the package would run its check):
    the one list of compiled modules and the one way to digest their sources."""
    path = os.path.join(HERE, PACKAGE, "compiled.py")
    spec = importlib.util.spec_from_file_location("_taxiway_compiled", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compiled = _load_compiled_module()
SOURCES = [os.path.join(PACKAGE, *name.split(".")) + ".py" for name in compiled.COMPILED]


def _manifest() -> str:
    digests = compiled.source_digests(os.path.join(HERE, PACKAGE))
    return json.dumps({"runtime": GROUP + "__mypyc", "sha256": digests}, indent=1)


class BuildHotPath(build_ext):
    """build_ext that removes old outputs first and writes the manifest only after a full build."""

    def run(self) -> None:
        outputs = [self.get_ext_fullpath(ext.name) for ext in self.extensions]
        # Also any extension beside the sources for a module no longer compiled: it would shadow
        # its .py (compiled.py only vouches for its COMPILED).
        stray = []
        for sub in {name.split(".")[0] for name in compiled.COMPILED}:
            directory = os.path.join(HERE, PACKAGE, sub)
            stray += [os.path.join(directory, f) for f in os.listdir(directory)
                      if f.endswith(tuple(EXTENSION_SUFFIXES))
                      and f"{sub}.{f.split('.')[0]}" not in compiled.COMPILED + compiled.NATIVE]
        for path in outputs + stray:
            if os.path.exists(path):
                os.remove(path)
        super().run()
        missing = [p for p in outputs if not os.path.exists(p)]
        if missing:
            print(f"taxiway: {len(missing)} compiled module(s) not built; the proxy runs from its "
                  "Python sources", file=sys.stderr)
            return
        text = _manifest()
        # Into the wheel's tree (a normal install) and beside the sources (an editable install).
        for directory in (os.path.join(self.build_lib, "taxiway"), os.path.join(HERE, PACKAGE)):
            if os.path.isdir(directory):
                with open(os.path.join(directory, compiled.MANIFEST), "w") as f:
                    f.write(text)


def ext_modules() -> list:
    stale = os.path.join(HERE, PACKAGE, compiled.MANIFEST)
    if os.path.exists(stale):
        os.remove(stale)
    if os.environ.get("TAXIWAY_COMPILE", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify

        exts = mypycify(["--ignore-missing-imports", "--follow-imports=silent", *SOURCES],
                        group_name=GROUP)
    except (Exception, SystemExit) as exc:   # mypyc missing, or a type error it refuses to compile
        print(f"taxiway: not compiling the hot path ({exc!r}); the proxy runs from its Python sources",
              file=sys.stderr)
        return []
    # The C modules (the request-head scanner): plain extensions, built and chosen with the rest.
    exts += [Extension(f"taxiway.{name}", [os.path.join(PACKAGE, *name.split(".")) + ".c"],
                       extra_compile_args=["-O2"]) for name in compiled.NATIVE]
    for ext in exts:
        ext.optional = True   # no C compiler: install anyway, the sources run
    return exts


setup(ext_modules=ext_modules(), cmdclass={"build_ext": BuildHotPath})
