"""Fuzz target: a client byte stream through a real in-process taxiway to a recording upstream.

Why this stack and not the parser alone: the bugs that matter in a proxy sit between two readers
(a request smuggled past the rewriter, a response handed to the wrong client, bytes after an
Upgrade written before the 101), so both ends are real: a `Balancer` (tests/proxy_support.py
`InProcess`) on its own uvloop thread, a recording upstream on another, loopback sockets between.

Per input (one exec):
1. llhttp reads the input as taxiway will (`invariants.read_client_stream`): the request heads,
   how many messages complete, whether the stream breaks or upgrades.
2. A client on its own loopback address (127.0.0.2-251, one per exec, so the upstream can tell
   which client a request came for from taxiway's X-Forwarded-For) sends the input and reads
   until every complete request is answered, the connection closes, a 101 arrives, or 1 s passes.
3. The upstream checks every head on arrival (invariant (b): `check_forwarded_head`, exactly one
   X-Forwarded-For naming a client, no more heads than the client sent, nothing after an Upgrade
   request before its answer) and answers 200 (or 101 for `Upgrade: websocket`, after 20 ms so
   bytes that did not wait are seen), echoing the request id and a sequence number.
4. Invariant (c): the client's bytes are complete HTTP/1.1 responses, at most one per request,
   each carrying the sequence number of a request from this client, in order, or taxiway's own
   answer with a status in 400..431. Invariant (a): a new connection still gets a 200 within 2 s,
   and nothing was logged at ERROR, passed to the loop's exception handler, counted as
   internal_errors, or raised out of a parser callback (httptools would turn that into a 400).

A violation from the upstream may reach the exec after the one that caused it (the upstream
thread keeps its own time); replaying the crash input alone (`fuzz_request.py crash-...`) shows
whether it belongs to it.

By hand, from the repository root (new inputs go to the first directory):
    .venv/bin/python tests/fuzz/fuzz_request.py /tmp/fuzz-request tests/fuzz/corpus/request \
        -max_total_time=600 -print_final_stats=1
TAXIWAY_FUZZ_ALLOW=kind,kind lets known (reported) invariant breaks pass; see invariants.KINDS;
TAXIWAY_FUZZ_SAVE=DIR keeps the inputs of those (to sort later).
`--replay PATH...` runs every input once and lists each failing one (no fuzzing).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import shlex
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import atheris
import uvloop

ROOT = Path(__file__).resolve().parents[2]
# The Python sources, not the mypyc build: atheris sees coverage of Python bytecode only, and the
# callback watchers below wrap methods of Python classes.
os.environ["TAXIWAY_PURE_PYTHON"] = "1"
# TAXIWAY_FUZZ_SRC: fuzz another checkout's sources (say, the last commit's) with this harness.
SRC = os.environ.get("TAXIWAY_FUZZ_SRC") or str(ROOT / "src")
sys.path[:0] = [SRC, str(ROOT)]

import taxiway  # noqa: E402  (first: its source finder must sit behind atheris's import hook)

with atheris.instrument_imports(include=["taxiway"]):
    import taxiway.proxy.app
    from taxiway.proxy.http1 import RequestRefused
    from taxiway.proxy.server import ClientProtocol, _GeneralPath
    from taxiway.proxy.upstream import UpstreamConnection
    from taxiway.proxy.upstream import _GeneralPath as UpstreamGeneralPath

from tests.fuzz.invariants import (  # noqa: E402
    ParsedHead,
    RequestStream,
    ResponseReader,
    Violation,
    check_forwarded_head,
    read_client_stream,
)
from tests.fuzz.verdict import Triage, replay  # noqa: E402
from tests.proxy_support import InProcess, make_config  # noqa: E402

NO_ANSWER_S: Final = 1.0        # a complete request is answered (or the connection closed) by then
ALIVE_S: Final = 2.0            # invariant (a): the follow-up request's 200 within this
GRACE_S: Final = 0.005          # after the last expected answer: time for one that should not come
UPGRADE_ANSWER_S: Final = 0.02  # the upstream answers an Upgrade request this late (see module doc)
CLIENT_IP: Final = re.compile(rb"127\.0\.0\.\d{1,3}")
# Small limits, so that the fuzzer reaches them with inputs of a few KiB.
LIMITS: Final = {"max_header_bytes": 1024, "max_headers": 20, "max_body_bytes": 4096}


# --------------------------------------------------------------------------------------------
# The upstream


@dataclass(frozen=True)
class Received:
    """One request head the upstream received."""

    seq: int
    ip: bytes | None   # the client it was for (taxiway's X-Forwarded-For), None: not taxiway's
    rid: bytes
    head: ParsedHead


class UpstreamLog:
    """What the upstream saw, shared between its loop thread and the fuzz thread (one lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seq = 0
        self.received: dict[int, Received] = {}
        self.bounds: dict[bytes, int] = {}   # client ip -> request heads it sent (this exec)
        self.counts: dict[bytes, int] = {}
        self.violations: list[Violation] = []

    def expect(self, ip: bytes, heads: int) -> None:
        """Called by the fuzz thread before a client at `ip` sends an input with `heads` heads."""
        with self.lock:
            self.bounds[ip] = heads
            self.counts[ip] = 0
            if len(self.received) > 10_000:   # (an exec reads only its own, recent ones)
                for seq in sorted(self.received)[:5_000]:
                    del self.received[seq]

    def record(self, head: ParsedHead) -> Received:
        """Called by the upstream for every head: checks invariant (b), returns its record."""
        found = check_forwarded_head(head)
        xffs = head.values(b"x-forwarded-for")
        ip = xffs[0] if len(xffs) == 1 and CLIENT_IP.fullmatch(xffs[0]) else None
        if ip is None:
            found.append(Violation("not-from-taxiway", f"X-Forwarded-For {xffs!r} on {head.method!r} "
                                                       f"{head.url[:200]!r} {head.headers[:12]!r}"))
        rids = head.values(b"x-request-id")
        with self.lock:
            self.seq += 1
            rec = Received(self.seq, ip, rids[0] if rids else b"", head)
            self.received[rec.seq] = rec
            if ip is not None and ip in self.bounds:
                n = self.counts[ip] = self.counts.get(ip, 0) + 1
                if n > self.bounds[ip]:
                    found.append(Violation("extra-upstream-request",
                                           f"request {n} for {ip!r}, which sent {self.bounds[ip]} heads: "
                                           f"{head.method!r} {head.url[:200]!r}"))
            self.violations += found
        return rec

    def add(self, v: Violation) -> None:
        with self.lock:
            self.violations.append(v)

    def take(self) -> list[Violation]:
        with self.lock:
            found, self.violations = self.violations, []
        return found

    def get(self, seq: int) -> Received | None:
        with self.lock:
            return self.received.get(seq)


def answer(rec: Received, switching: bool = False) -> tuple[bytes, bool]:
    """The upstream's response to `rec` and whether to close after it. The target picks the
    response framing, so the fuzzer can reach taxiway's response paths: `/chunked` (with a
    trailer), `/close` (Connection: close), `/eof` (no length: delimited by the close)."""
    echo = b"X-Upstream-Seq: %d\r\nX-Echo-Id: " % rec.seq + rec.rid + b"\r\n"
    if switching:
        return b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n" \
               + echo + b"\r\n", False
    body = b"" if rec.head.method == b"HEAD" else b"seq=%d\n" % rec.seq
    url = rec.head.url
    if b"/chunked" in url:
        chunk = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + echo + b"\r\n" + \
            (chunk + b"0\r\nX-Trailer: t\r\n\r\n" if rec.head.method != b"HEAD" else b""), False
    if b"/eof" in url:
        return b"HTTP/1.1 200 OK\r\nConnection: close\r\n" + echo + b"\r\n" + body, True
    close = b"/close" in url
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(b"seq=%d\n" % rec.seq) + echo \
        + (b"Connection: close\r\n" if close else b"") + b"\r\n" + body, close


class UpstreamProtocol(asyncio.Protocol):
    """One connection from taxiway: llhttp reads it, every head is recorded and checked."""

    def __init__(self, log: UpstreamLog, loop: asyncio.AbstractEventLoop) -> None:
        self.log = log
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.stream = self._new_stream()
        self.last: Received | None = None
        self.to_answer: list[Received] = []
        self.waiting_upgrade = False   # an Upgrade request is read and not answered yet
        self.tunnel = False
        self.held = bytearray()

    def _new_stream(self) -> RequestStream:
        return RequestStream(on_head=self._on_head, on_complete=self._on_complete)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            return
        if self.waiting_upgrade:
            self.log.add(Violation("upgrade-hold", f"{len(data)} bytes before the answer: {data[:300]!r}"))
            self.held += data
            return
        rest = self.stream.feed(data)
        if self.stream.error is not None:
            self.log.add(Violation("unparsable-forward", f"{self.stream.error} in {data[:400]!r}"))
            self._write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", True)
            return
        answers, self.to_answer = self.to_answer, []
        upgrade = answers.pop() if self.stream.upgraded and answers else None
        for rec in answers:
            if self._write(*answer(rec)):
                return
        if upgrade is not None:
            self.waiting_upgrade = True
            if rest:
                self.log.add(Violation("upgrade-hold", f"{len(rest)} bytes with the Upgrade request: "
                                                       f"{rest[:300]!r}"))
                self.held += rest
            self.loop.call_later(UPGRADE_ANSWER_S, self._answer_upgrade, upgrade)

    def _answer_upgrade(self, rec: Received) -> None:
        """101 for `Upgrade: websocket` (then a tunnel: bytes are dropped); anything else is
        answered like a server that ignores Upgrade, and the connection goes on as HTTP."""
        self.waiting_upgrade = False
        switching = [v.strip().lower() for v in rec.head.values(b"upgrade")] == [b"websocket"]
        if self._write(*answer(rec, switching)):
            return
        if switching:
            self.tunnel = True
            return
        self.stream = self._new_stream()
        held, self.held = bytes(self.held), bytearray()
        if held:
            self.data_received(held)

    def _write(self, data: bytes, close: bool) -> bool:
        tr = self.transport
        if tr is None or tr.is_closing():
            return True
        tr.write(data)
        if close:
            tr.close()
        return close

    def _on_head(self, head: ParsedHead) -> None:
        self.last = self.log.record(head)

    def _on_complete(self, head: ParsedHead) -> None:
        assert self.last is not None and self.last.head is head
        self.to_answer.append(self.last)


class Upstream:
    """The recording upstream, listening on loopback, on its own uvloop thread."""

    def __init__(self, log: UpstreamLog) -> None:
        self.loop = uvloop.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True, name="fuzz-upstream").start()
        server = asyncio.run_coroutine_threadsafe(self.loop.create_server(
            lambda: UpstreamProtocol(log, self.loop), "127.0.0.1", 0), self.loop).result(10)
        self.port: int = server.sockets[0].getsockname()[1]


