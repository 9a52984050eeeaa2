# Sourced by demo.sh and test.sh: make ./.venv with taxiway and the given extras installed.
#   source scripts/venv.sh 'app,report'
# Works on a fresh Debian machine: installs python3-venv when the interpreter lacks it.
# Says what it does, step by step with the time each took, and skips pip entirely when nothing
# it would install has changed since the last run: a stamp in .venv records a digest of
# pyproject.toml, setup.py and the compiled modules' sources (the only sources an editable
# install builds), and which extras are in. Any other source edit needs no reinstall.
# TAXIWAY_REINSTALL=1 forces one.
PY=${PYTHON:-python3}
_setup_t0=$(date +%s.%N)

_say() { printf 'setup: %s\n' "$*"; }
_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'; }

if ! $PY -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "taxiway needs Python 3.11+ (found: $($PY --version 2>&1))" >&2; exit 2
fi
if ! $PY -c 'import venv, ensurepip' 2>/dev/null; then
  _say "installing python3-venv (apt)"
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  _t=$(date +%s.%N)
  $PY -m venv .venv
  _say "made .venv ($(_since "$_t"))"
fi

# The digest an install depends on, and the extras wanted (test brings app and report too).
_digest=$($PY - <<'EOF'
import hashlib, importlib.util, pathlib, sys
spec = importlib.util.spec_from_file_location("_c", "src/taxiway/compiled.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
h = hashlib.sha256(sys.version.encode())
for name in ("pyproject.toml", "setup.py"):
    h.update(pathlib.Path(name).read_bytes())
h.update(repr(sorted(mod.source_digests("src/taxiway").items())).encode())
h.update(b"TAXIWAY_COMPILE=" + __import__("os").environ.get("TAXIWAY_COMPILE", "").encode())
print(h.hexdigest())
EOF
)
# The extras asked for and those they bring in (`test` lists `taxiway[app,report]`), as pip reads them.
_wanted=$($PY - "$1" <<'EOF'
import re, sys, tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
todo, seen = sys.argv[1].split(","), set()
while todo:
    name = todo.pop()
    if name and name not in seen:
        seen.add(name)
        for req in extras[name]:
            m = re.match(r"taxiway\[([^\]]+)\]", req)
            todo += m.group(1).split(",") if m else []
print("\n".join(sorted(seen | {"taxiway"})))   # (taxiway itself: a new venv has nothing)
EOF
)
_stamp=.venv/taxiway-install.stamp
_have=""
if [ -f "$_stamp" ] && [ "$(head -1 "$_stamp")" = "$_digest" ] && [ -z "${TAXIWAY_REINSTALL:-}" ]; then
  _have=$(tail -n +2 "$_stamp")
fi
_missing=$(comm -23 <(echo "$_wanted") <(echo "$_have" | sort -u) | grep -v '^$' || true)

if [ -z "$_missing" ]; then
  _say "taxiway [$1] already installed, nothing changed since ($(_since "$_setup_t0"))"
else
  _t=$(date +%s.%N)
  if [ -n "$_have" ]; then
    _say "installing the packages of [$(echo $_missing | tr ' ' ',')] into .venv"
  else
    _say "installing taxiway [$1] into .venv: downloads the packages, then compiles the proxy's"
    _say "  hot path to C with mypyc (about a minute the first time; skipped next time)"
  fi
  if [ -n "$_have" ]; then
    # taxiway itself is current: only the missing extras' packages, no rebuild of the hot path.
    mapfile -t _what < <($PY - $_missing <<'EOF'
import sys, tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
for name in sys.argv[1:]:
    for req in extras.get(name, ()):
        if not req.startswith("taxiway["):
            print(req)
EOF
)
  else
    rm -f "$_stamp"
    _say "  upgrading pip"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true   # optional: old pips work too
    _what=(-e ".[$1]")
  fi
  # pip's own lines, shortened to one per step; a line every 15 s while a step is silent.
  _log=.venv/pip-install.log
  set +e
  .venv/bin/python -m pip install --progress-bar off "${_what[@]}" >"$_log" 2>&1 &
  _pip=$!
  _last="starting pip"
  while kill -0 "$_pip" 2>/dev/null; do
    sleep 3
    _now=$(grep -E '^(Collecting|Building|Installing collected|Successfully)' "$_log" | tail -1 | cut -c1-90)
    if [ -n "$_now" ] && [ "$_now" != "$_last" ]; then
      _say "  [$(_since "$_t")] $_now"; _last=$_now; _quiet=0
    else
      _quiet=$(( ${_quiet:-0} + 3 ))
      if [ "$_quiet" -ge 15 ]; then _say "  [$(_since "$_t")] still working: $_last"; _quiet=0; fi
    fi
  done
  wait "$_pip"; _rc=$?
  set -e
  if [ "$_rc" -ne 0 ]; then
    tail -25 "$_log" >&2
    echo "setup: pip failed (exit $_rc); the whole log is in $_log" >&2
    exit "$_rc"
  fi
  { echo "$_digest"; { echo "$_wanted"; echo "$_have"; } | grep -v '^$' | sort -u; } > "$_stamp"
  _say "installed ($(_since "$_t")); hot path: $(.venv/bin/python -c 'import taxiway; print(taxiway.BUILD)')"
fi
