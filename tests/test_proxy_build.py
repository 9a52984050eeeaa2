"""The compiled hot path (setup.py + proxy/hotpath.py): used when it matches the sources, never stale.

What a user or developer would notice: an edited source that silently does not run (a stale
compiled module), or a proxy that fails to import because a compile was skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from taxiway.proxy import hotpath

PROBE = ("import taxiway.proxy as p, taxiway.proxy.forward as f, taxiway.proxy.http1 as h; "
         "print(p.BUILD); print(f.__file__); print(h.__file__)")


def probe(env_extra: dict[str, str]) -> list[str]:
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.splitlines()


def test_pure_python_switch_imports_the_sources() -> None:
    build, forward, http1 = probe({"TAXIWAY_PURE_PYTHON": "1"})
    assert build == "python (TAXIWAY_PURE_PYTHON is set)"
    assert forward.endswith("forward.py") and http1.endswith("http1.py")


def test_installed_build_is_used_when_it_matches() -> None:
    reason = hotpath.why_not_compiled()
    if reason is not None and "TAXIWAY_PURE_PYTHON" not in reason:
        pytest.skip(f"this install has no usable compiled hot path: {reason}")
    build, forward, _ = probe({"TAXIWAY_PURE_PYTHON": ""})
    assert build == "compiled (mypyc)"
    assert not forward.endswith(".py")   # the extension module, not the source


def _copy_proxy(tmp_path: str) -> str:
    d = os.path.join(tmp_path, "proxy")
    shutil.copytree(os.path.dirname(hotpath.__file__), d, ignore=shutil.ignore_patterns("__pycache__"))
    return d


def _write_manifest(d: str, runtime: str) -> None:
    digests = {}
    for name in hotpath.HOT_PATH:
        with open(os.path.join(d, name + ".py"), "rb") as f:
            digests[name] = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(d, "_compiled.json"), "w") as f:
        json.dump({"runtime": runtime, "sha256": digests}, f)


def test_edited_source_is_detected(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TAXIWAY_PURE_PYTHON", raising=False)
    d = _copy_proxy(str(tmp_path))
    if not hotpath.compiled_files(d):
        # Stand in for the extensions with empty files: only their presence is checked here.
        for name in hotpath.HOT_PATH:
            open(os.path.join(d, name + ".abi3.so"), "w").close()
    _write_manifest(d, "json")   # any importable module stands in for mypyc's shared library
    assert hotpath.why_not_compiled(d) is None
    with open(os.path.join(d, "upstream.py"), "a") as f:
        f.write("\n# edited after the build\n")
    assert hotpath.why_not_compiled(d) == "upstream.py changed since it was compiled (reinstall to recompile)"


def test_failed_or_skipped_compile_falls_back(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TAXIWAY_PURE_PYTHON", raising=False)
    d = _copy_proxy(str(tmp_path))
    for path in hotpath.compiled_files(d).values():
        os.remove(path)
    _write_manifest(d, "json")
    assert "the compile failed at install" in (hotpath.why_not_compiled(d) or "")
    for name in hotpath.HOT_PATH:
        open(os.path.join(d, name + ".abi3.so"), "w").close()
    _write_manifest(d, "no_such_mypyc_runtime_module")
    assert hotpath.why_not_compiled(d) == "mypyc's shared library no_such_mypyc_runtime_module is missing"
    os.remove(os.path.join(d, "_compiled.json"))
    assert "not compiled at install" in (hotpath.why_not_compiled(d) or "")
