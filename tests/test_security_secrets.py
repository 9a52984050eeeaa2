"""Secret scan of the repository: fails when a key, token or password is committed.

Scans every file `git ls-files` lists (what would be pushed), so a secret in an untracked scratch
file does not fail the build but one that is committed does. Two kinds of finding:
1. Key material, anywhere (tests included): PEM private keys, AWS access keys, GitHub/Slack
   tokens, taxiway API keys (`tw_<id>_<secret>`).
2. A password/secret/token written in plain text in a config file (TOML, INI, YAML, .env, ...) or
   a Django-style `SECRET_KEY = "..."` / `PASSWORD = "..."` in application code (tests excluded,
   since they legitimately create users with throw-away passwords). Config values must be
   `${ENV_VAR}` or `file:/path` (see docs/security.md, "Secrets").

A line may opt out with the marker `secret-scan: allow` and a reason, for a deliberate fake; a
value that labels itself `dev-only` or `not-a-secret` is a placeholder too (the flights app's
development key, refused outside DEBUG). Django's generated `django-insecure-...` keys are *not*
placeholders: they are real keys people ship.
The patterns below are written so that they do not match themselves.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_BYTES = 2 << 20
ALLOW = "secret-scan: allow"

KEY_MATERIAL: dict[str, re.Pattern[str]] = {
    "private key": re.compile(
        r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+=]{40}", re.I),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[baprs]-[A-Za-z0-9-]{10,}"),
    "taxiway API key": re.compile(r"\btw_[0-9a-f]{8}_[A-Za-z0-9_-]{40,}"),
}
CONFIG_SUFFIXES = {".toml", ".ini", ".cfg", ".conf", ".yaml", ".yml", ".env", ".json", ".tmpl", ".properties"}
# key = "value" / key: value / KEY=value, where key mentions a secret and value is a literal.
CONFIG_SECRET = re.compile(
    r"""^\s*["']?(?P<key>[A-Za-z0-9_.-]*(?:password|passwd|secret|token|api_key|apikey|private_key)"""
    r"""[A-Za-z0-9_.-]*)["']?\s*[=:]\s*"""
    r"""(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s#,\[{][^\s#,]*))""", re.I)   # [ { open a structure
CODE_SECRET = re.compile(
    r"""\b(?:SECRET_KEY|PASSWORD|API_KEY|AUTH_TOKEN)\s*=\s*["'](?P<value>[^"']{8,})["']""")
SAFE_VALUE = re.compile(
    r"^(?:|.*\b(?:dev-only|not-a-secret)\b.*"
    r"|\$\{[A-Za-z_][A-Za-z0-9_]*\}|file:.*|<[^>]*>|\{\{.*|%\(.*|\$[A-Z_]+|null|none|true|false)$", re.I)
FORBIDDEN_NAMES = re.compile(
    r"(?:^|/)(?:id_rsa|id_ed25519|id_ecdsa|\.env|.*\.p12|.*\.pfx|.*key\.pem|keys\.json)$")


def scan_text(rel: str, text: str) -> list[str]:
    """Findings for one file, as 'path:line: kind' (never the secret itself)."""
    findings = []
    suffix = Path(rel).suffix.lower() or Path(rel).name.lower()
    is_config = suffix in CONFIG_SUFFIXES or Path(rel).name.startswith(".env")
    is_app_code = suffix == ".py" and not rel.startswith("tests/")
    for n, line in enumerate(text.splitlines(), 1):
        if ALLOW in line:
            continue
        for kind, pat in KEY_MATERIAL.items():
            if pat.search(line):
                findings.append(f"{rel}:{n}: {kind}")
        if is_config:
            m = CONFIG_SECRET.match(line)
            value = m and next((v for v in m.group("dq", "sq", "bare") if v is not None), "")
            if m and not SAFE_VALUE.match(value or ""):
                findings.append(f"{rel}:{n}: plain-text secret in config ({m.group('key')})")
        if is_app_code:
            m = CODE_SECRET.search(line)
            if m and not SAFE_VALUE.match(m.group("value")):
                findings.append(f"{rel}:{n}: hard-coded secret in code")
    return findings


