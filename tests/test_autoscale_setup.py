"""`[pool] setup`: commands that run once before the first app server starts (migrations, seeds)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from .conftest import Processes, free_port, taxiway_env
from .test_autoscale_up import Up, write_config


def test_setup_runs_in_order_before_servers_start(procs: Processes, tmp_path: Path) -> None:
    marker = tmp_path / "setup.log"
    # The app refuses to start unless setup ran: its command reads the marker file first.
    extra = f"""
[pool.env]
MARKER = "{marker}"
"""
    cfg = write_config(tmp_path, min_=1, extra=extra)
    text = cfg.read_text().replace(
        "[pool]\n",
        "[pool]\nsetup = [\n"
        "  \"{python} -c \\\"import os; open(os.environ['MARKER'], 'a').write('first\\\\\\\\n')\\\"\",\n"
        "  \"{python} -c \\\"import os; open(os.environ['MARKER'], 'a').write('second\\\\\\\\n')\\\"\",\n"
        "]\n")
    cfg.write_text(text)
    up = Up(procs, cfg)
    up.wait_ready(1)
    assert marker.read_text().splitlines() == ["first", "second"]
    assert httpx.get(up.url + "/", timeout=10).status_code == 200
    out = up.output()
    assert out.index("setup:") < out.index("connect to")
    assert len(re.findall(r"setup: done in \d+\.\ds", out)) == 2, out   # each step says how long it took


def test_failing_setup_stops_before_anything_listens(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "taxiway.toml"
    cfg.write_text(f"""
[listen]
http = "127.0.0.1:{port}"
[admin]
listen = ""
[pool]
setup = ["{{python}} -c \\"import sys; print('database is locked'); sys.exit(3)\\""]
command = "{{python}} -m taxiway backend --port {{port}}"
""")
    r = subprocess.run([sys.executable, "-m", "taxiway", "up", "--config", str(cfg)], capture_output=True,
                       text=True, env=taxiway_env(), timeout=60)
    assert r.returncode == 2
    assert "Traceback" not in r.stdout + r.stderr
    assert "exited with status 3: database is locked" in r.stderr
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0    # never listened


def test_each_command_refuses_settings_it_would_ignore(tmp_path: Path) -> None:
    cfg = tmp_path / "taxiway.toml"
    cfg.write_text('[balancer]\nworkers = 2\n[pool]\ncommand = "{python} -m taxiway backend --port {port}"\n')
    up = subprocess.run([sys.executable, "-m", "taxiway", "up", "--config", str(cfg)], capture_output=True,
                        text=True, env=taxiway_env(), timeout=60)
    assert up.returncode == 2 and "balancer.workers" in up.stderr and "Traceback" not in up.stderr
    lb = subprocess.run([sys.executable, "-m", "taxiway", "lb", "--config", str(cfg)], capture_output=True,
                        text=True, env=taxiway_env(), timeout=60)
    assert lb.returncode == 2 and "pool" in lb.stderr and "taxiway up" in lb.stderr
