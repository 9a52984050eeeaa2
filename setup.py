"""Build hook: compile the proxy's hot path with mypyc (pyproject.toml holds everything else).

Why: the four modules a proxied request runs through spend about half their CPU in the CPython
interpreter; compiled by mypyc to C extensions, each request costs about half as much CPU.
The compiled modules are an optimisation, never a requirement:
- TAXIWAY_COMPILE=0 installs the Python sources only (no compiler needed);
- a failed compile is skipped (the extensions are optional), leaving the sources;
- at import, `taxiway.proxy.hotpath` checks that the compiled modules match the sources (by a
  SHA-256 recorded here) and falls back to the sources when they do not, so an edited source
  always takes effect in an editable install.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
PROXY = os.path.join("src", "taxiway", "proxy")
HOT_PATH = ("forward", "http1", "server", "upstream")   # keep in step with proxy/hotpath.py
MANIFEST = os.path.join(HERE, PROXY, "_compiled.json")
GROUP = "taxiway_hotpath"   # name of the shared library mypyc builds for the four modules


def ext_modules() -> list:
    if os.path.exists(MANIFEST):
        os.remove(MANIFEST)
    if os.environ.get("TAXIWAY_COMPILE", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("taxiway: mypyc is not installed; the proxy runs from its Python sources", file=sys.stderr)
        return []
    paths = [os.path.join(PROXY, name + ".py") for name in HOT_PATH]
    exts = mypycify(["--ignore-missing-imports", "--follow-imports=silent", *paths], group_name=GROUP)
    for ext in exts:
        ext.optional = True   # no C compiler: install anyway, the sources run
    digests = {}
    for name, path in zip(HOT_PATH, paths, strict=True):
        with open(os.path.join(HERE, path), "rb") as f:
            digests[name] = hashlib.sha256(f.read()).hexdigest()
    with open(MANIFEST, "w") as f:
        json.dump({"runtime": GROUP + "__mypyc", "sha256": digests}, f, indent=1)
    return exts


setup(ext_modules=ext_modules())
