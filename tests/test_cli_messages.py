"""Start-up failures a new user meets in the first hour, as one line naming the setting to change."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Processes, free_port, run_cli, run_taxiway, taxiway_env, wait_for_port

IN_USE = "address already in use (another taxiway running? set {key} or stop it)"


def run(verb: str, cfg: Path) -> subprocess.CompletedProcess[str]:
    plain = ["--plain"] if verb == "up" else []
    return run_taxiway(verb, "-c", str(cfg), *plain)


def lb_config(tmp_path: Path, http: int, admin: int, name: str = "lb.toml", extra: str = "") -> Path:
    f = tmp_path / name
    f.write_text(f'[listen]\nhttp = "127.0.0.1:{http}"\n{extra}[admin]\nlisten = "127.0.0.1:{admin}"\n'
                 '[[servers]]\nurl = "http://127.0.0.1:9"\n')
    return f


def test_reload_with_nothing_running_says_so_in_one_line(tmp_path: Path) -> None:
    admin = free_port()
    r = run_cli("reload", "-c", str(lb_config(tmp_path, free_port(), admin)))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"taxiway: no taxiway admin API answers at 127.0.0.1:{admin}")
    assert len(r.stderr.splitlines()) == 1


def test_a_second_lb_names_the_port_it_cannot_have(procs: Processes, tmp_path: Path) -> None:
    http, admin = free_port(), free_port()
    first = procs.taxiway("lb", "-c", str(lb_config(tmp_path, http, admin)))
    wait_for_port(admin, proc=first)
    # Same file: the traffic port is the first one bound, so that is the one named.
    r = run("lb", tmp_path / "lb.toml")
    assert r.returncode == 2
    assert r.stderr == f"taxiway: listen.http 127.0.0.1:{http}: " + IN_USE.format(key="listen.http") + "\n"
    # Its own traffic port, the first one's admin port.
    r = run("lb", lb_config(tmp_path, free_port(), admin, "second.toml"))
    assert r.returncode == 2
    assert r.stderr == f"taxiway: admin.listen 127.0.0.1:{admin}: " + IN_USE.format(key="admin.listen") + "\n"


def run_while_taken(verb: str, path: Path, text: Callable[[int], str]
                    ) -> tuple[subprocess.CompletedProcess[str], int]:
    """`taxiway VERB -c PATH`, PATH holding `text(port)`, while something else holds `port`."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        path.write_text(text(port))
        return run(verb, path), port


@pytest.mark.parametrize("verb", ["lb", "up"])
def test_admin_port_taken_by_anything(tmp_path: Path, verb: str) -> None:
    pool = '[pool]\ncommand = "{python} -m taxiway backend --port {port}"\n' if verb == "up" else ""
    r, port = run_while_taken(verb, tmp_path / "lb.toml",
                              lambda port: lb_config(tmp_path, free_port(), port).read_text() + pool)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1] == \
        f"taxiway: admin.listen 127.0.0.1:{port}: " + IN_USE.format(key="admin.listen")


def test_up_says_so_before_running_a_long_setup(tmp_path: Path) -> None:
    marker = tmp_path / "setup-ran"
    r, port = run_while_taken("up", tmp_path / "up.toml", lambda port: (
        f'[listen]\nhttp = "127.0.0.1:{port}"\n[admin]\nlisten = ""\n[pool]\n'
        f'setup = ["{{python}} -c \\"open(\'{marker}\', \'w\')\\""]\n'
        'command = "{python} -m taxiway backend --port {port}"\n'))
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == \
        f"taxiway: listen.http 127.0.0.1:{port}: " + IN_USE.format(key="listen.http")
    assert not marker.exists(), "setup ran although the balancer could never listen"


def test_https_port_taken(tmp_path: Path) -> None:
    made = subprocess.run([sys.executable, "-m", "taxiway", "cert", "dev", "--dir", str(tmp_path), "--hosts",
                           "127.0.0.1"], env=taxiway_env(), capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    r, port = run_while_taken("lb", tmp_path / "tls.toml", lambda port: (
        f'[listen]\nhttps = "127.0.0.1:{port}"\nhttp = "127.0.0.1:{free_port()}"\n'
        f'[listen.tls]\ncert = "{tmp_path / "cert.pem"}"\nkey = "{tmp_path / "key.pem"}"\n'
        '[admin]\nlisten = ""\n[[servers]]\nurl = "http://127.0.0.1:9"\n'))
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"taxiway: listen.https 127.0.0.1:{port}: " + IN_USE.format(key="listen.https") + "\n"
