"""`taxiway check` as a new user runs it: it refuses what `lb`/`up` would refuse at start-up, and
only warns (exit 0) about what can be right: an unset secret, nothing to serve yet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taxiway.autoscale.command import check_programs
from taxiway.config import parse_config
from taxiway.errors import ConfigError

from .conftest import Processes, free_port, run_taxiway, taxiway_env, wait_for_port

BACKEND = "{python} -m taxiway backend --port {port}"


def check(cfg: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_taxiway("check", "-c", str(cfg), env=env)


def write(tmp_path: Path, text: str, name: str = "taxiway.toml") -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


def test_a_missing_field_is_named_in_taxiways_words(tmp_path: Path) -> None:
    f = write(tmp_path, '[[servers]]\nurl = "http://127.0.0.1:8001"\n[[servers]]\nweight = 2\n')
    r = check(f)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"taxiway: config error: {f}: servers[1].url: required (expected a URL like "
                        "'http://127.0.0.1:8001')\n")


# -- [pool] programs: found the way the supervisor's exec finds them ----------------------------

def test_a_program_that_is_not_on_path_is_refused_with_the_fix(tmp_path: Path) -> None:
    # The README-style `taxiway backend ...` run as `.venv/bin/taxiway up`: no `taxiway` on PATH.
    f = write(tmp_path, '[pool]\ncommand = "taxiway backend --port {port}"\n')
    r = check(f, taxiway_env() | {"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == (f"taxiway: config error: {f}: pool.command: program 'taxiway' not found on PATH; "
                        "write '{taxiway}' to run the taxiway you started\n")
    # ... and the fix it names passes.
    f.write_text('[pool]\ncommand = "{taxiway} backend --port {port}"\n')
    ok = check(f, taxiway_env() | {"PATH": "/usr/bin:/bin"})
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"{f}: ok: ") and "pool 1..4" in ok.stdout


def test_up_refuses_the_same_file_instead_of_crash_looping(tmp_path: Path) -> None:
    f = write(tmp_path, '[listen]\nhttp = "127.0.0.1:0"\n[admin]\nlisten = ""\n'
                        '[pool]\ncommand = "no-such-program-taxiway-test --port {port}"\n')
    r = subprocess.run([sys.executable, "-m", "taxiway", "up", "--plain", "-c", str(f)], capture_output=True,
                       text=True, env=taxiway_env(), timeout=60)
    assert r.returncode == 2
    assert "pool.command: program 'no-such-program-taxiway-test' not found on PATH" in r.stderr
    assert "connect to" not in r.stdout   # nothing started


@pytest.mark.parametrize(("pool", "message"), [
    pytest.param('command = "{{taxiwy}} backend --port {{port}}"',
                 "pool.command: program '{taxiwy}' not found on PATH; {taxiwy} is not a placeholder (those "
                 "are {python}, {taxiway}, {host}, {port} and {name})", id="no-such-placeholder"),
    pytest.param('command = "./run.sh {{port}}"',
                 "pool.command: program './run.sh' not found (at {cwd}/run.sh)", id="relative-path"),
    pytest.param('command = "./app.py {{port}}"',
                 "pool.command: program './app.py' is not executable (chmod +x it, or run it with its "
                 "interpreter)", id="not-executable"),
    pytest.param('setup = ["migrate-taxiway-test --all"]\ncommand = "{BACKEND}"',
                 "pool.setup[0]: program 'migrate-taxiway-test' not found on PATH (is it installed? a "
                 "program in a virtualenv needs its full path, or '{python} -m ...')", id="setup"),
    pytest.param('command = "gunicorn-taxiway-test -b {{host}}:{{port}}"\n[pool.env]\nPATH = "/nonexistent"',
                 "pool.command: program 'gunicorn-taxiway-test' not found on pool.env.PATH (is it "
                 "installed? a program in a virtualenv needs its full path, or '{python} -m ...')",
                 id="pool-env-path"),
    pytest.param('cwd = "app"\ncommand = "{BACKEND}"',
                 "pool.cwd: expected an existing directory (a relative path starts at the config file's) "
                 "(got '{cwd}/app')", id="missing-cwd"),
])
def test_programs_that_cannot_start_are_refused(tmp_path: Path, pool: str, message: str) -> None:
    (tmp_path / "app.py").write_text("print('hi')\n")   # not chmod +x
    f = write(tmp_path, "[pool]\n" + pool.format(BACKEND=BACKEND) + "\n")
    r = check(f)
    assert r.returncode == 2
    assert r.stderr == f"taxiway: config error: {f}: " + message.replace("{cwd}", str(tmp_path)) + "\n"


def test_programs_are_found_like_exec_finds_them(tmp_path: Path) -> None:
    """Paths with '/' start at pool.cwd (relative to the config file); names use pool.env's PATH."""
    app = tmp_path / "app"
    (app / "bin").mkdir(parents=True)
    for name in ("serve", "tool"):
        (app / "bin" / name).write_text("#!/bin/sh\n")
        (app / "bin" / name).chmod(0o755)
    raw = {"pool": {"cwd": "app", "command": "bin/serve --port {port}",
                    "setup": ["tool", "./bin/serve --check"], "env": {"PATH": f"bin{os.pathsep}/usr/bin"}}}
    assert check_programs(parse_config(raw, env={}), str(tmp_path / "taxiway.toml")) == []