def scan_repository(root: Path = ROOT) -> list[str]:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    findings = []
    for rel in filter(None, files.decode().split("\0")):
        if FORBIDDEN_NAMES.search(rel) and not rel.endswith((".example", ".sample")):
            findings.append(f"{rel}: a file that normally holds a secret is committed")
        p = root / rel
        try:
            if not p.is_file() or p.stat().st_size > MAX_BYTES:
                continue
            text = p.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        findings += scan_text(rel, text)
    return findings


def test_no_secret_is_committed() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    findings = scan_repository()
    advice = "secrets committed (remove them, rotate them, use ${ENV} or file:):\n"
    assert not findings, advice + "\n".join(findings)


# The scanner itself must catch what it claims to; planted samples are assembled at run time so the
# repository never contains them literally.
BEGIN = "-----BEGIN "
PLANTED = [
    pytest.param("x.txt", BEGIN + "RSA PRIVATE KEY-----\nMIIE...", "private key", id="rsa-private-key"),
    pytest.param("x.txt", BEGIN + "PRIVATE KEY-----", "private key", id="pkcs8-private-key"),
    pytest.param("deploy.sh", "export AWS_ACCESS_KEY_ID=" + "AKIA" + "QWERTYUIOPASDFGH", "AWS access key id",
                 id="aws-key-id"),
    pytest.param("x.py", "token = 'ghp_" + "a" * 36 + "'", "GitHub token", id="github"),
    pytest.param("tests/x.py", "KEY = 'tw_0123abcd_" + "Z" * 43 + "'", "taxiway API key", id="taxiway-key"),
    pytest.param("lb.toml", 'secret = "hunter2hunter2"', "plain-text secret", id="toml-secret"),
    pytest.param("db.ini", "password=hunter2", "plain-text secret", id="ini-password"),
    pytest.param("app.yaml", "  api_token: abcdef123456", "plain-text secret", id="yaml-token"),
    pytest.param(".env", "DB_PASSWORD=hunter2", "plain-text secret", id="dotenv"),
    pytest.param("examples/app/settings.py", 'SECRET_KEY = "django-insecure-abcdefgh"', "hard-coded",
                 id="django-secret-key"),
]


@pytest.mark.parametrize(("rel", "text", "kind"), PLANTED)
def test_scanner_finds_planted_secrets(rel: str, text: str, kind: str) -> None:
    findings = scan_text(rel, text)
    assert findings and kind in findings[0]
    assert text.split("=")[-1].strip("'\" ") not in findings[0]


@pytest.mark.parametrize(
    ("rel", "text"),
    [
        pytest.param("lb.toml", 'secret = "${TAXIWAY_AFFINITY_SECRET}"', id="env-ref"),
        pytest.param("lb.toml", 'password = "file:/run/secrets/db"', id="file-ref"),
        pytest.param("lb.toml", 'secret_header = ""', id="empty"),
        pytest.param("result.json", '    "apikey": [', id="json-key-naming-a-list"),
        pytest.param("result.json", '  "api_key": {', id="json-key-naming-an-object"),
        pytest.param("settings.py", 'SECRET_KEY = os.environ["SECRET_KEY"]', id="from-env"),
        pytest.param("settings.py", '    SECRET_KEY = "dev-only-insecure-key"', id="self-labelled-dev-only"),
        pytest.param("tests/test_x.py", 'PASSWORD = "a-test-password"', id="tests-may-use-fake-passwords"),
        pytest.param("lb.toml", 'secret = "literal"  # secret-scan: allow (documented fake)',
                     id="allow-marker"),
    ],
)
def test_scanner_accepts_safe_forms(rel: str, text: str) -> None:
    assert scan_text(rel, text) == []


def test_scan_of_a_repository_with_a_committed_key_fails(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "ok.toml").write_text('secret = "${X}"\n')
    (tmp_path / "leak.pem").write_text(BEGIN + "EC PRIVATE KEY-----\n")
    subprocess.run(["git", "add", "."], cwd=tmp_path, check=True)
    findings = scan_repository(tmp_path)
    assert findings == ["leak.pem:1: private key"]
