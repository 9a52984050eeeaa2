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
# Strict on the pure cores and the typed proxy (the code mypyc compiles or that decides alone).
.venv/bin/mypy --strict src/taxiway/balancing src/taxiway/proxy src/taxiway/autoscale/policy.py \
  src/taxiway/autoscale/meter.py src/taxiway/security/ratelimit.py src/taxiway/bench/schedule.py \
  src/taxiway/bench/capacity.py
.venv/bin/python -c 'import taxiway; print("hot path:", taxiway.BUILD)'
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
rm -rf .coverage-data
.venv/bin/python -m coverage run -m pytest -q
# Second pass: the proxy's and balancing's tests again on the Python sources, the build a
# machine without a C compiler runs and the code developers edit (the first pass ran the
# compiled modules, which coverage cannot see; this pass measures them).
TAXIWAY_PURE_PYTHON=1 .venv/bin/python -m coverage run -m pytest -q tests/test_proxy_*.py tests/test_balancing_*.py
# Branch coverage of src/taxiway, both passes combined, in-process code only (docs/development.md):
# the floor is what was measured, so it can only go up.
.venv/bin/python -m coverage combine -q
.venv/bin/python -m coverage report --format=total --fail-under="$(cat .ci/coverage-floor)" \
  | sed 's/^/branch coverage (%): /'

