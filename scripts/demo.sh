#!/usr/bin/env bash
# Set up and run the main job: the flights app on an autoscaled pool behind the balancer
# (README's first command). Needs only Python 3.11+; SQLite and Django's database cache.
#   bash scripts/demo.sh            then open http://127.0.0.1:8080 (Ctrl-C stops everything)
# DJANGO_SECRET_KEY: taken from the environment, else generated once into
# examples/flights/.taxiway/secret_key (gitignored, mode 600) so sessions survive restarts.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh 'app,report'
if [ -z "${DJANGO_SECRET_KEY:-}" ]; then
  keyfile=examples/flights/.taxiway/secret_key
  if [ ! -s "$keyfile" ]; then
    mkdir -p "$(dirname "$keyfile")"
    (umask 077; .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(50))' > "$keyfile")
  fi
  DJANGO_SECRET_KEY=$(cat "$keyfile")
fi
export DJANGO_SECRET_KEY
exec .venv/bin/taxiway up --config taxiway.toml "$@"