# --------------------------------------------------------------------------------------------
# Invariant (a): what taxiway reports about itself


class InternalErrors(logging.Handler):
    """Collects what taxiway says went wrong inside it: ERROR log records, the loop's exception
    handler, and exceptions out of parser callbacks (which httptools would turn into a 400)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lock = threading.Lock()
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.note(f"log {record.name} {record.levelname}: {text}")

    def on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        tb = "".join(traceback.format_exception(exc)) if isinstance(exc, BaseException) else ""
        self.note(f"loop exception handler: {context.get('message')}\n{tb}")

    def note(self, text: str) -> None:
        with self.lock:
            self.found.append(text)

    def take(self) -> list[str]:
        with self.lock:
            found, self.found = self.found, []
        return found

    def watch(self, cls: type, names: tuple[str, ...], allowed: tuple[type[BaseException], ...]) -> None:
        """Wrap parser callbacks of `cls`: an exception other than `allowed` is noted, then
        raised on unchanged (behaviour stays the same; only the masking is seen through)."""
        for name in names:
            original: Callable[..., Any] = getattr(cls, name)

            @functools.wraps(original)
            def wrapper(obj: Any, *args: Any, _original: Callable[..., Any] = original,
                        _name: str = name) -> Any:
                try:
                    return _original(obj, *args)
                except allowed:
                    raise
                except BaseException:
                    self.note(f"{cls.__name__}.{_name} raised:\n{traceback.format_exc()}")
                    raise

            setattr(cls, name, wrapper)


# --------------------------------------------------------------------------------------------
# The stack and one exec


class Stack:
    """Upstream + balancer, started once per fuzzing process; `run_one` is one exec."""

    def __init__(self) -> None:
        self.internal = InternalErrors()
        # (_GeneralPath is the fast path handing a head to the field callbacks: control flow.)
        refusals = tuple(c for c in (RequestRefused, _GeneralPath, _optional_error("ClientProtocolError"))
                         if c)
        self.internal.watch(ClientProtocol, ("on_message_begin", "on_url", "on_headers_complete",
                                             "begin_fields", "on_field", "on_fields_complete", "on_body",
                                             "on_message_complete"), refusals)
        self.internal.watch(UpstreamConnection, ("on_field", "on_headers_complete",
                                                 "on_body", "on_message_complete"), (UpstreamGeneralPath,))
        logging.getLogger("taxiway").addHandler(self.internal)
        self.log = UpstreamLog()
        self.upstream = Upstream(self.log)
        self.lb = InProcess(make_config([self.upstream.port], limits=LIMITS))
        self.lb.loop.call_soon_threadsafe(self.lb.loop.set_exception_handler, self.internal.on_loop_exception)
        self.port = self.lb.port
        self.execs = 0
        self.internal_errors = 0
        assert taxiway.proxy.app.Balancer is type(self.lb.bal)

    def run_one(self, data: bytes) -> tuple[list[Violation], str]:
        """Send `data` as one client; returns the violations and what was seen (for the report)."""
        self.execs += 1
        ip = b"127.0.0.%d" % (2 + self.execs % 250)
        model = read_client_stream(data)
        self.log.expect(ip, len(model.heads))
        reader = ResponseReader([h.method for h in model.heads])
        found = self._exchange(ip.decode(), data, model, reader)
        found += reader.violations
        found += self._check_responses(ip, model, reader)
        found += self._check_alive()
        found += self.log.take()
        counted = self.lb.bal.counters.get("internal_errors", 0)
        notes = self.internal.take()
        if counted != self.internal_errors:
            notes.append(f"counters['internal_errors'] {self.internal_errors} -> {counted}")
            self.internal_errors = counted
        found += [Violation("internal-error", n) for n in notes]
        seen = (f"client {ip.decode()}: {len(model.heads)} heads, {model.completed} complete, "
                f"error={model.error}, upgraded={model.upgraded}; responses "
                f"{[(r.status, r.value(b'x-upstream-seq')) for r in reader.responses]}")
        return found, seen

    def _exchange(self, ip: str, data: bytes, model: RequestStream,
                  reader: ResponseReader) -> list[Violation]:
        sock = socket.socket()
        try:
            sock.bind((ip, 0))
            sock.connect(("127.0.0.1", self.port))
            try:
                sock.sendall(data)
            except OSError:
                pass   # taxiway refused and closed before reading it all: its answer is still there
            now = time.monotonic()
            deadline = now + NO_ANSWER_S
            grace_end = 0.0
            while not reader.upgraded and not reader.violations:
                now = time.monotonic()
                if len(reader.responses) >= model.completed and model.error is None:
                    # Everything complete is answered; a broken stream must also be closed.
                    grace_end = grace_end or now + GRACE_S
                    if now >= grace_end:
                        return []
                if now >= deadline:
                    return [Violation("no-answer", f"{len(reader.responses)} responses to "
                                                   f"{model.completed} complete requests (stream error "
                                                   f"{model.error}) and the connection is open after "
                                                   f"{NO_ANSWER_S} s")]
                sock.settimeout(max(0.0005, min(deadline, grace_end or deadline) - now))
                try:
                    got = sock.recv(65536)
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    got = b""
                if not got:
                    reader.feed_eof()
                    return []
                reader.feed(got)
            return []
        finally:
            sock.close()

    def _check_responses(self, ip: bytes, model: RequestStream, reader: ResponseReader) -> list[Violation]:
        found: list[Violation] = []
        # One answer per request begun, and one more for a stream llhttp gave up on between
        # messages (taxiway answers that 400 too).
        most = model.begun + (model.error is not None and not model.in_message)
        if len(reader.responses) > most:
            found.append(Violation("extra-response", f"{len(reader.responses)} responses to "
                                                     f"{model.begun} requests (stream error {model.error})"))
        last = 0
        for r in reader.responses:
            seq = r.value(b"x-upstream-seq")
            if seq is None:
                if not (400 <= r.status <= 431 or r.status == 505):   # (505: HTTP/0.9 or 2.0)
                    found.append(Violation("self-status", f"taxiway answered {r.status}: {r.body[:200]!r}"))
                continue
            rec = self.log.get(int(seq))
            if rec is None or rec.ip != ip:
                found.append(Violation("wrong-response", f"response seq {seq!r} answers "
                                                         f"{rec.ip if rec else None!r}, not {ip!r}"))
            elif int(seq) <= last:
                found.append(Violation("wrong-response", f"seq {seq!r} after {last}: out of order"))
            elif r.value(b"x-echo-id") != rec.rid:
                found.append(Violation("wrong-response", f"echo id {r.value(b'x-echo-id')!r}, "
                                                         f"upstream got {rec.rid!r}"))
            last = int(seq)
        return found

    def _check_alive(self) -> list[Violation]:
        """Invariant (a): a normal request on a new connection still gets its 200 in time."""
        reader = ResponseReader([b"GET"])
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=ALIVE_S) as sock:
                sock.sendall(b"GET /alive HTTP/1.1\r\nHost: fuzz.test\r\n\r\n")
                deadline = time.monotonic() + ALIVE_S
                while not reader.responses and not reader.violations and time.monotonic() < deadline:
                    sock.settimeout(max(0.001, deadline - time.monotonic()))
                    got = sock.recv(65536)
                    if not got:
                        reader.feed_eof()
                        break
                    reader.feed(got)
        except OSError as exc:
            return [Violation("unresponsive", f"follow-up request: {type(exc).__name__}: {exc}")]
        if not reader.responses or reader.responses[0].status != 200:
            return [Violation("unresponsive", f"follow-up request got {reader.responses[:1]!r} "
                                              f"{reader.violations!r}")]
        return []


def _optional_error(name: str) -> type[BaseException] | None:
    """A taxiway.errors class the client protocol may raise on purpose, if this version has it."""
    import taxiway.errors

    found = getattr(taxiway.errors, name, None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


STACK: Stack | None = None
TRIAGE = Triage(os.environ.get("TAXIWAY_FUZZ_ALLOW", ""), os.environ.get("TAXIWAY_FUZZ_SAVE", ""))


def test_one_input(data: bytes) -> None:
    """Called by atheris with one input: one client exchange, then every invariant."""
    global STACK
    if STACK is None:
        STACK = Stack()
    violations, seen = STACK.run_one(data)
    if violations:
        TRIAGE.judge(violations, data, seen)


# How libFuzzer starts this target again (-merge=1, -fork): argv[0] goes to `sh -c` as a command.
SELF = f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))}"


def main() -> None:
    if sys.argv[1:2] == ["--replay"]:   # every input once, every failure listed (CI, triage)
        sys.exit(replay(sys.argv[2:], test_one_input))
    atheris.Setup([SELF, *sys.argv[1:]], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
