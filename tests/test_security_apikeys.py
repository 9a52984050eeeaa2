"""API keys: hashing, constant-time authentication, the file, reloads, and the `taxiway keys` CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from taxiway.security.apikeys import ApiKey, KeyFile, KeyRing, KeyStatus, authenticate, generate_key, hash_key
from tests.conftest import run_cli


def test_generated_keys_are_unique_and_well_formed() -> None:
    keys = {generate_key()[0] for _ in range(200)}
    assert len(keys) == 200
    for k in list(keys)[:5]:
        assert k.startswith("tw_") and len(k) >= 50


def _ring(key: str, key_id: str, **kw: object) -> dict[str, ApiKey]:
    return {key_id: ApiKey(key_id, "ci", hash_key(key), ("read",), 0.0, **kw)}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("presented", "record_kw", "now", "expected"),
    [
        pytest.param("GOOD", {}, 100.0, KeyStatus.VALID, id="valid"),
        pytest.param(None, {}, 100.0, KeyStatus.MISSING, id="missing"),
        pytest.param("", {}, 100.0, KeyStatus.MISSING, id="empty"),
        pytest.param("garbage", {}, 100.0, KeyStatus.UNKNOWN, id="malformed"),
        pytest.param("WRONG_SECRET", {}, 100.0, KeyStatus.UNKNOWN, id="right-id-wrong-secret"),
        pytest.param("OTHER_ID", {}, 100.0, KeyStatus.UNKNOWN, id="unknown-id"),
        pytest.param("GOOD", {"revoked": True}, 100.0, KeyStatus.REVOKED, id="revoked"),
        pytest.param("GOOD", {"expires": 100.0}, 100.0, KeyStatus.EXPIRED, id="expired-at-boundary"),
        pytest.param("GOOD", {"expires": 100.5}, 100.0, KeyStatus.VALID, id="not-yet-expired"),
    ],
)
def test_authenticate_table(presented: str | None, record_kw: dict[str, object], now: float,
                            expected: KeyStatus) -> None:
    key, key_id = generate_key()
    keys = _ring(key, key_id, **record_kw)
    other, _ = generate_key()
    text = {"GOOD": key, "WRONG_SECRET": key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB"),
            "OTHER_ID": other}.get(presented or "", presented)
    status, rec = authenticate(keys, text, now)
    assert status is expected
    assert (rec is not None) == (expected in (KeyStatus.VALID, KeyStatus.REVOKED, KeyStatus.EXPIRED))


def test_scopes() -> None:
    k = ApiKey("00000000", "n", "sha256:x", ("read", "write"))
    assert k.has_scopes(["read"]) and k.has_scopes([]) and k.has_scopes(["read", "write"])
    assert not k.has_scopes(["admin"])


def test_file_stores_only_hashes_with_private_permissions(tmp_path: Path) -> None:
    kf = KeyFile(tmp_path / "keys.json")
    key, rec = kf.create("ci", ["read"], 3600, now=1000.0)
    text = kf.path.read_text()
    assert key not in text and key.split("_", 2)[2] not in text
    assert hash_key(key) in text
    assert os.stat(kf.path).st_mode & 0o077 == 0
    loaded = kf.load()[rec.id]
    assert loaded == rec and loaded.expires == 4600.0


def test_duplicate_active_name_refused_and_revoke_frees_it(tmp_path: Path) -> None:
    from taxiway.errors import UsageError

    kf = KeyFile(tmp_path / "keys.json")
    kf.create("ci", [], None)
    with pytest.raises(UsageError, match="exists"):
        kf.create("ci", [], None)
    assert [k.name for k in kf.revoke("ci")] == ["ci"]
    kf.create("ci", [], None)
    with pytest.raises(UsageError, match="no active key"):
        kf.revoke("nobody")


def test_malformed_file_is_a_config_error(tmp_path: Path) -> None:
    from taxiway.errors import ConfigError

    p = tmp_path / "keys.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match=r"apikeys\.file"):
        KeyFile(p).load()


def test_keyring_reloads_after_revoke_without_restart(tmp_path: Path) -> None:
    now = [0.0]
    kf = KeyFile(tmp_path / "keys.json")
    key, _ = kf.create("ci", [], None)
    ring = KeyRing(kf.path, clock=lambda: now[0])
    assert ring.authenticate(key)[0] is KeyStatus.VALID
    kf.revoke("ci")
    assert ring.authenticate(key)[0] is KeyStatus.VALID   # within the check interval: cached
    now[0] += 1.1
    assert ring.authenticate(key)[0] is KeyStatus.REVOKED


def test_keyring_keeps_keys_when_file_turns_bad(tmp_path: Path) -> None:
    now = [0.0]
    kf = KeyFile(tmp_path / "keys.json")
    key, _ = kf.create("ci", [], None)
    ring = KeyRing(kf.path, clock=lambda: now[0])
    kf.path.write_text("{broken")
    now[0] += 2
    assert ring.authenticate(key)[0] is KeyStatus.VALID


def _keys(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("keys", *args, cwd=cwd)


def test_keys_cli_create_list_revoke(tmp_path: Path) -> None:
    created = _keys("create", "ci-bot", "--scope", "flights:read", "--scope", "flights:write",
                    "--expires", "30d", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("tw_") and "\n" not in key
    assert "shown only this once" in created.stderr and key not in created.stderr
    stored = (tmp_path / ".taxiway" / "keys.json").read_text()
    assert key not in stored

    listed = _keys("list", cwd=tmp_path)
    assert listed.returncode == 0
    assert "ci-bot" in listed.stdout and "flights:read,flights:write" in listed.stdout
    assert key not in listed.stdout and "sha256" not in listed.stdout
    rows = json.loads(_keys("list", "--json", cwd=tmp_path).stdout)
    assert rows[0]["name"] == "ci-bot" and rows[0]["status"] == "valid" and rows[0]["expires"]

    revoked = _keys("revoke", "ci-bot", cwd=tmp_path)
    assert revoked.returncode == 0 and "revoked key 'ci-bot'" in revoked.stdout
    rows = json.loads(_keys("list", "--json", cwd=tmp_path).stdout)
    assert rows[0]["status"] == "revoked"


def test_keys_cli_uses_config_file_path(tmp_path: Path) -> None:
    cfg = tmp_path / "lb.toml"
    cfg.write_text(f'[apikeys]\nfile = "{tmp_path / "k" / "keys.json"}"\n')
    res = _keys("create", "svc", "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "k" / "keys.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["create", "bad name!"], "key name", id="bad-name"),
        pytest.param(["create", "x", "--expires", "soon"], "--expires", id="bad-expiry"),
        pytest.param(["revoke", "ghost"], "no active key", id="revoke-unknown"),
    ],
)
def test_keys_cli_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    res = _keys(*args, cwd=tmp_path)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
