"""Rolling deploys of the pool: which servers to start and which to retire, as a pure core.

When a reload (SIGHUP, `taxiway reload`) changes `[pool] command`, `env` or `cwd`, the pool rolls
to the new version the way a Kubernetes Deployment's RollingUpdate does: never more than
`desired + max_surge` servers live, never fewer than `desired - max_unavailable` ready, old
servers retired only as new ones become ready. A new server that does not become ready (it
exits, or `ready_timeout` passes) stops the rollout: no more new ones start, replacements use
the old version again, and the old servers go on serving.

Rules of this module (pure core, like policy.py):
1. No clock, no I/O, no processes: counts in, counts out (`step`), and a version string from
   the settings that define one (`version_of`).
2. The supervisor (autoscale/supervisor.py) carries out one step per tick and reports failures
   back (`Rollout.fail`); the autoscaler's `desired` counts both versions, so scaling goes on
   during a rollout.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


def version_of(command: str, env: dict[str, str], cwd: str) -> str:
    """A short, stable name for what a server runs: 8 hex digits of a hash of the command, the
    environment taxiway adds and the working directory (what `taxiway status` shows per server)."""
    blob = json.dumps([command, sorted(env.items()), cwd]).encode()
    return hashlib.blake2b(blob, digest_size=4).hexdigest()


@dataclass
class Rollout:
    """One rollout from version `old` to `new`; `failed` holds why it stopped, if it did."""

    old: str
    new: str
    started_at: float
    failed: str = ""
    done_at: float | None = None

    def fail(self, why: str) -> None:
        if not self.failed:
            self.failed = why

    @property
    def active(self) -> bool:
        return not self.failed and self.done_at is None


def step(desired: int, old_live: int, new_live: int, old_ready: int, new_ready: int,
         max_surge: int, max_unavailable: int) -> tuple[int, int]:
    """(new servers to start, old servers to retire) now, Kubernetes' RollingUpdate arithmetic:
    start while fewer than `desired + max_surge` are live and fewer than `desired` are new;
    retire old ones while more than `desired - max_unavailable` would still be ready."""
    floor = max(desired - max_unavailable, 0)
    start = max(0, min(desired + max_surge - (old_live + new_live), desired - new_live))
    retire = max(0, min(old_live, old_ready + new_ready - floor))
    return start, retire
