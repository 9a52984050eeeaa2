"""The floor for a Python proxy: a bare uvloop + httptools forwarder, as a benchmark target.

    python benchmarks/proxy_vs_peers/bare.py PORT BACKEND_PORT [BACKEND_PORT ...]

Why: issue 2 measures taxiway against HAProxy and quotes a bare uvloop + httptools forwarder at
0.87x HAProxy. This is that forwarder, so the benchmark shows, in the same run, how much of the
gap to HAProxy any Python proxy on uvloop has (this floor) and how much is taxiway's features.

What it does, and nothing more: each client connection gets its own keep-alive connection to one
backend (round robin per connection); request and response bytes are copied through unchanged;
httptools only finds where each message ends, so the next request waits for the response (no
header rewriting, no health checks, no retries, no limits, no pipelining). Not for production.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.client.pending:
            self.transport.writelines(self.client.pending)  # type: ignore[union-attr]
            self.client.pending = []

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class Client(asyncio.Protocol):
    backends: itertools.cycle[int]

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.upstream: Upstream | None = None
        self.pending: list[bytes] = []
        self.connecting: asyncio.Task[object] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()
            return
        up = self.upstream
        if up is None:
            self.pending.append(data)
            self.upstream = up = Upstream(self)
            loop = asyncio.get_running_loop()
            self.connecting = loop.create_task(
                loop.create_connection(lambda: up, "127.0.0.1", next(Client.backends)))
        elif up.transport is None:
            self.pending.append(data)
        else:
            up.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def serve(port: int, backends: list[int]) -> None:
    Client.backends = itertools.cycle(backends)
    server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), [int(p) for p in sys.argv[2:]]))
