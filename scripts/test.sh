#!/usr/bin/env bash
# Set up everything and run all the tests: the README's second command and what CI runs.
# Works on a fresh Debian machine: installs Python packages into .venv; tests find a running
# PostgreSQL/Redis or start private ones (tests/services.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "taxiway needs Python 3.11+ (found: $($PY --version 2>&1))" >&2; exit 2
fi
if ! $PY -c 'import venv, ensurepip' 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || $PY -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/ruff check src tests benchmarks examples
exec .venv/bin/python -m pytest "$@"
