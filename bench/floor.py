"""The floor: the least work a Python gateway in front of one MCP backend must do per call.

Written for the benchmark only (never shipped), to measure what vmcp's own work costs
above it. Per request it does exactly the unavoidable part of a scaled-out gateway and
nothing else:

* parse the client's HTTP/1.1 request (httptools, on uvloop);
* one Redis round trip for the session's liveness (``GETEX key PX ttl``, redis-py with
  hiredis), or none with ``--no-store`` — the floor of the 2026-07-28 path, which has no
  session to look up;
* forward the request's bytes to the backend over a kept-alive connection and relay the
  answer's bytes back unchanged (no JSON parsing, no re-encoding).

On ``initialize`` (a request without ``Mcp-Session-Id``) the backend's session id is taken
from the answer's headers and stored with ``SET NX PX``, so every later request has a real
key to look up. Requests are served one at a time per client connection (HTTP/1.1 without
pipelining, as every MCP client here sends them); each client connection has its own
backend connection, opened on first use and kept alive.

``python -m bench.floor --port P --backend http://127.0.0.1:B/mcp [--redis URL]``
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

import httptools
import redis.asyncio as redis
import uvloop

SESSION_HEADER = b"mcp-session-id"
KEY_PREFIX = "floor:"
TTL_MS = 1_800_000
HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length"}
_NOT_FOUND_BODY = b'{"jsonrpc":"2.0","error":{"code":-32001,"message":"Session not found"}}'
NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: "
             + str(len(_NOT_FOUND_BODY)).encode() + b"\r\n\r\n" + _NOT_FOUND_BODY)


class _Request:
    """What the parser collected of one client request."""

    __slots__ = ("body", "complete", "headers", "method", "session_id", "url")

    def __init__(self) -> None:
        self.url = b""
        self.method = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.session_id: bytes | None = None
        self.complete = False


class _RequestParser:
    """httptools callbacks for the client side."""

    def __init__(self) -> None:
        self.current = _Request()
        self.ready: asyncio.Queue[_Request] = asyncio.Queue()

    def on_url(self, url: bytes) -> None:
        self.current.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == SESSION_HEADER:
            self.current.session_id = value
        if lowered not in HOP_BY_HOP:
            self.current.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.current.body.append(body)

    def on_message_complete(self) -> None:
        self.ready.put_nowait(self.current)
        self.current = _Request()


class _ResponseParser:
    """httptools callbacks for the backend side: only where an answer ends, and its
    session id header (for ``initialize``)."""

    def __init__(self) -> None:
        self.session_id: bytes | None = None
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == SESSION_HEADER:
            self.session_id = value

    def on_message_complete(self) -> None:
        self.done = True


class Floor:
    def __init__(self, backend_url: str, store: redis.Redis | None) -> None:
        parts = urlsplit(backend_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._path = (parts.path or "/").encode()
        self._authority = f"{self._host}:{self._port}".encode()
        self._store = store

    async def serve_client(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        parser_state = _RequestParser()
        parser = httptools.HttpRequestParser(parser_state)
        backend: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                parser.feed_data(data)
                while not parser_state.ready.empty():
                    request = parser_state.ready.get_nowait()
                    request.method = parser.get_method()
                    if backend is None:
                        backend = await asyncio.open_connection(self._host, self._port)
                    await self._relay(request, backend, writer)
        except (ConnectionError, httptools.HttpParserError):
            return
        finally:
            writer.close()
            if backend is not None:
                backend[1].close()

    async def _relay(self, request: _Request,
                     backend: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                     client: asyncio.StreamWriter) -> None:
        if (self._store is not None and request.session_id is not None
                and await self._store.getex(KEY_PREFIX + request.session_id.decode(),
                                            px=TTL_MS) is None):
            client.write(NOT_FOUND)
            return
        body = b"".join(request.body)
        head = [request.method + b" " + self._path + b" HTTP/1.1\r\nhost: " + self._authority
                + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n"]
        head.extend(name + b": " + value + b"\r\n" for name, value in request.headers)
        b_reader, b_writer = backend
        b_writer.write(b"".join(head) + b"\r\n" + body)
        answer = _ResponseParser()
        parser = httptools.HttpResponseParser(answer)
        while not answer.done:
            chunk = await b_reader.read(65536)
            if not chunk:
                raise ConnectionError("backend closed the connection")
            parser.feed_data(chunk)
            client.write(chunk)
        if (self._store is not None and request.session_id is None
                and answer.session_id is not None):
            await self._store.set(KEY_PREFIX + answer.session_id.decode(), "{}", nx=True,
                                  px=TTL_MS)


async def _main(port: int, backend_url: str, redis_url: str | None) -> None:
    store = redis.Redis.from_url(redis_url) if redis_url else None
    floor = Floor(backend_url, store)
    server = await asyncio.start_server(floor.serve_client, "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()
    if store is not None:
        await store.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The benchmark's minimal proxy (the floor).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="the backend's MCP URL")
    parser.add_argument("--redis", default=None, help="redis:// URL; omit for no store")
    args = parser.parse_args(argv)
    uvloop.run(_main(args.port, args.backend, args.redis))
    return 0


if __name__ == "__main__":
    sys.exit(main())
