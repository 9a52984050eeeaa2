#!/usr/bin/env bash
# Run the flights app behind taxiway: autoscaled gunicorn pool, database sessions, no stickiness.
#   bash examples/flights/run.sh [--flights N]      then open http://127.0.0.1:8080
# Needs nothing installed beyond `pip install -e '.[app]'`: SQLite + Django's database cache.
# DJANGO_SECRET_KEY: taken from the environment, else generated once into .taxiway/secret_key
# (gitignored, mode 600) so that sessions survive restarts. Never commit it.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
FLIGHTS=10000
if [ "${1:-}" = "--flights" ]; then FLIGHTS=$2; shift 2; fi
if [ -z "${DJANGO_SECRET_KEY:-}" ]; then
  mkdir -p .taxiway
  if [ ! -s .taxiway/secret_key ]; then
    (umask 077; "$PY" -c 'import secrets; print(secrets.token_urlsafe(50))' > .taxiway/secret_key)
  fi
  DJANGO_SECRET_KEY=$(cat .taxiway/secret_key)
fi
export DJANGO_SECRET_KEY
"$PY" manage.py prepare
"$PY" manage.py seed --flights "$FLIGHTS" --if-empty
exec "$PY" -m taxiway up --config taxiway.toml "$@"
