# Sourced by demo.sh and test.sh: make ./.venv with taxiway and the given extras installed.
#   source scripts/venv.sh 'app,report'
# Works on a fresh Debian machine: installs python3-venv when the interpreter lacks it.
PY=${PYTHON:-python3}
if ! $PY -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "taxiway needs Python 3.11+ (found: $($PY --version 2>&1))" >&2; exit 2
fi
if ! $PY -c 'import venv, ensurepip' 2>/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || $PY -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[$1]"
