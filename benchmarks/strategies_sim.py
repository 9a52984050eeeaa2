"""Compare every balancing strategy in the virtual-time simulator (no sockets, deterministic).

    .venv/bin/python benchmarks/strategies_sim.py [--requests N] [--seed S] [--markdown]

Scenarios (all servers weight 1: the balancer is NOT told which server is slow):
  uniform     4 equal servers, every request costs the same (10 ms), 70 % load.
  mixed       4 equal servers; 90 % of requests cost 10 ms and 10 % cost 200 ms; 70 % load.
  mixed+slow  4 servers, one 3x slower (a noisy neighbour, an old VM); 90 % of requests cost
              10 ms and 10 % cost 200 ms; 70 % of the pool's total capacity.
Each server runs 2 requests at once and queues the rest (a gunicorn with 2 sync workers).
Prints mean/p50/p99 latency, the largest and smallest share of requests, and the slow server's
share. The same strategy classes the proxy uses make every decision.
"""

from __future__ import annotations

import argparse
import random
import timeit

from taxiway.balancing.model import Server
from taxiway.balancing.simulate import SimResult, SimServer, make_requests, simulate
from taxiway.balancing.strategies import STRATEGIES, ConsistentHash

ORDER = ["random", "round-robin", "weighted-round-robin", "least-connections", "power-of-two",
         "peak-ewma", "consistent-hash"]
UNIT_PER_S = 100.0          # speed 100 units/s: a 1-unit request takes 10 ms
WORKERS = 2
LOAD = 0.7


def scenario(name: str) -> tuple[list[float], list[tuple[float, float]]]:
    """(server speeds, cost mix) of a scenario."""
    if name == "uniform":
        return [UNIT_PER_S] * 4, [(1.0, 1.0)]
    if name == "mixed":
        return [UNIT_PER_S] * 4, [(0.9, 1.0), (0.1, 20.0)]
    return [UNIT_PER_S, UNIT_PER_S, UNIT_PER_S, UNIT_PER_S / 3], [(0.9, 1.0), (0.1, 20.0)]


def run(name: str, strategy_name: str, n: int, seed: int) -> SimResult:
    speeds, costs = scenario(name)
    mean_cost = sum(p * c for p, c in costs)
    capacity_rps = sum(s * WORKERS for s in speeds) / mean_cost
    requests = make_requests(n, LOAD * capacity_rps, random.Random(seed), costs=costs)
    sims = [SimServer(Server(f"s{i}", "sim", i), speed=sp, workers=WORKERS) for i, sp in enumerate(speeds)]
    strategy = STRATEGIES[strategy_name](random.Random(seed + 1))
    if isinstance(strategy, ConsistentHash):
        strategy.balance_factor = 1.25
    return simulate(strategy, sims, requests, random.Random(seed + 2))


def pick_cost() -> None:
    """Wall-clock cost of one `pick` (the proxy calls it once per request): best of 5 runs."""
    print("\npick cost (ns per call, best of 5; noisy on a shared machine)")
    print(f"{'strategy':<22}{'4 servers':>12}{'32 servers':>12}")
    for strategy_name in ORDER:
        cells = []
        for n in (4, 32):
            pool = [Server(f"s{i}", "sim", i, weight=1 + i % 3, inflight=i % 5) for i in range(n)]
            for s in pool:
                s.process_latency(0.01 * (1 + s.port % 4), 1.0)
            strategy = STRATEGIES[strategy_name](random.Random(1))
            t = min(timeit.repeat(lambda st=strategy, p=pool: st.pick(p, "10.1.2.3", 2.0),
                                  number=20_000, repeat=5)) / 20_000
            cells.append(f"{t * 1e9:.0f}")
        print(f"{strategy_name:<22}{cells[0]:>12}{cells[1]:>12}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=40_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables (for the README)")
    ap.add_argument("--pick-cost", action="store_true", help="only time one pick per strategy")
    args = ap.parse_args()
    if args.pick_cost:
        pick_cost()
        return 0
    for name in ("uniform", "mixed", "mixed+slow"):
        speeds, _ = scenario(name)
        slow = speeds.index(min(speeds)) if len(set(speeds)) > 1 else None
        print(f"\nscenario {name}: {args.requests} requests, seed {args.seed}, load {LOAD:.0%}")
        head = ["strategy", "mean ms", "p50 ms", "p99 ms", "max share", "min share", "slow server share"]
        if args.markdown:
            print("| " + " | ".join(head) + " |")
            print("|" + "---|" * len(head))
        else:
            print(f"{head[0]:<22}" + "".join(f"{h:>12}" for h in head[1:6]) + f"{head[6]:>20}")
        for strategy_name in ORDER:
            r = run(name, strategy_name, args.requests, args.seed)
            slow_share = f"{r.servers[slow].share:.1%}" if slow is not None else "-"
            cells = [strategy_name, f"{r.mean_s * 1e3:.1f}", f"{r.p50_s * 1e3:.1f}", f"{r.p99_s * 1e3:.1f}",
                     f"{r.max_share:.1%}", f"{r.min_share:.1%}", slow_share]
            if args.markdown:
                print("| " + " | ".join(cells) + " |")
            else:
                print(f"{cells[0]:<22}" + "".join(f"{c:>12}" for c in cells[1:6]) + f"{cells[6]:>20}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
