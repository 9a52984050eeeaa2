"""How the fuzz targets turn violations into a crash, a note, or a replay report.

Why apart from invariants.py: that module only computes; this one decides and prints. Two needs
pull in different directions: CI must fail on any broken invariant, while a long hand run that
stopped at the first known (already reported) break would learn nothing more. So `Triage` lets
kinds named in TAXIWAY_FUZZ_ALLOW pass (printing the first input of each), and `replay` runs a
whole corpus and lists every failing input instead of stopping at the first one, as libFuzzer does.
"""

from __future__ import annotations

import hashlib
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from tests.fuzz.invariants import KINDS, Violation

SAVE_PER_KIND = 300


class FuzzFailure(AssertionError):
    """An invariant broke: atheris reports the traceback and saves the input as a crash."""


class Triage:
    """Raises FuzzFailure for violations, except kinds `allowed` (known and reported): those are
    printed once each with their input, so a long hand run keeps looking for new ones."""

    def __init__(self, allowed: str = "", save_dir: str = "") -> None:
        self.allowed = {k.strip() for k in allowed.split(",") if k.strip()}
        # TAXIWAY_FUZZ_SAVE: a directory for the inputs of allowed violations (the first
        # SAVE_PER_KIND of each kind), to sort after a long run whether one is a new way in.
        self.save_dir = Path(save_dir) if save_dir else None
        unknown = self.allowed - KINDS.keys()
        if unknown:
            raise ValueError(f"TAXIWAY_FUZZ_ALLOW: unknown kinds {sorted(unknown)}; known: {sorted(KINDS)}")
        self.seen: dict[str, int] = {}

    def judge(self, violations: list[Violation], data: bytes, context: str = "") -> None:
        fatal = [v for v in violations if v.kind not in self.allowed]
        for v in violations:
            if v.kind in self.allowed:
                self.seen[v.kind] = self.seen.get(v.kind, 0) + 1
                if self.seen[v.kind] == 1:
                    print(f"\n== allowed violation (first of its kind) {v}\n   input: {data[:2000]!r}",
                          flush=True)
                if self.save_dir is not None and self.seen[v.kind] <= SAVE_PER_KIND:
                    self.save_dir.mkdir(parents=True, exist_ok=True)
                    (self.save_dir / f"{v.kind}-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)
        if fatal:
            lines = [str(v) for v in fatal[:10]]
            raise FuzzFailure("\n".join([*lines, f"input ({len(data)} bytes): {data[:4000]!r}", context]))


def replay(paths: list[str], target: Callable[[bytes], None]) -> int:
    """Run `target` once on every file in `paths` (files or directories); print one line per
    failing input and its first violation, then a count. Returns the exit status (1: failures)."""
    files = sorted(f for p in map(Path, paths) for f in (p.iterdir() if p.is_dir() else [p]) if f.is_file())
    failed = 0
    for f in files:
        try:
            target(f.read_bytes())
        except Exception as exc:
            failed += 1
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            kinds = sorted({line.split("]")[0] + "]" for line in str(exc).splitlines()
                            if line.startswith("[")})
            print(f"FAIL {f.name}: {' '.join(kinds) or type(exc).__name__} {first[:300]}", flush=True)
            if not isinstance(exc, FuzzFailure):
                traceback.print_exc(file=sys.stdout)
    print(f"replayed {len(files)} inputs, {failed} failed", flush=True)
    return 1 if failed else 0
