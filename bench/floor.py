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

With ``--upstream-session`` it is the floor of a 2026-07-28 client in front of a backend
that speaks only the session-based revisions: each backend connection opens one upstream
session first (``initialize`` + ``notifications/initialized``, once), and every request
is forwarded on it with that session's ``Mcp-Session-Id`` and a handshake-era
``MCP-Protocol-Version`` in place of the client's; the body's bytes pass unchanged.

On ``initialize`` (a request without ``Mcp-Session-Id``) the backend's session id is taken
from the answer's headers and stored with ``SET NX PX``, so every later request has a real
key to look up. Requests are served one at a time per client connection (HTTP/1.1 without
pipelining, as every MCP client here sends them); each client connection has its own
backend connection, opened on first use and kept alive.

``python -m bench.floor --port P --backend http://127.0.0.1:B/mcp [--redis URL]
[--upstream-session]``
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
VERSION_HEADER = b"mcp-protocol-version"
HANDSHAKE_VERSION = b"2025-11-25"
_INITIALIZE = (b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"'
               + HANDSHAKE_VERSION + b'","capabilities":{},'
               b'"clientInfo":{"name":"floor","version":"1"}}}')
_INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
_UPSTREAM_HEADERS = [(b"content-type", b"application/json"),
                     (b"accept", b"application/json, text/event-stream")]
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


class _Sink:
    """Where an answer's bytes go when nobody is to see them (the upstream handshake)."""

    def write(self, data: bytes) -> None:
        pass


Backend = tuple[asyncio.StreamReader, asyncio.StreamWriter, list[tuple[bytes, bytes]]]
"""A kept-alive backend connection and the headers every request on it carries (the
upstream session's, with ``--upstream-session``)."""


class Floor:
    def __init__(self, backend_url: str, store: redis.Redis | None,
                 upstream_session: bool = False) -> None:
        parts = urlsplit(backend_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._path = (parts.path or "/").encode()
        self._authority = f"{self._host}:{self._port}".encode()
        self._store = store
        self._upstream_session = upstream_session

    async def _connect(self) -> Backend:
        reader, writer = await asyncio.open_connection(self._host, self._port)
        backend: Backend = (reader, writer, [])
        if self._upstream_session:
            session_id = await self._exchange(backend, b"POST", _UPSTREAM_HEADERS,
                                              _INITIALIZE, _Sink())
            if session_id is None:
                raise ConnectionError("the backend opened no session")
            backend[2].extend([(SESSION_HEADER, session_id),
                               (VERSION_HEADER, HANDSHAKE_VERSION)])
            await self._exchange(backend, b"POST", _UPSTREAM_HEADERS, _INITIALIZED, _Sink())
        return backend

    async def serve_client(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        parser_state = _RequestParser()
        parser = httptools.HttpRequestParser(parser_state)
        backend: Backend | None = None
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
                        backend = await self._connect()
                    await self._relay(request, backend, writer)
        except (ConnectionError, httptools.HttpParserError):
            return
        finally:
            writer.close()
            if backend is not None:
                backend[1].close()

    async def _relay(self, request: _Request, backend: Backend,
                     client: asyncio.StreamWriter) -> None:
        if (self._store is not None and request.session_id is not None
                and await self._store.getex(KEY_PREFIX + request.session_id.decode(),
                                            px=TTL_MS) is None):
            client.write(NOT_FOUND)
            return
        headers = request.headers
        if backend[2]:
            replaced = {name for name, _ in backend[2]}
            headers = [(n, v) for n, v in headers if n.lower() not in replaced] + backend[2]
        session_id = await self._exchange(backend, request.method, headers,
                                          b"".join(request.body), client)
        if (self._store is not None and request.session_id is None
                and session_id is not None):
            await self._store.set(KEY_PREFIX + session_id.decode(), "{}", nx=True,
                                  px=TTL_MS)

    async def _exchange(self, backend: Backend, method: bytes,
                        headers: list[tuple[bytes, bytes]], body: bytes,
                        client: asyncio.StreamWriter | _Sink) -> bytes | None:
        """One request on the backend connection, its answer's bytes relayed to
        ``client`` as they come; the answer's session id header, if any."""
        head = [method + b" " + self._path + b" HTTP/1.1\r\nhost: " + self._authority
                + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n"]
        head.extend(name + b": " + value + b"\r\n" for name, value in headers)
        b_reader, b_writer, _ = backend
        b_writer.write(b"".join(head) + b"\r\n" + body)
        answer = _ResponseParser()
        parser = httptools.HttpResponseParser(answer)
        while not answer.done:
            chunk = await b_reader.read(65536)
            if not chunk:
                raise ConnectionError("backend closed the connection")
            parser.feed_data(chunk)
            client.write(chunk)
        return answer.session_id


async def _main(port: int, backend_url: str, redis_url: str | None,
                upstream_session: bool) -> None:
    store = redis.Redis.from_url(redis_url) if redis_url else None
    floor = Floor(backend_url, store, upstream_session)
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
    parser.add_argument("--upstream-session", action="store_true",
                        help="hold one backend session per backend connection (the floor of "
                             "2026-07-28 clients in front of a session-based backend)")
    args = parser.parse_args(argv)
    uvloop.run(_main(args.port, args.backend, args.redis, args.upstream_session))
    return 0


if __name__ == "__main__":
    sys.exit(main())
