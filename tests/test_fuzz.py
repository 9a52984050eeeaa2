"""Bounded fuzzing (issue 11): each atheris target over the kept corpus, then a fixed number of
seeded mutations, in a subprocess (libFuzzer ends its process when it is done or finds a crash).

What a failure here means: an input in tests/fuzz/corpus/request, or one a seeded run derives
from it, breaks an invariant of tests/fuzz/invariants.py (KINDS); the output names the kind and
the input. Replay it with `.venv/bin/python tests/fuzz/fuzz_<target>.py --replay FILE`.
TAXIWAY_FUZZ_ALLOW is removed from the environment: CI lets no known break pass.

The fast tests at the end check the oracle itself: each kind of violation fires on a crafted
input, so a target that finds nothing has looked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.invariants import ParsedHead, ResponseReader, check_forwarded_head, check_rewritten

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "tests" / "fuzz"
CORPUS = FUZZ / "corpus" / "request"
# Mutations per target after the corpus: a few seconds each (the rewriter runs ~10k inputs/s,
# the proxy stack ~1k/s, slower while it opens connections to the upstream).
RUNS = {"rewrite": 100_000, "request": 3_000}
TIMEOUT_S = 120


@pytest.fixture
def atheris_installed() -> None:
    pytest.importorskip("atheris", reason="atheris (PyPI, in the `test` extras) is not installed: no fuzzing")


def fuzz_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TAXIWAY_FUZZ_ALLOW", "TAXIWAY_FUZZ_SRC")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_target(target: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(FUZZ / f"fuzz_{target}.py"), *args], cwd=cwd, env=fuzz_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def failure_report(proc: subprocess.CompletedProcess[str]) -> str:
    """The part of libFuzzer's output that says what broke (the rest is instrumentation chatter)."""
    lines = [line for line in (proc.stdout + proc.stderr).splitlines()
             if not line.startswith(("INFO: Instrumenting", "WARNING: Failed to find function"))]
    return "\n".join(lines[-60:])


@pytest.mark.slow
@pytest.mark.usefixtures("atheris_installed")
@pytest.mark.parametrize("target", sorted(RUNS))
def test_corpus_breaks_no_invariant(target: str, tmp_path: Path) -> None:
    """Every kept input (seeds, and crashes kept once found) passes: the list of all failures,
    not only the first one libFuzzer would stop at."""
    proc = run_target(target, "--replay", str(CORPUS), cwd=tmp_path)
    fails = [line for line in proc.stdout.splitlines() if line.startswith("FAIL ")]
    assert proc.returncode == 0, f"{len(fails)} corpus inputs break invariants:\n" + (
        "\n".join(fails) or failure_report(proc))


@pytest.mark.slow
@pytest.mark.usefixtures("atheris_installed")
@pytest.mark.parametrize("target", sorted(RUNS))
def test_seeded_fuzz_run_finds_nothing(target: str, tmp_path: Path) -> None:
    """The corpus, then RUNS[target] mutations from seed 1 (new inputs go to a temporary
    directory: the kept corpus is only changed by hand, with -merge=1)."""
    new = tmp_path / "new"
    new.mkdir()
    proc = run_target(target, str(new), str(CORPUS), f"-runs={RUNS[target]}", "-seed=1", "-max_len=4096",
                      f"-dict={FUZZ / 'http.dict'}",
                      f"-artifact_prefix={tmp_path}/", "-print_final_stats=1", cwd=tmp_path)
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert proc.returncode == 0 and not crashes, f"crash inputs {crashes}:\n{failure_report(proc)}"
    assert "stat::number_of_executed_units" in proc.stderr, failure_report(proc)


# --------------------------------------------------------------------------------------------
# The oracle itself: a fuzzer whose checks never fire finds nothing, so each kind is shown firing.

GOOD = [(b"Host", b"a.example"), (b"X-Request-Id", b"r1"), (b"X-Forwarded-For", b"127.0.0.2")]


@pytest.mark.parametrize(("url", "extra", "kind"), [
    pytest.param(b"/", [], None, id="clean"),
    pytest.param(b"/", [(b"Host", b"b")], "host-count", id="two-hosts"),
    pytest.param(b"/", [(b"Transfer-Encoding", b"gzip, chunked")], "te-not-chunked", id="te-gzip"),
    pytest.param(b"/", [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")], "cl-and-te",
                 id="cl-and-te"),
    pytest.param(b"/a#b", [], "bad-target", id="fragment"),
    pytest.param(b"/a?x=\\", [], None, id="backslash-in-query-is-data"),
    pytest.param(b"/a\\b?x=1", [], "bad-target", id="backslash-in-path"),
    pytest.param(b"/a%5cb", [], "target-escape", id="escaped-backslash"),
    pytest.param(b"/?q=%00", [], None, id="escape-in-query-is-data"),
    pytest.param(b"*", [], "target-form", id="asterisk-not-options"),
])
def test_forwarded_head_checks(url: bytes, extra: list[tuple[bytes, bytes]], kind: str | None) -> None:
    found = {v.kind for v in check_forwarded_head(ParsedHead(b"GET", url, "1.1", GOOD + extra))}
    assert found == ({kind} if kind else set())


def test_rewritten_head_without_host_is_caught() -> None:
    client = ParsedHead(b"GET", b"/", "1.1", [(b"Host", b"a"), (b"Connection", b"host")])
    head = b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\nX-Request-Id: r\r\n\r\n"
    kinds = {v.kind for v in check_rewritten(client, head, b"a", -1, False, False, b"r")}
    assert kinds == {"host-count"}


def test_response_reader_splits_pipelined_answers_and_reads_head_answers_without_body() -> None:
    reader = ResponseReader([b"HEAD", b"GET"])
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    assert [(r.status, r.body) for r in reader.responses] == [(200, b""), (200, b"ok")]
    assert not reader.violations


@pytest.mark.parametrize(("methods", "data", "kind"), [
    pytest.param([b"HEAD"], b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad", "head-body",
                 id="head-answer-with-body"),
    pytest.param([b"GET"], b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", "bad-response",
                 id="cut-body"),
    pytest.param([b"GET"], b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", "bad-response",
                 id="http10-answer"),
])
def test_response_reader_flags(methods: list[bytes], data: bytes, kind: str) -> None:
    reader = ResponseReader(methods)
    reader.feed(data)
    reader.feed_eof()
    assert [v.kind for v in reader.violations][:1] == [kind]
