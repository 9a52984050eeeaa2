"""taxiway bench end to end: real `taxiway bench` processes against real local servers.

Besides `taxiway backend`, these tests start a small purpose-built server (SERVER below) that can
stall once, serialise requests, reset connections, alternate X-Served-By, and run a CSRF login.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Processes, free_port, run_cli, taxiway_env, wait_for_port

pytestmark = pytest.mark.slow

SERVER = r'''
import asyncio, secrets, ssl, sys, urllib.parse
port, stall_after, stall_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
tls = None
if len(sys.argv) > 5:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sys.argv[4], sys.argv[5])
state = {"stall": 0, "alt": 0}
sessions, lock = set(), None

async def handle(reader, writer):
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            break
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0") or 0)
        body = await reader.readexactly(n) if n else b""
        path = target.split("?")[0]
        cookies = dict(c.strip().split("=", 1) for c in headers.get("cookie", "").split(";") if "=" in c)
        status, extra, out, served = 200, [], b"ok", path
        if path == "/stall":
            state["stall"] += 1
            if state["stall"] == stall_after:
                await asyncio.sleep(stall_s)
        elif path == "/serial":
            async with lock:
                await asyncio.sleep(0.02)
        elif path == "/reset":
            writer.transport.abort()
            return
        elif path == "/close":
            extra.append("Connection: close")
        elif path == "/alt":
            state["alt"] += 1
            served = "s%d" % (state["alt"] % 2 + 1)
        elif path == "/login" and method == "GET":
            token = secrets.token_hex(8)
            extra.append("Set-Cookie: csrftoken=%s; Path=/" % token)
            out = ('<form><input type="hidden" name="csrfmiddlewaretoken" value="%s"></form>'
                   % token).encode()
        elif path == "/login":
            form = dict(urllib.parse.parse_qsl(body.decode()))
            ok = (form.get("csrfmiddlewaretoken") == cookies.get("csrftoken") is not None
                  and form.get("username") == "alice" and form.get("password") == "pw")
            if ok:
                sid = secrets.token_hex(8)
                sessions.add(sid)
                status, out = 302, b""
                extra += ["Set-Cookie: sessionid=%s; Path=/" % sid, "Location: /"]
            else:
                status = 403
        elif path == "/private":
            status = 200 if cookies.get("sessionid") in sessions else 403
        reason = {200: "OK", 302: "Found", 403: "Forbidden"}[status]
        resp = ["HTTP/1.1 %d %s" % (status, reason), "Content-Length: %d" % len(out),
                "X-Served-By: " + served] + extra
        writer.write(("\r\n".join(resp) + "\r\n\r\n").encode() + out)
        await writer.drain()
        if path == "/close":
            break
    writer.close()

async def main():
    global lock
    lock = asyncio.Lock()
    server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=tls)
    async with server:
        await server.serve_forever()

asyncio.run(main())
'''


@pytest.fixture
def server(procs: Processes, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start the test server; call with (stall_after, stall_s); returns the port."""
    script = tmp_path / "server.py"
    script.write_text(SERVER)

    def start(stall_after: int = 0, stall_s: float = 0.0, *tls_files: str) -> int:
        port = free_port()
        proc = procs.start(sys.executable, str(script), str(port), str(stall_after), str(stall_s), *tls_files)
        wait_for_port(port, proc=proc)
        return port
    return start


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    """`taxiway bench ARGS` run to its end (in this process: see `run_cli`)."""
    return run_cli("bench", *args)


