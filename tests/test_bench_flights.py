"""taxiway bench's scenario login flow against the real Django flights app (CSRF, sessions, cookies).

The custom test server in test_bench_run.py imitates Django; this test uses Django itself, so the
CSRF cookie, the hidden form token and the session cookie are the real ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("django")

from tests.conftest import taxiway_env
from tests.flights_support import DEMO_PASSWORD, app_group

pytestmark = pytest.mark.slow


def run_bench(tmp_path: Path, scenario: str, *args: str) -> dict[str, object]:
    sc = tmp_path / "flights.toml"
    sc.write_text(scenario)
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "taxiway", "bench", "-s", str(sc), *args, "--json", str(out)]
    proc = subprocess.run(cmd, env=taxiway_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return json.loads(out.read_text())


def test_logged_in_users_see_their_bookings(tmp_path: Path) -> None:
    with app_group() as group:
        (server,) = group.start(1)
        scenario = f'''
base_url = "{server.url}"

[login]
page = "/login/"
form = {{ username = "user1", password = "{DEMO_PASSWORD}" }}

[[request]]
path = "/bookings/"
weight = 1

[[request]]
path = "/api/me"
weight = 1
'''
        data = run_bench(tmp_path, scenario, "-c", "2", "-n", "40")
        statuses = data["statuses"]
        # 2 users x (GET /login/ 200 + POST 302) then 40 requests that must all be 200: an anonymous
        # user would be redirected (302) from /bookings/ to the login page.
        assert statuses == {"200": 42, "302": 2}, statuses
        assert data["errors"] == 0

        wrong = scenario.replace(DEMO_PASSWORD, "not-the-password")
        data = run_bench(tmp_path, wrong, "-c", "1", "-d", "2s")
        errors = data["errors_breakdown"]
        assert errors.get("login", 0) >= 1 and errors.get("http_401", 0) >= 1, errors   # the form refused
        assert "302" not in data["statuses"]                                          # nobody got in
