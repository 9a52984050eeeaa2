"""`taxiway keys create|list|revoke`: manage the API keys file a running balancer reads.

The keys file is `apikeys.file` from `--config` (default `.taxiway/keys.json`, relative to the
working directory, like the balancer resolves it), or `--file`. `create` prints the key once on
stdout (so `KEY=$(taxiway keys create ci)` works) and a note on stderr; only its hash is stored.
A running balancer notices changes within about a second (revocation needs no restart).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from taxiway.config import load_config, parse_duration
from taxiway.errors import UsageError
from taxiway.security.apikeys import ApiKey, KeyFile, iso_utc

HELP = "Create, list and revoke API keys (stored as hashes; a running balancer reloads them)."
DEFAULT_FILE = ".taxiway/keys.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = argparse.ArgumentParser(add_help=False)
    group = where.add_mutually_exclusive_group()
    group.add_argument("--config", help="read apikeys.file from this taxiway config")
    group.add_argument("--file", help=f"the keys file (default {DEFAULT_FILE})")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    c = sub.add_parser("create", parents=[where], help="make a key; it is printed once")
    c.add_argument("name", help="a name no active key has (a revoked key's name may be reused, "
                   "for rotation); logs show it instead of the key")
    c.add_argument("--scope", action="append", default=[], dest="scopes",
                   help="grant a scope (repeat for several)")
    c.add_argument("--expires", help="lifetime like 30d, 12h (default: never)")
    ls = sub.add_parser("list", parents=[where], help="show names, scopes and status (never keys)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    r = sub.add_parser("revoke", parents=[where], help="revoke a key by name or id")
    r.add_argument("name", help="the key's name or id")


def _key_file(args: argparse.Namespace) -> KeyFile:
    if getattr(args, "file", None):
        return KeyFile(args.file)
    if getattr(args, "config", None):
        return KeyFile(load_config(args.config).apikeys.file)
    return KeyFile(DEFAULT_FILE)


def _describe(k: ApiKey, now: float) -> dict[str, object]:
    return {"id": k.id, "name": k.name, "scopes": list(k.scopes), "created": iso_utc(k.created),
            "expires": iso_utc(k.expires), "status": k.status(now).value}


def run(args: argparse.Namespace) -> int:
    kf = _key_file(args)
    now = time.time()
    if args.action == "create":
        expires_s = None
        if args.expires:
            try:
                expires_s = parse_duration(args.expires)
            except ValueError as exc:
                raise UsageError(f"--expires: {exc}") from None
            if expires_s <= 0 or expires_s > 100 * 365 * 86400:
                raise UsageError("--expires: expected a positive duration up to 100 years, like 30d")
        try:
            key, rec = kf.create(args.name, args.scopes, expires_s, now)
        except OSError as exc:
            raise UsageError(f"cannot write the keys file {kf.path}: {exc.strerror or exc}") from None
        print(key)
        scopes = ", ".join(rec.scopes) or "none"
        expiry = f", expires {iso_utc(rec.expires)}" if rec.expires else ""
        print(f"created key {rec.name!r} (id {rec.id}, scopes: {scopes}{expiry}) in {kf.path}; "
              "it is shown only this once, store it now", file=sys.stderr)
        return 0
    if args.action == "list":
        rows = [_describe(k, now) for k in sorted(kf.load().values(), key=lambda k: k.created)]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        if not rows:
            print(f"no keys in {kf.path}")
            return 0
        header = ("ID", "NAME", "SCOPES", "CREATED", "EXPIRES", "STATUS")
        table = [header] + [(str(r["id"]), str(r["name"]), ",".join(r["scopes"]) or "-",  # type: ignore[arg-type]
                             str(r["created"]), str(r["expires"] or "never"), str(r["status"]))
                            for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        return 0
    if args.action == "revoke":
        for k in kf.revoke(args.name):
            print(f"revoked key {k.name!r} (id {k.id}); running balancers refuse it within ~1 s")
        return 0
    raise UsageError(f"unknown action {args.action!r}")
