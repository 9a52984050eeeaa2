"""The compiled hot path (setup.py + taxiway/compiled.py): used when it matches the sources, never stale.

What a user or developer would notice: an edited source that silently does not run (a stale
compiled module), or a proxy that fails to import because a compile was skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from taxiway import compiled

PROBE = ("import taxiway, taxiway.proxy.forward as f, taxiway.balancing.model as m; "
         "print(taxiway.BUILD); print(f.__file__); print(m.__file__)")


def probe(env_extra: dict[str, str]) -> list[str]:
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.splitlines()


def test_pure_python_switch_imports_the_sources() -> None:
    build, forward, model = probe({"TAXIWAY_PURE_PYTHON": "1"})
    assert build == "python (TAXIWAY_PURE_PYTHON is set)"
    assert forward.endswith("forward.py") and model.endswith("model.py")


def test_installed_build_is_used_when_it_matches() -> None:
    reason = compiled.why_not_compiled()
    if reason is not None and "TAXIWAY_PURE_PYTHON" not in reason:
        pytest.skip(f"this install has no usable compiled hot path: {reason}")
    build, forward, model = probe({"TAXIWAY_PURE_PYTHON": ""})
    assert build == "compiled (mypyc)"
    assert not forward.endswith(".py") and not model.endswith(".py")   # extension modules


def _copy_package(tmp_path: str) -> str:
    d = os.path.join(tmp_path, "taxiway")
    shutil.copytree(os.path.dirname(compiled.__file__), d, ignore=shutil.ignore_patterns("__pycache__"))
    return d


def _fake_extensions(d: str) -> None:
    """Empty stand-ins for the extensions: only their presence is checked."""
    for name in compiled.COMPILED + compiled.NATIVE:
        open(os.path.join(d, *name.split(".")) + ".abi3.so", "w").close()


def _write_manifest(d: str, runtime: str) -> None:
    with open(os.path.join(d, compiled.MANIFEST), "w") as f:
        json.dump({"runtime": runtime, "sha256": compiled.source_digests(d)}, f)


@pytest.mark.parametrize("edited", ["proxy/upstream.py", "balancing/strategies.py", "proxy/_headscan.c"])
def test_edited_source_is_detected(tmp_path, monkeypatch, edited: str) -> None:
    monkeypatch.delenv("TAXIWAY_PURE_PYTHON", raising=False)
    d = _copy_package(str(tmp_path))
    if not compiled.compiled_files(d):
        _fake_extensions(d)
    _write_manifest(d, "json")   # any importable module stands in for mypyc's shared library
    assert compiled.why_not_compiled(d) is None
    with open(os.path.join(d, edited), "a") as f:
        f.write("\n# edited after the build\n")
    assert compiled.why_not_compiled(d) == f"{edited} changed since it was compiled (reinstall to recompile)"


def test_failed_or_skipped_compile_falls_back(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TAXIWAY_PURE_PYTHON", raising=False)
    d = _copy_package(str(tmp_path))
    for path in compiled.compiled_files(d).values():
        os.remove(path)
    _write_manifest(d, "json")
    assert "the compile failed at install" in (compiled.why_not_compiled(d) or "")
    _fake_extensions(d)
    _write_manifest(d, "no_such_mypyc_runtime_module")
    assert compiled.why_not_compiled(d) == "mypyc's shared library no_such_mypyc_runtime_module is missing"
    os.remove(os.path.join(d, "_compiled.json"))
    assert "not compiled at install" in (compiled.why_not_compiled(d) or "")
