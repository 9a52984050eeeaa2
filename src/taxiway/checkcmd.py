"""`taxiway check --config FILE`: validate without starting anything.

It refuses (one line, exit 2) what `lb` or `up` would refuse at start-up: the file's rules, and a
[pool] whose programs are not there (`check_programs`, which `up` runs too). Some things are
warnings instead (stderr, `taxiway: warning: FILE: ...`, exit 0), because the file can be right:
- an unset `${VAR}`: check often runs where the secrets are not (a laptop, CI); the rest of the
  file is still checked, with a stand-in value. `lb` and `up` still refuse to start without it.
- nothing to serve (no [[servers]], no [pool]): a balancer whose servers arrive by reload (SIGHUP)
  is legitimate, HAProxy accepts an empty backend too, and `lb` itself starts and answers 503.
  Refusing would turn a state the balancer supports into one `check` calls broken.
- a pool program an earlier pool.setup step may create (a venv, `npm install`).
The one-line ok summary stays on stdout, so scripts can keep reading it.

`taxiway check --reference` prints every setting of the schema (key, type, default) as a Markdown
table, generated from `config.Config` itself, so the reference in docs/configuration.md cannot
drift from the code (a test compares them).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import msgspec
import msgspec.inspect as mi

from taxiway.config import Config, Duration, Size, load_config

HELP = ("Validate a configuration file and print a summary; exit 2 with one line naming the bad key. "
        "Warnings (an unset ${VAR}, nothing to serve) go to stderr and keep exit 0. "
        "--reference prints every setting with its type and default.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default="taxiway.toml", help="TOML file (default ./taxiway.toml)")
    p.add_argument("--reference", action="store_true",
                   help="print the table of every setting (Markdown) instead of checking a file")


def run(args: argparse.Namespace) -> int:
    if args.reference:
        print(reference_markdown())
        return 0
    unset: list[tuple[str, str]] = []
    cfg = load_config(args.config, unset_env=unset)
    warnings = [f"{key}: environment variable {var} is not set; lb/up will refuse to start without it"
                for key, var in unset]
    if not cfg.servers and cfg.pool is None:
        warnings.append("nothing to serve: no [[servers]] and no [pool]; every request will get 503")
    for warning in warnings:   # before check_programs, which may refuse the file: both are news
        print(f"taxiway: warning: {args.config}: {warning}", file=sys.stderr)
    if cfg.pool is not None:
        from taxiway.autoscale.command import check_programs  # uvloop & co only for a [pool]

        for warning in check_programs(cfg, args.config, unset=frozenset(key for key, _ in unset)):
            print(f"taxiway: warning: {args.config}: {warning}", file=sys.stderr)
    pool = f", pool {cfg.pool.min}..{cfg.pool.max} x '{cfg.pool.command}'" if cfg.pool else ""
    print(f"{args.config}: ok: listen {cfg.listen.http or cfg.listen.https}, strategy "
          f"{cfg.balancer.strategy}, {len(cfg.servers)} static server(s){pool}")
    return 0


def _type_name(t: Any) -> str:
    if isinstance(t, mi.LiteralType):
        return " \\| ".join(f'`"{v}"`' for v in t.values)
    if isinstance(t, mi.UnionType):
        return " or ".join(_type_name(x) for x in t.types if not isinstance(x, mi.NoneType))
    if isinstance(t, mi.ListType):
        return f"list of {_type_name(t.item_type)}"
    if isinstance(t, mi.DictType):
        return "table of strings"
    if isinstance(t, mi.CustomType):
        return {"Duration": "duration", "Size": "size", "Rate": "rate"}.get(t.cls.__name__, t.cls.__name__)
    if isinstance(t, mi.StructType):
        return "table"
    return type(t).__name__.removesuffix("Type").lower()


def _default(f: Any) -> str:
    if f.default is not msgspec.NODEFAULT:
        value = f.default
    elif f.default_factory is not msgspec.NODEFAULT:
        value = f.default_factory()
        if isinstance(value, msgspec.Struct):
            return ""
    else:
        return "(required)"
    if value is None:
        return "(unset)"
    if isinstance(value, Duration):
        return f'`"{_duration_text(float(value))}"`'
    if isinstance(value, Size):
        return f"`{int(value)}`"
    return f"`{json.dumps(value)}`"


def _duration_text(v: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if v >= size and v % size == 0:
            return f"{v / size:g}{unit}"
    return f"{v * 1000:g}ms" if 0 < v < 1 else f"{v:g}s"


def _rows(info: Any, prefix: str) -> list[str]:
    rows = []
    for f in info.fields:
        t = f.type
        inner = next((x for x in getattr(t, "types", ()) if isinstance(x, mi.StructType)), None)
        if isinstance(t, mi.StructType) or inner is not None:
            rows += _rows(inner or t, f"{prefix}{f.name}.")
        elif isinstance(t, mi.ListType) and isinstance(t.item_type, mi.StructType):
            rows += _rows(t.item_type, f"{prefix}{f.name}[].")
        else:
            rows.append(f"| `{prefix}{f.name}` | {_type_name(t)} | {_default(f)} |")
    return rows


def reference_markdown() -> str:
    """Every setting as `| key | type | default |` rows, in schema order."""
    head = ["| key | type | default |", "|---|---|---|"]
    return "\n".join(head + _rows(mi.type_info(Config), ""))
