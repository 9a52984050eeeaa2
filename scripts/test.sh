#!/usr/bin/env bash
# Set up everything and run all the tests: the README's second command and what CI runs.
# Works on a fresh Debian machine: installs Python packages into .venv (compiling the proxy's hot
# path with mypyc when a C compiler is there); tests find a running PostgreSQL/Redis or start
# private ones (tests/services.py). Extra arguments go to pytest and skip the second pass.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh test
# The README's walkthrough, run by tests/test_docs.py, uses curl.
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; } || true
.venv/bin/ruff check src tests benchmarks examples setup.py
.venv/bin/mypy src/taxiway
.venv/bin/python -c 'import taxiway; print("hot path:", taxiway.BUILD)'
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
.venv/bin/python -m pytest -q
# Second pass: the proxy's and balancing's tests again on the Python sources, the build a
# machine without a C compiler runs and the code developers edit (the first pass ran the
# compiled modules).
TAXIWAY_PURE_PYTHON=1 exec .venv/bin/python -m pytest -q tests/test_proxy_*.py tests/test_balancing_*.py