def test_a_program_an_earlier_setup_step_may_create_is_a_warning(tmp_path: Path) -> None:
    f = write(tmp_path, '[pool]\nsetup = ["{python} -m venv .venv"]\n'
                        'command = ".venv/bin/gunicorn app.wsgi -b {host}:{port}"\n')
    r = check(f)
    assert r.returncode == 0, r.stderr
    assert r.stderr == (f"taxiway: warning: {f}: pool.command: program '.venv/bin/gunicorn' not found yet; "
                        "fine if an earlier pool.setup step creates it\n")
    assert r.stdout.startswith(f"{f}: ok: ")


def test_check_programs_raises_a_config_error_naming_the_key(tmp_path: Path) -> None:
    cfg = parse_config({"pool": {"command": "nope-taxiway-test {port}"}}, env={})
    with pytest.raises(ConfigError) as info:
        check_programs(cfg, str(tmp_path / "x.toml"))
    assert info.value.key == "pool.command" and info.value.source == str(tmp_path / "x.toml")


# -- warnings, not errors ------------------------------------------------------------------------

def test_nothing_to_serve_is_a_warning(tmp_path: Path) -> None:
    f = write(tmp_path, '[listen]\nhttp = "127.0.0.1:8080"\n')
    r = check(f)
    assert r.returncode == 0
    assert r.stderr == (f"taxiway: warning: {f}: nothing to serve: no [[servers]] and no [pool]; "
                        "every request will get 503\n")
    assert r.stdout == f"{f}: ok: listen 127.0.0.1:8080, strategy least-connections, 0 static server(s)\n"
    f.write_text('[[servers]]\nurl = "http://127.0.0.1:9001"\n')
    assert check(f).stderr == ""


def test_unset_secrets_are_warnings_and_the_rest_is_still_checked(tmp_path: Path) -> None:
    secrets = ("DJANGO_SECRET_KEY", "TAXIWAY_AFFINITY_SECRET")
    env = {k: v for k, v in taxiway_env().items() if k not in secrets}
    f = write(tmp_path, f"""
[affinity]
mode = "cookie"
secret = "${{TAXIWAY_AFFINITY_SECRET}}"
[pool]
command = "{BACKEND}"
[pool.env]
DJANGO_SECRET_KEY = "${{DJANGO_SECRET_KEY}}"
""")
    r = check(f, env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        f"taxiway: warning: {f}: affinity.secret: environment variable TAXIWAY_AFFINITY_SECRET is not set; "
        "lb/up will refuse to start without it",
        f"taxiway: warning: {f}: pool.env.DJANGO_SECRET_KEY: environment variable DJANGO_SECRET_KEY is not "
        "set; lb/up will refuse to start without it",
    ]
    assert r.stdout.startswith(f"{f}: ok: ")
    # A real mistake elsewhere in the file is still found, after the warnings.
    f.write_text(f.read_text().replace("[pool]\n", '[pool]\nmin = "two"\n'))
    bad = check(f, env)
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[-1] == \
        f"taxiway: config error: {f}: pool.min: expected a whole number, got 'two'"
    # `up` still refuses to start without the secret.
    f.write_text(f.read_text().replace('min = "two"\n', ""))
    up = subprocess.run([sys.executable, "-m", "taxiway", "up", "--plain", "-c", str(f)], capture_output=True,
                        text=True, env=env, timeout=60)
    assert up.returncode == 2
    assert "affinity.secret: expected the environment variable TAXIWAY_AFFINITY_SECRET to be set" in up.stderr


def test_up_runs_a_program_setup_creates_and_refuses_one_it_did_not(procs: Processes, tmp_path: Path) -> None:
    port = free_port()
    source, serve = tmp_path / "serve.src", tmp_path / "serve"
    source.write_text(f"#!/bin/sh\nexec {sys.executable} -m taxiway backend --port $1\n")
    source.chmod(0o755)
    f = write(tmp_path, f'[listen]\nhttp = "127.0.0.1:{port}"\n[admin]\nlisten = ""\n'
                        '[pool]\nsetup = ["cp -p serve.src serve"]\ncommand = "./serve {port}"\nmin = 1\n')
    assert "not found yet" in check(f).stderr   # before setup it cannot be judged
    out = tmp_path / "up.out"
    with open(out, "wb") as fh:
        up = procs.taxiway("up", "--plain", "-c", str(f), stdout=fh.fileno())
        wait_for_port(port, proc=up)
        deadline = time.monotonic() + 30
        while "started app-" not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=60) == 0
    text = out.read_text()
    assert "started app-" in text and "cannot start" not in text, text
    # A setup that does not create it: refused once setup has run, instead of a crash loop.
    serve.unlink()
    f.write_text(f.read_text().replace("cp -p serve.src serve", "true"))
    r = subprocess.run([sys.executable, "-m", "taxiway", "up", "--plain", "-c", str(f)], capture_output=True,
                       text=True, env=taxiway_env(), timeout=60)
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == (f"taxiway: config error: {f}: pool.command: program './serve' not "
                                         f"found after pool.setup ran (at {serve})")


@pytest.mark.parametrize("pool", [
    pytest.param('cwd = "${APP_DIR}"\ncommand = "{BACKEND}"', id="cwd"),
    pytest.param('setup = ["${MIGRATE}"]\ncommand = "{BACKEND}"', id="setup"),
])
def test_an_unset_variable_is_not_judged_as_a_program_or_directory(tmp_path: Path, pool: str) -> None:
    """`check` goes on with a stand-in for an unset ${VAR}: it must not then refuse the stand-in."""
    f = write(tmp_path, "[pool]\n" + pool.replace("{BACKEND}", BACKEND) + "\n")
    r = check(f)
    assert r.returncode == 0, r.stderr
    assert "environment variable" in r.stderr and "unset-variable" not in r.stderr