def bench_json(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "out.json"
    proc = bench(*args, "--json", str(out))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return json.loads(out.read_text())


def test_closed_loop_counts_requests_statuses_and_backends(procs: Processes, tmp_path: Path) -> None:
    port = procs.backend("b1")
    data = bench_json(tmp_path, f"http://127.0.0.1:{port}/", "-c", "4", "-d", "2s",
                      "--served-by-header", "X-Backend")
    assert data["requests"] > 100
    assert data["statuses"] == {"200": data["requests"]}
    assert data["served_by"] == {"b1": data["requests"]}
    assert data["errors"] == 0 and data["errors_breakdown"] == {}
    assert 1.5 < data["elapsed_s"] < 4
    lat = data["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert data["latency_hdr"] and data["timeline"]


def test_request_count_is_exact(procs: Processes, tmp_path: Path) -> None:
    port = procs.backend("b1")
    data = bench_json(tmp_path, f"http://127.0.0.1:{port}/", "-c", "3", "-n", "500")
    assert data["requests"] == 500


def test_summary_table_and_per_server_share(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = server()
    proc = bench(f"http://127.0.0.1:{port}/alt", "-c", "2", "-n", "400")
    assert proc.returncode == 0, proc.stderr
    assert "p99.9" in proc.stdout and "service time" in proc.stdout
    assert "s1 200 (50.0%)" in proc.stdout and "s2 200 (50.0%)" in proc.stdout


def test_http_errors_are_counted_by_code(procs: Processes, tmp_path: Path) -> None:
    port = procs.backend("b1")
    data = bench_json(tmp_path, f"http://127.0.0.1:{port}/status/503", "-c", "2", "-n", "50")
    assert data["errors_breakdown"] == {"http_503": 50}
    assert data["error_rate"] == 1.0


def test_timeouts_are_classified(procs: Processes, tmp_path: Path) -> None:
    port = procs.backend("b1")
    data = bench_json(tmp_path, f"http://127.0.0.1:{port}/delay/5000", "-c", "2", "-d", "2s",
                      "--timeout", "300ms")
    assert data["errors_breakdown"].get("timeout", 0) >= 2
    assert data["requests"] == 0


def test_resets_are_classified(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = server()
    data = bench_json(tmp_path, f"http://127.0.0.1:{port}/reset", "-c", "2", "-d", "1s")
    assert data["errors_breakdown"].get("reset", 0) > 5


def test_connect_errors_when_the_target_dies(procs: Processes, tmp_path: Path) -> None:
    port = free_port()
    backend = procs.taxiway("backend", "--port", str(port), "--name", "b1")
    wait_for_port(port, proc=backend)
    out = tmp_path / "out.json"
    run = subprocess.Popen([sys.executable, "-m", "taxiway", "bench", f"http://127.0.0.1:{port}/", "-c", "2",
                            "-d", "4s", "--json", str(out)], env=taxiway_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(2.0)
    backend.kill()
    assert run.wait(timeout=60) == 0, run.stderr.read() if run.stderr else ""
    data = json.loads(out.read_text())
    assert data["requests"] > 0
    assert data["errors_breakdown"].get("connect", 0) > 0


def test_coordinated_omission_is_corrected_in_rate_mode(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One request stalls for 1 s on the only connection; 200 more were due meanwhile.

    The service time of all but one request is short, so the uncorrected p99 stays low; measured
    from the intended send times, about a fifth of the requests waited up to a second.
    """
    port = server(stall_after=300, stall_s=1.0)
    data = bench_json(tmp_path, f"http://127.0.0.1:{port}/stall", "-R", "200", "-c", "1", "-d", "5s")
    corrected, service = data["latency_ms"], data["service_time_ms"]
    assert data["mode"] == "open"
    assert data["requests"] >= 900
    assert service["max"] >= 900                       # the one stalled request
    assert service["p99"] < 250, service               # ...is invisible in service-time percentiles
    assert corrected["p99"] >= 600, corrected          # ...but not in the corrected ones
    assert corrected["p90"] >= 100, corrected
    assert corrected["p99"] > 3 * service["p99"]


def test_rate_mode_holds_the_rate(procs: Processes, tmp_path: Path) -> None:
    port = procs.backend("b1")
    data = bench_json(tmp_path, f"http://127.0.0.1:{port}/", "-R", "300", "-d", "3s")
    assert 850 <= data["requests"] <= 910
    assert data["errors"] == 0


def test_scenario_with_csrf_login_cookies_and_weights(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = server()
    sc = tmp_path / "s.toml"
    sc.write_text(f'''
base_url = "http://127.0.0.1:{port}"
think_time = ["1ms", "3ms"]

[login]
page = "/login"
form = {{ username = "alice", password = "pw" }}

[[request]]
path = "/private"
weight = 3

[[request]]
path = "/public"
method = "POST"
body = "hello"
headers = {{ Content-Type = "text/plain" }}
''')
    data = bench_json(tmp_path, "-s", str(sc), "-c", "3", "-n", "600", "--seed", "7")
    served = data["served_by"]
    assert data["statuses"].get("403", 0) == 0, data["statuses"]      # every user logged in
    assert served["/login"] == 6                                       # GET + POST once per user
    assert served["/private"] + served["/public"] == 600
    assert 0.65 < served["/private"] / 600 < 0.85                      # weight 3:1
    assert data["statuses"]["302"] == 3


def test_scenario_login_failure_is_an_error_not_a_hang(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = server()
    sc = tmp_path / "s.toml"
    sc.write_text('[login]\npage = "/login"\nform = { username = "alice", password = "wrong" }\n'
                  '[[request]]\npath = "/private"\n')
    data = bench_json(tmp_path, f"http://127.0.0.1:{port}", "-s", str(sc), "-c", "2", "-d", "2s")
    assert data["errors_breakdown"].get("login", 0) >= 2
    assert data["errors_breakdown"].get("http_403", 0) >= 2


def test_ramp_stages_change_the_number_of_users(procs: Processes, tmp_path: Path) -> None:
    port = procs.backend("b1", None, "--delay-ms", "20")
    data = bench_json(tmp_path, f"http://127.0.0.1:{port}/", "--stages", "2s:2,2s:10")
    users = [s["users"] for s in data["timeline"]]
    assert users[0] <= 3 and max(users) >= 8, users
    assert data["requests"] > 0 and data["errors"] == 0


def test_compare_prints_one_table(procs: Processes, tmp_path: Path) -> None:
    fast = procs.backend("fast")
    slow = procs.backend("slow", None, "--delay-ms", "30")
    out = tmp_path / "c.json"
    proc = bench("--compare", f"http://127.0.0.1:{fast}/", f"http://127.0.0.1:{slow}/", "-c", "2", "-d", "1s",
                 "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "taxiway bench --compare" in proc.stdout
    data = json.loads(out.read_text())["compare"]
    assert [d["target"] for d in data] == [f"http://127.0.0.1:{fast}/", f"http://127.0.0.1:{slow}/"]
    assert data[1]["latency_ms"]["p50"] >= 30 > data[0]["latency_ms"]["p50"]


def test_find_capacity_on_a_server_that_serialises(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Requests take 20 ms one at a time, so latency ~ 20 ms x users: p50=110ms allows about 5 users.

    p50 rather than p99: a step has only ~100 requests, so its p99 is nearly its max, and one
    scheduling hiccup on a busy machine would decide the test.
    """
    port = server()
    out = tmp_path / "cap.json"
    proc = bench(f"http://127.0.0.1:{port}/serial", "--find-capacity", "--slo", "p50=110ms", "--start", "1",
                 "--repeats", "1", "--precision", "0", "-d", "1500ms", "--json", str(out),
                 "--report", str(tmp_path / "rep"))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert 3 <= data["capacity"] <= 6, data["steps"]
    assert "capacity: the largest users meeting p50 <= 110 ms" in proc.stdout
    assert any(not s["meets_slo"] for s in data["steps"])
    assert (tmp_path / "rep" / "capacity.png").exists()


def test_processes_merge_histograms_and_counts(procs: Processes, tmp_path: Path) -> None:
    port = procs.backend("b1")
    data = bench_json(tmp_path, f"http://127.0.0.1:{port}/", "-c", "4", "-n", "2000", "--processes", "2",
                      "--served-by-header", "X-Backend")
    assert data["requests"] == 2000
    assert data["served_by"] == {"b1": 2000}
    assert data["latency_ms"]["p50"] > 0


def test_report_writes_html_and_plots(procs: Processes, tmp_path: Path) -> None:
    port = procs.backend("b1")
    rep = tmp_path / "report"
    proc = bench(f"http://127.0.0.1:{port}/", "-c", "2", "-d", "2s", "--served-by-header", "X-Backend",
                 "--report", str(rep))
    assert proc.returncode == 0, proc.stderr
    page = (rep / "index.html").read_text()
    for png in ("latency_percentiles.png", "timeline.png", "served_by.png"):
        assert (rep / png).stat().st_size > 1000
        assert png in page


@pytest.mark.parametrize(("args", "message"), [
    pytest.param(["ftp://x/"], "bad URL", id="bad-scheme"),
    pytest.param(["http://127.0.0.1:notaport/"], "bad URL", id="bad-port"),
    pytest.param([], "give a target URL", id="no-url"),
    pytest.param(["http://a/", "http://b/"], "--compare", id="several-without-compare"),
    pytest.param(["http://127.0.0.1:1/", "-d", "soon"], "--duration", id="bad-duration"),
    pytest.param(["http://127.0.0.1:1/", "-c", "0"], "--users must be > 0", id="zero-users"),
    pytest.param(["http://127.0.0.1:1/", "--stages", "10s"], "--stages", id="bad-stages"),
    pytest.param(["http://127.0.0.1:1/", "--find-capacity", "--slo", "fast"], "--slo", id="bad-slo"),
    pytest.param(["http://127.0.0.1:1/", "-s", "/nonexistent.toml"], "cannot read", id="missing-scenario"),
    pytest.param(["http://127.0.0.1:1/", "-m", "HEAD"], "-m/--method", id="head"),
])
def test_bad_input_is_one_line(args: list[str], message: str) -> None:
    proc = bench(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_target_is_one_line() -> None:
    port = free_port()
    proc = bench(f"http://127.0.0.1:{port}/")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"taxiway: cannot connect to 127.0.0.1:{port} (Connection refused)"


def test_malformed_scenario_is_one_line(tmp_path: Path, procs: Processes) -> None:
    port = procs.backend("b1")
    sc = tmp_path / "s.toml"
    sc.write_text('[[request]]\npath = "/"\nweight = -2\n')
    proc = bench(f"http://127.0.0.1:{port}/", "-s", str(sc))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"taxiway: scenario {sc}: request[0].weight: expected a number > 0 (got -2)"


@pytest.mark.parametrize("processes", ["1", "2"])
def test_ctrl_c_stops_and_still_prints_the_summary(procs: Processes, tmp_path: Path, processes: str) -> None:
    port = procs.backend("b1")
    out = tmp_path / "out.json"
    run = subprocess.Popen([sys.executable, "-m", "taxiway", "bench", f"http://127.0.0.1:{port}/", "-c", "2",
                            "-d", "120s", "--processes", processes, "--json", str(out)],
                           env=taxiway_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4.0)
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stdout and "req/s" in stdout
    data = json.loads(out.read_text())
    assert data["interrupted"] is True
    assert data["requests"] > 0
    assert data["elapsed_s"] < 60


def test_warmup_is_not_measured_and_durations_are_exact(procs: Processes, tmp_path: Path) -> None:
    port = procs.backend("b1")
    data = bench_json(tmp_path, f"http://127.0.0.1:{port}/", "-R", "200", "--warmup", "1s", "-d", "1500ms")
    assert 270 <= data["requests"] <= 330          # 200/s x 1.5 s; the 200 warm-up requests are dropped
    assert 1.4 <= data["elapsed_s"] <= 1.8


def test_per_backend_share_through_the_balancer(procs: Processes, tmp_path: Path) -> None:
    """The default --served-by-header (X-Served-By) reads what `taxiway lb` adds: the balance."""
    from tests.proxy_support import start_lb

    b1, b2 = procs.backend("b1"), procs.backend("b2")
    port, _, _ = start_lb(procs, tmp_path, [b1, b2],
                          balancer={"served_by_header": "X-Served-By", "strategy": "round-robin"})
    data = bench_json(tmp_path, f"http://127.0.0.1:{port}/", "-c", "4", "-n", "2000")
    shares = data["served_by"]
    assert len(shares) == 2 and sum(shares.values()) == 2000, shares
    assert all(800 <= n <= 1200 for n in shares.values()), shares


def test_https_target(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    port = server(0, 0.0, str(cert_file), str(key_file))
    data = bench_json(tmp_path, f"https://127.0.0.1:{port}/alt", "-c", "2", "-n", "200", "--insecure")
    assert data["requests"] == 200 and data["served_by"] == {"s1": 100, "s2": 100}
    # Without --insecure the self-signed certificate is refused: connect errors, no requests.
    data = bench_json(tmp_path, f"https://127.0.0.1:{port}/alt", "-c", "2", "-d", "1s")
    assert data["requests"] == 0 and data["errors_breakdown"]["connect"] > 0


def test_server_closing_every_connection_is_not_an_error(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = server()
    data = bench_json(tmp_path, f"http://127.0.0.1:{port}/close", "-c", "3", "-n", "300")
    assert data["requests"] == 300 and data["errors"] == 0


def test_live_progress_line_on_a_terminal(procs: Processes) -> None:
    port = procs.backend("b1")
    master, slave = pty.openpty()
    env = {**taxiway_env(), "TERM": "xterm-256color", "COLUMNS": "160"}
    run = subprocess.Popen([sys.executable, "-m", "taxiway", "bench", f"http://127.0.0.1:{port}/", "-c", "2",
                            "-d", "3s"], env=env, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        elif run.poll() is not None:
            break
    os.close(master)
    assert run.wait(timeout=30) == 0
    text = seen.decode(errors="replace")
    assert "req/s" in text and "p99" in text and "errors" in text, text


def test_request_count_ends_even_when_the_target_dies(procs: Processes, tmp_path: Path) -> None:
    """-n counts refused connects as attempts: a target that dies cannot make the run hang."""
    port = free_port()
    backend = procs.taxiway("backend", "--port", str(port), "--name", "b1", "--delay-ms", "50")
    wait_for_port(port, proc=backend)
    out = tmp_path / "out.json"
    run = subprocess.Popen([sys.executable, "-m", "taxiway", "bench", f"http://127.0.0.1:{port}/", "-c", "20",
                            "-n", "3000", "--json", str(out)], env=taxiway_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.5)
    backend.kill()
    assert run.wait(timeout=90) == 0
    data = json.loads(out.read_text())
    assert data["attempts"] == 3000
    assert data["requests"] > 0 and data["errors_breakdown"].get("connect", 0) > 0
