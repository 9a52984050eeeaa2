#!/usr/bin/env bash
# Set up everything and run all the tests: the README's second command and what CI runs.
# Works on a fresh Debian machine: installs Python packages into .venv; tests find a running
# PostgreSQL/Redis or start private ones (tests/services.py). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh test
.venv/bin/ruff check src tests benchmarks examples
exec .venv/bin/python -m pytest "$@"
