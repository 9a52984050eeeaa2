"""Helpers for the proxy tests (no tests here): configs, a raw HTTP client, an in-process balancer,
and tiny raw-socket upstreams that misbehave on purpose."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httptools
import uvloop

from taxiway.admin.api import serve_admin
from taxiway.config import Config, parse_config
from tests.conftest import Processes, free_port, wait_for_port


def toml_value(v: Any) -> str:
    """`v` as a TOML value (the tests write configs from Python values)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)   # (a JSON string is a TOML basic string: same escapes)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f'"{k}" = {toml_value(x)}' for k, x in v.items()) + "}"
    raise TypeError(v)


def make_config(servers: list[int | str], port: int | None = None, **sections: dict[str, Any]) -> str:
    """TOML text: listen on `port`, the given backend ports/URLs, health checks off by default."""
    doc: dict[str, dict[str, Any]] = {
        "listen": {"http": f"127.0.0.1:{port or 0}"},
        "admin": {"listen": "127.0.0.1:0"},
        "health": {"enabled": False},
        "access_log": {"enabled": False},
    }
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    lines: list[str] = []
    for name, values in doc.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    for s in servers:
        url = s if isinstance(s, str) else f"http://127.0.0.1:{s}"
        lines += ["[[servers]]", f"url = {toml_value(url)}"]
    return "\n".join(lines) + "\n"


def start_lb(procs: Processes, tmp_path: Path, servers: list[int | str], **sections: dict[str, Any]
             ) -> tuple[int, subprocess.Popen[bytes], Path]:
    """Run `taxiway lb` as a real process; returns (port, process, config path)."""
    port = free_port()
    path = tmp_path / "lb.toml"
    path.write_text(make_config(servers, port, **sections))
    proc = procs.taxiway("lb", "--config", str(path))
    wait_for_port(port, proc=proc)
    return port, proc, path


# --------------------------------------------------------------------------------------------
# A small raw HTTP/1.1 client (the point is to send exactly the bytes we want)


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.complete = False

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.decode().lower() == name.lower():
                return v.decode("latin-1")
        return None

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {bytes(self.body[:200])!r}>"


class Client:
    """One TCP connection; `send()` writes raw bytes, `read_response()` returns the next answer.

    One parser lives as long as the connection, so several answers arriving in one read are
    all kept, in order (pipelining)."""

    def __init__(self, port: int, timeout_s: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self._buf = b""
        self._ready: deque[Response] = deque()
        self._new_parser()

    def _new_parser(self) -> None:
        self._cur = Response()
        client = self

        class Sink:
            def on_message_begin(self) -> None:
                client._cur = Response()

            def on_header(self, n: bytes, v: bytes) -> None:
                client._cur.headers.append((n, v))

            def on_headers_complete(self) -> None:
                client._cur.status = client._parser.get_status_code()

            def on_body(self, b: bytes) -> None:
                client._cur.body += b

            def on_message_complete(self) -> None:
                client._cur.complete = True
                client._ready.append(client._cur)

        self._parser = httptools.HttpResponseParser(Sink())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Response:
        hdrs = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.send(f"{method} {path} HTTP/1.1\r\nHost: test\r\n{hdrs}\r\n".encode())
        return self.read_response(head=method == "HEAD")

    def read_response(self, head: bool = False) -> Response:
        if head:
            return self._read_head_response()
        while not self._ready:
            data, self._buf = self._buf, b""
            if not data:
                data = self.sock.recv(1 << 20)
                if not data:
                    return self._cur          # closed: whatever arrived (complete = False)
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                self._buf = data[exc.args[0]:]
                if not self._ready:
                    self._cur.complete = True
                    self._ready.append(self._cur)
        return self._ready.popleft()

    def _read_head_response(self) -> Response:
        """A HEAD answer has no body whatever Content-Length says: parse the head only."""
        data, self._buf = self._buf, b""
        while b"\r\n\r\n" not in data:
            d = self.sock.recv(1 << 20)
            if not d:
                break
            data += d
        end = data.find(b"\r\n\r\n") + 4
        self._new_parser()
        self._parser.feed_data(data[:end])
        resp = self._cur
        resp.complete = True
        self._buf = data[end:]
        self._ready.clear()
        self._new_parser()
        return resp

    def read_all(self) -> bytes:
        chunks = [self._buf]
        self._buf = b""
        while True:
            try:
                d = self.sock.recv(1 << 20)
            except (ConnectionResetError, TimeoutError):
                break
            if not d:
                break
            chunks.append(d)
        return b"".join(chunks)

    def is_closed(self, wait_s: float = 5.0) -> bool:
        """True when the server closed the connection (EOF or reset) within `wait_s`."""
        self.sock.settimeout(wait_s)
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def http_get(port: int, path: str = "/", headers: dict[str, str] | None = None) -> Response:
    c = Client(port)
    try:
        return c.get(path, headers)
    finally:
        c.close()


# --------------------------------------------------------------------------------------------
# In-process balancer (to read counters and call methods) on its own uvloop thread


class InProcess:
    def __init__(self, cfg: Config | str) -> None:
        from taxiway.proxy.app import Balancer

        self.cfg = cfg if isinstance(cfg, Config) else parse_config(__import__("tomllib").loads(cfg))
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.bal = Balancer(self.cfg)
        self.call(self.bal.start())
        assert self.bal.bound_http_port is not None
        self.port = self.bal.bound_http_port
        # The admin listener, as the commands start it beside the balancer.
        self.admin = self.call(serve_admin(self.bal, self.cfg.admin))
        self.admin_port = self.admin.port if self.admin is not None else None

    def call(self, coro: Any, timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def run(self, fn: Callable[[], Any]) -> Any:
        async def wrapper() -> Any:
            return fn()
        return self.call(wrapper())

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        try:
            self.call(self.bal.stop(2.0))
            if self.admin is not None:
                self.call(self.admin.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


# --------------------------------------------------------------------------------------------
# Raw upstreams that misbehave


class RawServer:
    """A thread accepting connections and running `handler(conn)` for each; counts connections."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.accepted = 0
        self.requests: list[bytes] = []
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self._stop:
                conn.close()
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop = True
        # shutdown first: a thread blocked in accept() is not woken by close() on Linux, and
        # would go on accepting on the fd number once another test's listener reuses it.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class HeadRecorder(RawServer):
    """An upstream that records every request's head and body (Content-Length or chunked, with
    trailers) and answers with the number of the request and its body length."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, bytes]] = []
        super().__init__(self._handle)

    def _handle(self, conn: socket.socket) -> None:
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                d = conn.recv(65536)
                if not d:
                    return
                data += d
            head, data = data.split(b"\r\n\r\n", 1)
            lower = head.lower()
            if b"transfer-encoding: chunked" in lower:
                while not (b"\r\n0\r\n" in b"\r\n" + data and data.endswith(b"\r\n\r\n")):
                    data += conn.recv(65536)
                body, data = data, b""
            else:
                n = 0
                for line in lower.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        n = int(line.split(b":")[1])
                while len(data) < n:
                    data += conn.recv(65536)
                body, data = data[:n], data[n:]
            self.seen.append((head + b"\r\n\r\n", body))
            answer = b"%d:%d" % (len(self.seen), len(body))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))


