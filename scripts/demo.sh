#!/usr/bin/env bash
# Set up and run the main job: the demo behind the balancer (README's first command).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || $PY -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[app,report]'
exec .venv/bin/taxiway up --config taxiway.toml "$@"
