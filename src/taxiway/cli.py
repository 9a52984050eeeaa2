"""The `taxiway` command. Each verb lives in its component's package, named in `VERBS`.

A verb module exposes `HELP: str`, `add_arguments(parser)` and `run(args) -> int`. This is the only
module that calls `sys.exit`; `TaxiwayError`s become one line on stderr and a non-zero status.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from taxiway import __version__
from taxiway.errors import ConfigError, TaxiwayError

# verb -> (module, one-line help). Explicit, no import side effects (like uvicorn's HTTP_PROTOCOLS).
VERBS: dict[str, tuple[str, str]] = {
    "lb": ("taxiway.proxy.command", "run the load balancer"),
    "up": ("taxiway.autoscale.command", "run the balancer and an autoscaled pool of app servers"),
    "check": ("taxiway.checkcmd", "validate a config file without starting anything"),
    "status": ("taxiway.admin.command", "print a running balancer's state from its admin API"),
    "reload": ("taxiway.admin.reloadcmd", "make a running balancer re-read its config (rolls the pool)"),
    "upgrade": ("taxiway.admin.upgradecmd", "replace a running balancer by a new process, dropping nothing"),
    "bench": ("taxiway.bench.command", "measure how many users a deployment can serve"),
    "keys": ("taxiway.security.keyscmd", "create, list and revoke API keys"),
    "cert": ("taxiway.security.certcmd", "make a local CA and certificate for development"),
    "backend": ("taxiway.testing.backend", "a small built-in HTTP test server (demos, tests, benchmarks)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taxiway",
        description="Run a web application on many servers: balance, scale, secure, measure.",
    )
    parser.add_argument("--version", action="version", version=f"taxiway {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (module_name, help_text) in VERBS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(verb, help=help_text, description=getattr(module, "HELP", help_text))
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except ConfigError as exc:
        print(f"taxiway: config error: {exc}", file=sys.stderr)
        return 2
    except TaxiwayError as exc:
        print(f"taxiway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