def read_request_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        d = conn.recv(65536)
        if not d:
            break
        data += d
    return data


def wait_until(pred: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def refused_port() -> int:
    """A port nothing listens on (connect is refused)."""
    return free_port()


# --------------------------------------------------------------------------------------------
# A scripted origin: parses every request it gets (httptools), records it, answers by script


class OriginRequest(Response):
    """One request as the origin received it (header lookups as on a Response)."""

    def __init__(self) -> None:
        super().__init__()
        self.method = ""
        self.target = b""
        self.trailers: list[tuple[bytes, bytes]] = []
        self.upgrade = False

    def all(self, name: str) -> list[str]:
        return [v.decode("latin-1") for n, v in self.headers if n.decode().lower() == name.lower()]


class Origin(RawServer):
    """An upstream that parses requests properly (bodies, pipelining) and answers each with
    `respond(req)`: bytes to send, or None to close the connection. A request whose answer was
    sent before its body is read (`early=True` in the returned tuple form) is not modelled: the
    script closes instead. `requests` holds every request in arrival order (across connections).
    """

    def __init__(self, respond: Callable[[OriginRequest], bytes | None]) -> None:
        self.respond = respond
        self.got: list[OriginRequest] = []
        self._lock = threading.Lock()
        super().__init__(self._handle)

    def _handle(self, conn: socket.socket) -> None:
        done: deque[OriginRequest] = deque()
        origin = self

        class Sink:
            cur = OriginRequest()
            in_trailers = False

            def on_message_begin(self) -> None:
                self.cur = OriginRequest()
                self.in_trailers = False

            def on_url(self, url: bytes) -> None:
                self.cur.target += url

            def on_header(self, n: bytes, v: bytes) -> None:
                (self.cur.trailers if self.in_trailers else self.cur.headers).append((n, v))

            def on_headers_complete(self) -> None:
                self.cur.method = parser.get_method().decode()
                self.in_trailers = True

            def on_body(self, b: bytes) -> None:
                self.cur.body += b

            def on_message_complete(self) -> None:
                with origin._lock:
                    origin.got.append(self.cur)
                done.append(self.cur)

        parser = httptools.HttpRequestParser(Sink())
        while True:
            data = conn.recv(65536)
            if not data:
                return
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                if done:
                    done[-1].upgrade = True
            except httptools.HttpParserError:
                return
            while done:
                answer = self.respond(done.popleft())
                if answer is None:
                    return
                conn.sendall(answer)

    def paths(self) -> list[bytes]:
        with self._lock:
            return [r.target for r in self.got]


def ok_response(body: bytes, extra: str = "") -> bytes:
    """A plain 200 with `body`, plus header lines in `extra` (each ending in CRLF)."""
    return (f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body
