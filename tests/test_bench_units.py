"""Pure cores of taxiway bench: schedule (durations, stages, intended send times) and scenarios."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taxiway.bench import scenario as scn
from taxiway.bench.results import RunResult, Second, merge_timelines, record_batch
from taxiway.bench.schedule import ArrivalSchedule, Stage, parse_duration, parse_stages, target_at
from taxiway.errors import UsageError


@pytest.mark.parametrize(("text", "seconds"), [
    pytest.param("30s", 30.0, id="seconds"),
    pytest.param("500ms", 0.5, id="millis"),
    pytest.param("2m", 120.0, id="minutes"),
    pytest.param("1h", 3600.0, id="hours"),
    pytest.param("1.5", 1.5, id="bare-number"),
    pytest.param(" 10 s ", 10.0, id="spaces"),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "-1s", "1s2"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="duration"):
        parse_duration(text)


def test_parse_stages() -> None:
    assert parse_stages("10s:50,30s:200,10s:0") == (Stage(10, 50), Stage(30, 200), Stage(10, 0))


@pytest.mark.parametrize("text", ["10s", "10s:abc", "0s:5", "10s:-1", ",", "x:5"])
def test_parse_stages_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="--stages"):
        parse_stages(text)


def test_target_at_ramps_linearly_from_zero() -> None:
    stages = parse_stages("10s:100,10s:100,10s:0")
    assert [target_at(stages, t) for t in (0, 5, 10, 15, 20, 25, 30, 99)] == [0, 50, 100, 100, 100, 50, 0, 0]


def test_constant_rate_intended_times_are_evenly_spaced() -> None:
    s = ArrivalSchedule(rate=100, duration_s=2)
    due = s.take_due(0.5)
    assert due == pytest.approx([i / 100 for i in range(51)])
    rest = s.take_due(10)
    assert len(due) + len(rest) == 200           # exactly rate x duration, then the schedule ends
    assert s.peek() is None


def test_take_due_never_returns_future_times_and_never_repeats() -> None:
    s = ArrivalSchedule(rate=1000, duration_s=1)
    seen: list[float] = []
    for step in range(1, 12):
        now = step * 0.0917
        got = s.take_due(now)
        assert all(t <= now for t in got)
        seen += got
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 1000


def test_limit_caps_arrivals() -> None:
    s = ArrivalSchedule(rate=1000, duration_s=None, limit=42)
    assert len(s.take_due(100)) == 42


@given(st.lists(st.tuples(st.floats(0.5, 20), st.floats(0, 500)), min_size=1, max_size=4))
def test_stage_arrivals_match_the_integral_of_the_rate(raw: list[tuple[float, float]]) -> None:
    stages = tuple(Stage(d, r) for d, r in raw)
    expected = 0.0
    prev = 0.0
    for s in stages:
        expected += (prev + s.target) / 2 * s.duration_s
        prev = s.target
    times = ArrivalSchedule(stages=stages).take_due(1e9)
    assert abs(len(times) - expected) <= 1.0
    assert times == sorted(times)
    assert all(0 <= t <= sum(d for d, _ in raw) for t in times)


def test_ramping_rate_sends_more_later() -> None:
    times = ArrivalSchedule(stages=parse_stages("10s:100")).take_due(100)
    first = sum(1 for t in times if t < 5)
    second = sum(1 for t in times if t >= 5)
    assert len(times) == 500 and abs(first - 125) <= 1 and abs(second - 375) <= 1


# -- scenarios

HOST = "example.test:8080"


def test_single_request_bytes() -> None:
    sc = scn.single("POST", "/sink?x=1", HOST, {"X-A": "1"}, b"abc")
    data = sc.requests[0].encode()
    assert data.startswith(b"POST /sink?x=1 HTTP/1.1\r\nHost: example.test:8080\r\n")
    assert b"X-A: 1\r\n" in data and b"Content-Length: 3\r\n" in data
    assert data.endswith(b"\r\n\r\nabc")
    assert sc.requests[0].encode(b"a=1; b=2").endswith(b"Cookie: a=1; b=2\r\n\r\nabc")


def test_scenario_parses_weights_methods_headers_bodies_and_login() -> None:
    sc = scn.parse_scenario({
        "think_time": ["10ms", "20ms"],
        "login": {"page": "/login", "form": {"username": "u", "password": "p"}},
        "request": [
            {"path": "/", "weight": 3},
            {"path": "/api", "method": "post", "body": '{"a": 1}',
             "headers": {"Content-Type": "application/json"}},
            {"path": "/form", "method": "POST", "form": {"q": "a b"}},
        ],
    }, HOST)
    assert [r.method for r in sc.requests] == ["GET", "POST", "POST"]
    assert sc.cum_weights == (3.0, 4.0, 5.0)
    assert sc.think_time_s == (0.01, 0.02)
    assert sc.cookies and sc.login is not None and sc.login.post == "/login"
    assert sc.requests[2].body == b"q=a+b"
    assert b"Content-Type: application/x-www-form-urlencoded" in sc.requests[2].head
    picks = [scn.pick(sc, i / 1000).path for i in range(1000)]
    assert picks.count("/") == 600 and picks.count("/api") == 200 and picks.count("/form") == 200


def test_scenario_login_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    data = {"request": [{"path": "/"}],
            "login": {"page": "/login/", "form": {"username": "user1", "password": "${DEMO_PW}"}}}
    monkeypatch.setenv("DEMO_PW", "s3cret-from-env")
    sc = scn.parse_scenario(data, HOST)
    assert sc.login is not None and sc.login.form == {"username": "user1", "password": "s3cret-from-env"}
    monkeypatch.delenv("DEMO_PW")
    with pytest.raises(UsageError, match=r"login.form.password: expected the environment variable DEMO_PW"):
        scn.parse_scenario(data, HOST, source="s.toml")


def test_scenario_login_password_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "pw.txt").write_text("s3cret-from-a-file\n")
    (tmp_path / "s.toml").write_text('[[request]]\npath = "/"\n[login]\npage = "/login/"\n'
                                     'form = { username = "user1", password = "file:pw.txt" }\n')
    sc = scn.load_scenario(tmp_path / "s.toml", HOST)   # relative to the scenario's directory
    assert sc.login is not None and sc.login.form["password"] == "s3cret-from-a-file"


@pytest.mark.parametrize(("data", "message"), [
    pytest.param({}, "request: expected at least one", id="no-requests"),
    pytest.param({"request": [{"path": "x"}]}, r"request\[0\].path", id="relative-path"),
    pytest.param({"request": [{"path": "/", "weight": 0}]}, r"request\[0\].weight", id="zero-weight"),
    pytest.param({"request": [{"path": "/", "method": "BREW"}]}, r"request\[0\].method", id="method"),
    pytest.param({"request": [{"path": "/", "colour": 1}]}, r"request\[0\].colour: unknown",
                 id="unknown-key"),
    pytest.param({"request": [{"path": "/"}], "think_time": "soon"}, "think_time", id="think-time"),
    pytest.param({"request": [{"path": "/"}], "think_time": ["2s", "1s"]}, "think_time", id="think-order"),
    pytest.param({"request": [{"path": "/"}], "login": {"form": {}}}, "login.page", id="login-page"),
    pytest.param({"request": [{"path": "/"}], "login": {"page": "/l", "token_pattern": "no-group"}},
                 "login.token_pattern", id="token-group"),
    pytest.param({"request": [{"path": "/"}], "typo": 1}, "typo: unknown key", id="top-level-typo"),
])
def test_scenario_errors_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        scn.parse_scenario(data, HOST, source="s.toml")


def test_load_scenario_bad_toml_is_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "s.toml"
    p.write_text("[[request]\npath=")
    with pytest.raises(UsageError, match="not valid TOML") as err:
        scn.load_scenario(p, HOST)
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="cannot read"):
        scn.load_scenario(tmp_path / "missing.toml", HOST)


@pytest.mark.parametrize(("header", "parsed"), [
    (b"csrftoken=abc; Path=/; SameSite=Lax", ("csrftoken", "abc")),
    (b"sessionid=xyz", ("sessionid", "xyz")),
    (b"sessionid=; Max-Age=0; Path=/", ("sessionid", None)),
    (b"garbage", None),
])
def test_parse_set_cookie(header: bytes, parsed: tuple[str, str | None] | None) -> None:
    assert scn.parse_set_cookie(header) == parsed


def test_extract_django_csrf_token() -> None:
    page = b'<form><input type="hidden" name="csrfmiddlewaretoken" value="T0K3N"></form>'
    assert scn.extract_token(scn.DEFAULT_TOKEN_PATTERN, page) == "T0K3N"
    assert scn.extract_token(scn.DEFAULT_TOKEN_PATTERN, b"<p>no form</p>") is None


# -- results

def test_results_merge_and_round_trip() -> None:
    a, b = RunResult(target="t"), RunResult(target="t")
    record_batch(a.latency, [1000] * 99 + [500_000])
    record_batch(b.latency, [2000] * 100)
    a.statuses[200] = 100
    b.statuses.update({200: 90, 503: 10})
    b.errors["timeout"] = 5
    a.timeline = [Second(t=1, completed=100, p99_ms=1.0)]
    b.timeline = [Second(t=1, completed=100, p99_ms=2.0), Second(t=2, completed=1)]
    a.merge(RunResult.from_wire(b.to_wire()))
    assert a.latency.get_total_count() == 200
    assert a.completed == 200 and a.error_count == 15 and a.attempts == 205
    assert a.error_breakdown() == {"timeout": 5, "http_503": 10}
    assert [(s.t, s.completed, s.p99_ms) for s in a.timeline] == [(1, 200, 2.0), (2, 1, 0.0)]
    assert a.percentile_ms(25) == pytest.approx(1.0, rel=0.01)
    assert a.percentile_ms(75) == pytest.approx(2.0, rel=0.01)
    assert a.max_ms() == pytest.approx(500, rel=0.01)
    assert merge_timelines([], []) == []


# -- splitting a run over processes

def test_split_spec_shares_add_up() -> None:
    from taxiway.bench.load import LoadSpec
    from taxiway.bench.target import parse_target
    from taxiway.bench.workers import split_spec

    t = parse_target("http://127.0.0.1:1/")
    spec = LoadSpec(target=t, scenario=scn.single("GET", "/", t.host_header, {}, b""), users=7,
                    max_requests=1001, rate=None, seed=5)
    parts = [split_spec(spec, 3, i) for i in range(3)]
    assert [p.users for p in parts] == [3, 2, 2]
    assert sum(p.max_requests or 0 for p in parts) == 1001
    assert [p.seed for p in parts] == [5, 6, 7] and [p.share for p in parts] == [(0, 3), (1, 3), (2, 3)]
    for total in range(0, 50):                    # ramped users: the engine's shares add up exactly
        assert sum((total + 3 - 1 - i) // 3 for i in range(3)) == total
    rated = split_spec(LoadSpec(target=t, scenario=spec.scenario, rate=1000.0,
                                stages=parse_stages("1s:300")), 4, 1)
    assert rated.rate == 250.0 and rated.stages == (Stage(1.0, 75.0),)


@pytest.mark.parametrize(("url", "host", "port", "path", "host_header"), [
    ("http://127.0.0.1:8080/a?b=1", "127.0.0.1", 8080, "/a?b=1", "127.0.0.1:8080"),
    ("http://example.test", "example.test", 80, "/", "example.test"),
    ("https://example.test/x", "example.test", 443, "/x", "example.test"),
])
def test_parse_target(url: str, host: str, port: int, path: str, host_header: str) -> None:
    from taxiway.bench.target import parse_target

    t = parse_target(url)
    assert (t.host, t.port, t.path, t.host_header) == (host, port, path, host_header)


@pytest.mark.parametrize("url", ["ftp://x/", "http://", "127.0.0.1:80", "http://h:99999/", "http://h:x/"])
def test_parse_target_rejects(url: str) -> None:
    from taxiway.bench.target import parse_target

    with pytest.raises(UsageError, match="bad URL"):
        parse_target(url)


def test_unwritable_outputs_are_refused_before_the_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from .conftest import run_cli

    # Port 1 refuses connections: if the output check came after the run, the error would differ.
    for flag, path in (("--json", "/nonexistent-dir/x.json"), ("--report", str(tmp_path / "f"))):
        (tmp_path / "f").write_text("a file, not a directory")
        r = run_cli("bench", "http://127.0.0.1:1/", "-n", "1", flag, path)
        assert r.returncode == 2 and flag in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [
    pytest.param(["http://127.0.0.1:1/a b"], id="space-in-url"),
    pytest.param(["http://127.0.0.1:1/", "-H", "Bad Name: x"], id="space-in-header-name"),
])
def test_requests_that_would_be_malformed_are_refused(args: list[str]) -> None:
    from .conftest import run_cli

    r = run_cli("bench", *args, "-n", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
