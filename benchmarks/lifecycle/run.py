"""Zero failed requests through a deployment's life: the counts for BENCHMARKS.md.

    .venv/bin/python benchmarks/lifecycle/run.py [--rounds 3] [--results DIR]

One harness with the tests: this runs `tests/test_lifecycle.py` (each event under closed-loop
load against a real `taxiway up`, with the test's assertions) `--rounds` times, and each test
appends what it measured to a JSON-lines file (requests, failed requests, the longest request,
the cold start where there is one). Printed: one row per event with the totals over the rounds;
written: DIR/result.json and DIR/chart.png (longest request and cold start per event).
Progress: pytest's line per test, and a line per round.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "lifecycle" / "results" /
                                          datetime.date.today().isoformat()))
    a = p.parse_args()
    if a.rounds < 1:
        print("--rounds: expected a number >= 1", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "events.jsonl"
        for r in range(1, a.rounds + 1):
            print(f"round {r}/{a.rounds}", flush=True)
            env = os.environ | {"TAXIWAY_LIFECYCLE_RESULTS": str(out)}
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   "tests/test_lifecycle.py"], cwd=ROOT, env=env)
            if proc.returncode != 0:
                print(f"round {r}: a test failed (its assertion says which event lost requests)",
                      file=sys.stderr)
                return 1
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    events: dict[str, Event] = {}
    for row in rows:
        e = events.setdefault(row["event"], Event(row["event"]))
        e.rounds += 1
        e.requests += row["requests"]
        e.failed += row["failed"]
        e.longest_s = max(e.longest_s, row["longest_s"])
        if row["cold_start_s"] is not None:
            e.cold_start_s = max(e.cold_start_s or 0.0, row["cold_start_s"])
    print(f"\n{'event':50} {'rounds':>6} {'requests':>9} {'failed':>7} {'longest s':>10} "
          f"{'cold start s':>13}")
    for e in events.values():
        cold = "" if e.cold_start_s is None else f"{e.cold_start_s:.2f}"
        print(f"{e.event:50} {e.rounds:>6} {e.requests:>9} {e.failed:>7} {e.longest_s:>10.2f} {cold:>13}")
    results = Path(a.results)
    results.mkdir(parents=True, exist_ok=True)
    summary = {"rounds": a.rounds, "events": [asdict(e) for e in events.values()]}
    (results / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    chart(list(events.values()), results / "chart.png")
    print(f"results: {results}")
    return 0


@dataclass
class Event:
    """One event's totals over the rounds."""

    event: str
    rounds: int = 0
    requests: int = 0
    failed: int = 0
    longest_s: float = 0.0
    cold_start_s: float | None = None


def chart(events: list[Event], path: Path) -> None:
    """Longest request and cold start per event (failed counts are in the title: all zero)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [e.event for e in events]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    y = range(len(names))
    ax.barh([i + 0.2 for i in y], [e.longest_s for e in events], 0.4, label="longest request (s)")
    ax.barh([i - 0.2 for i in y], [e.cold_start_s or 0.0 for e in events], 0.4, label="cold start (s)")
    ax.set_yticks(list(y), names, fontsize=8)
    failed = sum(e.failed for e in events)
    total = sum(e.requests for e in events)
    ax.set_title(f"taxiway up through its life: {failed} failed of {total:,} requests", fontsize=10)
    ax.set_xlabel("seconds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
