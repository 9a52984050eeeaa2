"""Fuzz target: `RequestRewriter.rewrite` on every request head llhttp reads from the input.

Why a target without sockets beside fuzz_request.py: the rewriter holds the framing and
hop-by-hop rules, and called directly it runs thousands of times a second, so the fuzzer reaches
header combinations the socket-level target (a few hundred a second) would take hours to find.

Input: a client byte stream (the corpus is shared with fuzz_request.py). Each head llhttp
completes is rewritten as an untrusted IPv4 peer and as a trusted IPv6 one, and
`invariants.check_rewritten` must hold: `head_bytes` parses as exactly one HTTP/1.1 request with
one Host, sane framing, the client's end-to-end fields unchanged. Only RequestRefused may escape.

By hand, from the repository root (new inputs go to the first directory):
    .venv/bin/python tests/fuzz/fuzz_rewrite.py /tmp/fuzz-rewrite tests/fuzz/corpus/request \
        -max_total_time=600 -print_final_stats=1
TAXIWAY_FUZZ_ALLOW=kind,kind lets known (reported) invariant breaks pass; see invariants.KINDS;
TAXIWAY_FUZZ_SAVE=DIR keeps the inputs of those (to sort later).
`--replay PATH...` runs every input once and lists each failing one (no fuzzing).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
# The Python sources, not the mypyc build: atheris sees coverage of Python bytecode only.
os.environ["TAXIWAY_PURE_PYTHON"] = "1"
# TAXIWAY_FUZZ_SRC: fuzz another checkout's sources (say, the last commit's) with this harness.
SRC = os.environ.get("TAXIWAY_FUZZ_SRC") or str(ROOT / "src")
sys.path[:0] = [SRC, str(ROOT)]

import taxiway  # noqa: E402, F401  (first: its source finder must sit behind atheris's import hook)

with atheris.instrument_imports(include=["taxiway"]):
    from taxiway.proxy import http1
    from taxiway.proxy.http1 import ConnContext, RequestRefused, RequestRewriter

from tests.fuzz.invariants import Violation, check_rewritten, read_client_stream  # noqa: E402
from tests.fuzz.verdict import Triage, replay  # noqa: E402

# max_body_bytes small enough that the fuzzer reaches the 413 branch.
REWRITER = RequestRewriter("X-Request-Id", True, 1000)
CONTEXTS = (ConnContext("192.0.2.7", "http", False), ConnContext("2001:db8::7", "https", True))
# Fields only a trusted peer may send (newer http1.py): dropped from the untrusted one.
CLAIMS: frozenset[bytes] = frozenset(getattr(http1, "CLIENT_CLAIMS", ()))
TRIAGE = Triage(os.environ.get("TAXIWAY_FUZZ_ALLOW", ""), os.environ.get("TAXIWAY_FUZZ_SAVE", ""))


def test_one_input(data: bytes) -> None:
    """Called by atheris with one input: rewrite each head, check, raise on a broken invariant."""
    violations: list[Violation] = []
    for head in read_client_stream(data).heads[:8]:
        if head.version not in ("1.0", "1.1"):
            continue   # (the client protocol answers 505 before rewriting)
        for ctx in CONTEXTS:
            try:
                info = REWRITER.rewrite(head.method, head.url, list(head.headers), head.version == "1.1",
                                        ctx)
            except RequestRefused:
                continue
            except Exception as exc:   # (RequestRefused is the only exception rewrite may raise)
                raise Violation("unexpected-exception", f"{type(exc).__name__}: {exc}") from exc
            violations += check_rewritten(head, info.head_bytes, info.host, info.content_length,
                                          info.chunked, info.upgrade, info.request_id,
                                          also_dropped=frozenset() if ctx.trusted else CLAIMS)
            if violations:
                TRIAGE.judge(violations, data, f"head_bytes: {info.head_bytes[:2000]!r}")
                violations = []


# How libFuzzer starts this target again (-merge=1, -fork): argv[0] goes to `sh -c` as a command.
SELF = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))}"


def main() -> None:
    if sys.argv[1:2] == ["--replay"]:   # every input once, every failure listed (CI, triage)
        sys.exit(replay(sys.argv[2:], test_one_input))
    atheris.Setup([SELF, *sys.argv[1:]], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
