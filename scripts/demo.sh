#!/usr/bin/env bash
# The main job: the flights app on an autoscaled pool of gunicorn servers behind the balancer
# (README's first command). Needs only Python 3.11+; SQLite and Django's database cache.
#   bash scripts/demo.sh             set up (skipped when nothing changed), then run the demo;
#                                    open http://127.0.0.1:8080 (Ctrl-C stops everything)
#   bash scripts/demo.sh --load [S]  from a second terminal: S seconds (default 90) of load that
#                                    makes the pool grow to its max, then nothing, so it shrinks
#   bash scripts/demo.sh --password  print the demo users' password
# Secrets are made once into examples/flights/.taxiway/ (gitignored, mode 600) unless the
# environment has them: DJANGO_SECRET_KEY (sessions survive restarts) and FLIGHTS_DEMO_PASSWORD
# (the password of the seeded users user1..user20, set again at every start).
set -euo pipefail
cd "$(dirname "$0")/.."
state=examples/flights/.taxiway

secret() {   # secret NAME FILE: $NAME from the environment, else FILE (made once)
  local name=$1 file=$state/$2
  if [ -z "${!name:-}" ]; then
    if [ ! -s "$file" ]; then
      mkdir -p "$state"
      (umask 077; python3 -c 'import secrets; print(secrets.token_urlsafe(int(__import__("sys").argv[1])))' \
        "$3" > "$file")
    fi
    printf -v "$name" '%s' "$(cat "$file")"
  fi
  export "${name?}"
}

case "${1:-}" in
  --password)
    secret FLIGHTS_DEMO_PASSWORD demo_password 9
    echo "$FLIGHTS_DEMO_PASSWORD"
    exit 0 ;;
  --load)
    seconds=${2:-90}
    # (taxiway bench says so, in one line, when nothing answers: start the demo first.)
    # 120 users with no think time keep about 100 requests in flight: at the target of 4 per
    # server the autoscaler wants more than its max of 6 (measured: 6 servers ready 8 s into the
    # ramp). Ramp up over 10 s, hold, ramp down; once the load is gone the pool shrinks back to
    # 2 after scale_down_window (60 s).
    hold=$(( seconds > 30 ? seconds - 20 : 10 ))
    echo "demo: ${seconds} s of load on /; watch the demo's terminal (or: .venv/bin/taxiway status)"
    exec .venv/bin/taxiway bench http://127.0.0.1:8080/ --stages "10s:120,${hold}s:120,10s:0"
    ;;
  "") ;;
  *) echo "usage: bash scripts/demo.sh [--load [SECONDS] | --password]" >&2; exit 2 ;;
esac

source scripts/venv.sh 'app,report'
secret DJANGO_SECRET_KEY secret_key 50
secret FLIGHTS_DEMO_PASSWORD demo_password 9
echo "demo: log in as user1 .. user20 with the password $FLIGHTS_DEMO_PASSWORD" \
     "(again: bash scripts/demo.sh --password)"
echo "demo: load that makes the pool scale, from a second terminal: bash scripts/demo.sh --load"
exec .venv/bin/taxiway up --config taxiway.toml
