"""`taxiway check --config FILE`: validate without starting anything."""

from __future__ import annotations

import argparse

from taxiway.config import load_config

HELP = "Validate a configuration file and print a summary; exit 2 with one line naming the bad key."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="taxiway.toml", help="TOML file (default ./taxiway.toml)")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    pool = f", pool {cfg.pool.min}..{cfg.pool.max} x '{cfg.pool.command}'" if cfg.pool else ""
    print(f"{args.config}: ok: listen {cfg.listen.http or cfg.listen.https}, strategy "
          f"{cfg.balancer.strategy}, {len(cfg.servers)} static server(s){pool}")
    return 0
