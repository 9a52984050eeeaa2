"""The config schema: every rule that turns a wrong file into one clear line."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from taxiway.config import load_config, parse_config, parse_duration, parse_rate, parse_size, secret_warnings
from taxiway.errors import ConfigError

from .conftest import taxiway_env


@pytest.mark.parametrize(("text", "seconds"), [
    pytest.param("2s", 2.0, id="seconds"),
    pytest.param("150ms", 0.15, id="millis"),
    pytest.param("1m30s", 90.0, id="compound"),
    pytest.param("1h", 3600.0, id="hour"),
    pytest.param(3, 3.0, id="bare-int"),
    pytest.param(0.5, 0.5, id="bare-float"),
])
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "2", "s", "2 seconds", "-1s", "1s garbage", -1])
def test_bad_durations(bad: str | int) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_sizes_and_rates() -> None:
    assert parse_size("64k") == 65536
    assert parse_size("1m") == 1 << 20
    assert parse_size(10) == 10
    r = parse_rate("100/m")
    assert (r.count, r.period_s) == (100, 60.0)
    assert parse_rate("20/10s").per_second == 2.0
    for bad in ("100", "x/m", "0/s", "10/fortnight"):
        with pytest.raises(ValueError):
            parse_rate(bad)


@pytest.mark.parametrize(("raw", "key", "fragment"), [
    pytest.param({"health": {"interval": "soon"}}, "health.interval", "duration", id="bad-duration"),
    pytest.param({"balancer": {"retries": "two"}}, "balancer.retries", "whole number", id="wrong-type"),
    pytest.param({"balancer": {"strategy": "fastest"}}, "balancer.strategy", "least-connections",
                 id="unknown-strategy"),
    pytest.param({"balancr": {}}, "balancr", "not a known setting", id="typo-section"),
    pytest.param({"health": {"intervall": "2s"}}, "health.intervall", "not a known setting", id="typo-key"),
    pytest.param({"servers": [{"url": "ftp://x:1"}]}, "servers[0].url", "http://", id="bad-url"),
    pytest.param({"servers": [{"url": "http://a:1"}, {"url": "http://a:1"}]}, "servers[1]", "unique",
                 id="duplicate-server"),
    pytest.param({"pool": {"command": "app", "min": 1}}, "pool.command", "{port}", id="pool-no-port"),
    pytest.param({"pool": {"command": "app {port}", "min": 5, "max": 2}}, "pool.min/max", "min <= max",
                 id="pool-min-max"),
    pytest.param({"pool": {"command": "app {port}", "max_surge": 0, "max_unavailable": 0}},
                 "pool.max_surge/max_unavailable", "not both 0", id="rollout-cannot-move"),
    pytest.param({"listen": {"http": "localhost:http"}}, "listen.http", "port", id="bad-port"),
    pytest.param({"affinity": {"mode": "cookie"}}, "affinity.secret", "signing key", id="cookie-no-secret"),
    pytest.param({"ratelimit": {"rules": [{"name": "x", "rate": "lots"}]}}, "ratelimit.rules[0].rate",
                 "rate like", id="bad-rate"),
    pytest.param({"affinity": {"mode": "cookie", "secret": "${NOPE_NOT_SET}"}}, "affinity.secret",
                 "NOPE_NOT_SET", id="missing-env"),
])
def test_errors_name_key_and_expectation(raw: dict[str, object], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    assert info.value.key == key
    assert fragment in str(info.value)


def test_defaults_and_env_and_file_refs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret_file = tmp_path / "s.txt"
    secret_file.write_text("from-file\n")
    cfg = parse_config(
        {"affinity": {"mode": "cookie", "secret": "${SECRET}"},
         "servers": [{"url": "http://127.0.0.1:9001", "weight": 3}],
         "apikeys": {"file": f"file:{secret_file}"}},
        env={"SECRET": "k3y-k3y-k3y-k3y-k3y"},
    )
    assert cfg.affinity.secret == "k3y-k3y-k3y-k3y-k3y"
    assert cfg.apikeys.file == "from-file"
    assert cfg.balancer.strategy == "least-connections"
    assert cfg.health.interval == 2.0
    assert cfg.servers[0].weight == 3


def test_secret_warnings() -> None:
    raw = {"affinity": {"secret": "hunter2"}, "ratelimit": {"redis_password": "${P}"}}
    warnings = secret_warnings(raw)
    assert len(warnings) == 1 and "affinity.secret" in warnings[0]
    raw = {"ratelimit": {"redis_url": "redis://:pw@db:6379/0"},
           "pool": {"env": {"DATABASE_URL": "postgres://u:pw@h/db", "OK_URL": "postgres://u@h/db"}}}
    warnings = secret_warnings(raw)
    assert len(warnings) == 2 and "pw" not in " ".join(warnings)
    assert any("pool.env.DATABASE_URL" in w for w in warnings)


def test_check_command(tmp_path) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "good.toml"
    good.write_text('[balancer]\nstrategy = "round-robin"\n[[servers]]\nurl = "http://127.0.0.1:9001"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text('[health]\ninterval = "soon"\n')
    ok = subprocess.run([sys.executable, "-m", "taxiway", "check", "--config", str(good)],
                        capture_output=True, text=True, env=taxiway_env())
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout and "round-robin" in ok.stdout
    err = subprocess.run([sys.executable, "-m", "taxiway", "check", "--config", str(bad)],
                         capture_output=True, text=True, env=taxiway_env())
    assert err.returncode == 2
    assert err.stderr.count("\n") == 1 and "Traceback" not in err.stderr
    assert "health.interval" in err.stderr and "soon" in err.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "taxiway", "check", "--config", str(tmp_path / "no.toml")],
        capture_output=True, text=True, env=taxiway_env())
    assert missing.returncode == 2 and "existing file" in missing.stderr


def test_load_config_syntax_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "x.toml"
    f.write_text("[listen\n")
    with pytest.raises(ConfigError, match="valid TOML"):
        load_config(f)


def test_plain_text_secret_is_warned_about_by_every_command(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from .conftest import free_port, wait_for_port

    port = free_port()
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[listen]\nhttp = "127.0.0.1:{port}"\n[admin]\nlisten = ""\n'
                   '[affinity]\nmode = "cookie"\nsecret = "hunter2-hunter2-hunter2-hunter2"\n')
    check = subprocess.run([sys.executable, "-m", "taxiway", "check", "--config", str(cfg)],
                           capture_output=True, text=True, env=taxiway_env())
    assert check.returncode == 0
    assert "affinity.secret holds a secret in plain text" in check.stderr
    lb = subprocess.Popen([sys.executable, "-m", "taxiway", "lb", "--config", str(cfg)], env=taxiway_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, proc=lb)
    finally:
        lb.terminate()
        out = lb.communicate(timeout=20)[0].decode()
    assert "affinity.secret holds a secret in plain text" in out
    assert "hunter2" not in out


@pytest.mark.parametrize(("raw", "key", "fragment"), [
    pytest.param({"ratelimit": {"rules": [{"name": "a", "rate": "1/s"}, {"name": "a", "rate": "9/s"}]}},
                 "ratelimit.rules[1].name", "no other rule", id="duplicate-rule-name"),
    pytest.param({"pool": {"command": "app {port} 'unbalanced"}}, "pool.command", "parses", id="bad-quote"),
    pytest.param({"headers": {"trusted_proxies": ["not-an-ip"]}}, "headers.trusted_proxies[0]", "network",
                 id="bad-trusted-proxy"),
    pytest.param({"access_log": {"path": "/nonexistent-dir/x.log"}}, "access_log.path", "existing directory",
                 id="unwritable-log"),
    pytest.param({"ratelimit": {"store": "redis", "redis_url": "notaurl"}}, "ratelimit.redis_url", "redis://",
                 id="bad-redis-url"),
    pytest.param({"listen": {"https": "127.0.0.1:8443", "tls": {"cert": "no.pem", "key": "no.key"}}},
                 "listen.tls.cert", "PEM file", id="missing-cert"),
    pytest.param({"listen": {"redirect_to_https": True}}, "listen.redirect_to_https", "https",
                 id="redirect-no-https"),
    pytest.param({"affinity": {"mode": "cookie", "secret": "short"}}, "affinity.secret", "16 bytes",
                 id="short-secret"),
    pytest.param({"autoscale": {"panic_threshold": 1.0}}, "autoscale.panic_threshold", "> 1", id="panic"),
    pytest.param({"autoscale": {"period": "0s"}}, "autoscale.period", "positive", id="zero-period"),
    pytest.param({"health": {"timeout": "0s"}}, "health.timeout", "positive", id="zero-health-timeout"),
    pytest.param({"timeouts": {"connect": 0}}, "timeouts.connect", "positive", id="zero-connect"),
    pytest.param({"limits": {"max_connections": -1}}, "limits.max_connections", ">= 1", id="neg-conns"),
    pytest.param({"limits": {"upstream_queue": -1}}, "limits.upstream_queue", ">= 0", id="neg-queue"),
    pytest.param({"timeouts": {"queue": "0s"}}, "timeouts.queue", "positive", id="zero-queue-timeout"),
    pytest.param({"outlier": {"consecutive_failures": 0}}, "outlier.consecutive_failures", ">= 1",
                 id="zero-failures"),
    pytest.param({"health": {"expected_status": [999]}}, "health.expected_status", "599", id="bad-status"),
    pytest.param({"servers": [{"url": "http://a:1"}, {"url": "http://a:1/"}]}, "servers[1]", "unique",
                 id="same-server-trailing-slash"),
    pytest.param({"pool": {"command": "app {port}", "host": "not a host"}}, "pool.host", "IP address",
                 id="bad-pool-host"),
])
def test_check_refuses_what_start_up_would_refuse(raw: dict[str, object], key: str, fragment: str,
                                                  tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={}, base=tmp_path)
    assert info.value.key == key
    assert fragment in str(info.value)


def test_errors_quote_the_value_and_name_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "x.toml"
    f.write_text('[balancer]\nworkers = "four"\n')
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert str(info.value) == f"{f}: balancer.workers: expected a whole number, got 'four'"
    f.write_text('[[servers]]\nurl = "ftp://x:1"\n')
    with pytest.raises(ConfigError, match=r"x\.toml: servers\[0\]\.url: expected an http:// URL"):
        load_config(f)


def test_relative_paths_are_next_to_the_config_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "logs").mkdir()
    f = tmp_path / "x.toml"
    f.write_text('[access_log]\npath = "logs/access.log"\n')
    assert load_config(f).access_log.path == str(tmp_path / "logs" / "access.log")


def test_docs_reference_is_the_schema() -> None:
    from taxiway.checkcmd import reference_markdown

    from .conftest import ROOT

    page = (ROOT / "docs" / "configuration.md").read_text()
    table = page.split("<!-- config-reference:start -->\n", 1)[1]
    table = table.split("\n<!-- config-reference:end -->")[0]
    assert table == reference_markdown(), \
        "docs/configuration.md's table is stale: paste `taxiway check --reference`"
    assert "| `servers[].name` | str | (unset) |" in table


def test_redis_url_schemes_and_a_refused_url_hides_its_password() -> None:
    ok = parse_config({"ratelimit": {"store": "redis", "redis_url": "rediss://:pw@cache.internal:6380/0"}})
    assert ok.ratelimit.redis_url.startswith("rediss://")
    with pytest.raises(ConfigError) as exc:
        parse_config({"ratelimit": {"store": "redis", "redis_url": "unix://:hunter2@/run/redis.sock"}})
    assert "ratelimit.redis_url" in str(exc.value) and "rediss://" in str(exc.value)
    assert "hunter2" not in str(exc.value) and "***" in str(exc.value)


def test_admin_allowed_hosts() -> None:
    assert parse_config({}).admin.allowed_hosts == []
    cfg = parse_config({"admin": {"allowed_hosts": ["lb1.internal"]}})
    assert cfg.admin.allowed_hosts == ["lb1.internal"]


# -- schema errors in taxiway's words, not msgspec's --------------------------------------------

_P = pytest.param
_LIST = ("consistent-hash | least-connections | peak-ewma | power-of-two | random | round-robin | "
         "weighted-round-robin")


@pytest.mark.parametrize(("raw", "message"), [
    # a required setting: the key down to the field, and an example of what goes there
    _P({"servers": [{}]}, "servers[0].url: required (expected a URL like 'http://127.0.0.1:8001')",
       id="server-without-url"),
    _P({"servers": [{"url": "http://127.0.0.1:1"}, {"weight": 2}]},
       "servers[1].url: required (expected a URL like 'http://127.0.0.1:8001')", id="second-server"),
    _P({"pool": {"min": 2}}, "pool.command: required (expected a command line with {port}, like "
       "'{python} -m gunicorn app.wsgi -b {host}:{port}')", id="pool-without-command"),
    _P({"ratelimit": {"rules": [{"name": "login"}]}},
       "ratelimit.rules[0].rate: required (expected a rate like '100/m' or '10/s')", id="rule-no-rate"),
    _P({"listen": {"tls": {"cert": "c.pem"}}},
       "listen.tls.key: required (expected the path of the certificate's PEM private key file)",
       id="tls-no-key"),
    # the wrong type: plain words for the type, the value as the file wrote it
    _P({"balancer": {"retries": "two"}}, "balancer.retries: expected a whole number, got 'two'",
       id="int-given-string"),
    _P({"balancer": {"retries": 2.5}}, "balancer.retries: expected a whole number, got 2.5",
       id="int-given-float"),
    _P({"balancer": {"retry_budget": "lots"}}, "balancer.retry_budget: expected a number, got 'lots'",
       id="float-given-string"),
    _P({"health": {"enabled": "yes"}}, "health.enabled: expected true or false, got 'yes'",
       id="bool-given-string"),
    _P({"health": {"enabled": 1}}, "health.enabled: expected true or false, got 1", id="bool-given-int"),
    _P({"pool": {"command": 3}}, "pool.command: expected a string, got 3", id="str-given-int"),
    _P({"listen": {"http": 8080}}, "listen.http: expected a string, got 8080", id="optional-str"),
    _P({"balancer": {"seed": "x"}}, "balancer.seed: expected a whole number, got 'x'", id="optional-int"),
    _P({"health": {"expected_status": 200}},
       "health.expected_status: expected a list of whole numbers, got 200",
       id="list-given-int"),
    _P({"health": {"expected_status": ["200"]}},
       "health.expected_status[0]: expected a whole number, got '200'",
       id="list-item"),
    _P({"admin": {"allowed_hosts": "lb1.internal"}},
       "admin.allowed_hosts: expected a list of strings, got 'lb1.internal'", id="list-of-strings"),
    _P({"servers": "http://127.0.0.1:9001"},
       "servers: expected a list of tables ([[servers]] entries), got 'http://127.0.0.1:9001'",
       id="servers-given-string"),
    _P({"servers": ["http://127.0.0.1:9001"]},
       "servers[0]: expected a table ([[servers]] entry), got 'http://127.0.0.1:9001'",
       id="server-given-string"),
    _P({"balancer": "round-robin"}, "balancer: expected a table ([balancer] section), got 'round-robin'",
       id="section-given-string"),
    _P({"pool": "gunicorn"}, "pool: expected a table ([pool] section), got 'gunicorn'",
       id="optional-section"),
    _P({"pool": {"command": "a {port}", "env": "X=1"}},
       "pool.env: expected a table of strings ([pool.env] with NAME = \"value\" lines), got 'X=1'",
       id="table-given-string"),
    _P({"pool": {"command": "a {port}", "env": {"OK": "1", "WORKERS": 4}}},
       "pool.env.WORKERS: expected a string, got 4", id="table-entry-named"),
    _P({"headers": {"security": {"X-Frame-Options": {"a": 1}}}},
       "headers.security.X-Frame-Options: expected a string, got a table", id="entry-given-table"),
    _P({"ratelimit": {"rules": {"name": "x"}}},
       "ratelimit.rules: expected a list of tables ([[ratelimit.rules]] entries), got a table",
       id="list-given-table"),
    _P({"balancer": {"strategy": 3}}, f"balancer.strategy: expected one of {_LIST}, got 3",
       id="choice-given-int"),
    _P({"affinity": {"mode": "sticky"}}, "affinity.mode: expected one of cookie | ip | none, got 'sticky'",
       id="unknown-choice"),
    # our own value syntaxes, with TOML's spelling of what was given
    _P({"health": {"interval": True}}, "health.interval: expected a duration like '2s' or '150ms', got true",
       id="duration-given-bool"),
    _P({"health": {"interval": [1]}}, "health.interval: expected a duration like '2s' or '150ms', got a list",
       id="duration-given-list"),
    _P({"limits": {"max_body_bytes": {"mb": 1}}},
       "limits.max_body_bytes: expected a size like 65536, '64k' or '1m', got a table",
       id="size-given-table"),
    # unknown settings: a suggestion
    _P({"health": {"intervall": "2s"}},
       "health.intervall: is not a known setting (did you mean health.interval? see docs/configuration.md)",
       id="typo-suggests"),
    _P({"server": [{"url": "http://127.0.0.1:1"}]},
       "server: is not a known setting (did you mean servers? see docs/configuration.md)",
       id="section-typo"),
    _P({"pool": {"command": "a {port}", "strategy": "random"}},
       "pool.strategy: is not a known setting (it belongs in [balancer]; see docs/configuration.md)",
       id="wrong-section"),
    _P({"servers": [{"url": "http://127.0.0.1:1", "wieght": 2}]},
       "servers[0].wieght: is not a known setting (did you mean servers[0].weight? see "
       "docs/configuration.md)",
       id="typo-in-list-entry"),
])
def test_schema_errors_read_as_taxiway_words(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    assert str(info.value) == message
    # msgspec's JSON vocabulary never reaches the reader.
    assert not re.search(r"`|\b(Object|object|array|null|int|str|bool|float|Expected)\b", message), message


def test_every_required_setting_has_an_example() -> None:
    """A new required field without an entry in config._REQUIRED would fall back to a bare type."""
    import msgspec

    from taxiway.config import _REQUIRED, Config

    def required(info: object, prefix: str) -> list[str]:
        out: list[str] = []
        for f in info.fields:  # type: ignore[attr-defined]
            t = f.type
            t = next((x for x in getattr(t, "types", [t]) if not isinstance(x, msgspec.inspect.NoneType)), t)
            if isinstance(t, msgspec.inspect.StructType):
                out += required(t, f"{prefix}{f.name}.")
            elif isinstance(t, msgspec.inspect.ListType) and \
                    isinstance(t.item_type, msgspec.inspect.StructType):
                out += required(t.item_type, f"{prefix}{f.name}[].")
            elif f.required:
                out.append(prefix + f.name)
        return out

    assert sorted(required(msgspec.inspect.type_info(Config), "")) == sorted(_REQUIRED)


def test_unset_variables_can_be_collected_and_the_rest_is_still_checked() -> None:
    raw: dict[str, object] = {
        "pool": {"command": "app {port}", "env": {"DJANGO_SECRET_KEY": "${DJANGO_SECRET_KEY}"}},
        "affinity": {"mode": "cookie", "secret": "${TAXIWAY_AFFINITY_SECRET}"},   # wants >= 16 bytes
        "ratelimit": {"store": "redis", "redis_url": "${REDIS_URL}"},             # wants redis://
        "balancer": {"served_by_header": "${HEADER}"},                            # wants a token
        "servers": [{"url": "${A_URL}"}, {"url": "${B_URL}"}],                    # want unique URLs
    }
    unset: list[tuple[str, str]] = []
    parse_config(raw, env={}, unset_env=unset)
    assert sorted(unset) == [
        ("affinity.secret", "TAXIWAY_AFFINITY_SECRET"), ("balancer.served_by_header", "HEADER"),
        ("pool.env.DJANGO_SECRET_KEY", "DJANGO_SECRET_KEY"), ("ratelimit.redis_url", "REDIS_URL"),
        ("servers[0].url", "A_URL"), ("servers[1].url", "B_URL")]
    # Another mistake in the file is still found.
    with pytest.raises(ConfigError, match=r"^balancer\.retries: expected a whole number, got 'x'$"):
        parse_config({**raw, "balancer": {"retries": "x"}}, env={}, unset_env=[])
    # Without a list (lb, up): the unset variable itself refuses, naming key and variable.
    with pytest.raises(ConfigError, match=r"^pool\.env\.DJANGO_SECRET_KEY: expected the environment variable "
                       r"DJANGO_SECRET_KEY to be set"):
        parse_config({"pool": raw["pool"]}, env={})


def test_a_value_that_cannot_be_checked_without_its_variable_says_so() -> None:
    # Environment values are strings: a stand-in cannot pass for a number, so blame the variable.
    with pytest.raises(ConfigError) as info:
        parse_config({"balancer": {"workers": "${WORKERS}"}}, env={}, unset_env=[])
    assert str(info.value) == ("balancer.workers: expected the environment variable WORKERS to be set: this "
                               "setting cannot be checked without its value")
