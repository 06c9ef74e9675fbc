"""A lean HTTP/1.1 connection pool for plain-``http`` backend calls, as an httpx2 transport.

Why by hand: a relayed call spent about a fifth of the gateway's CPU in httpcore2 and h11
(bench profile), more than in vmcp's own code: httpcore2 wraps every read and write in
AnyIO streams and timeouts and runs h11's pure-Python state machine over each event.
aiohttp is cheaper too, but its responses are not httpx2's, and every backend client reads
``httpx2.Response`` (its event-stream reader and errors included); no library plugs in
under httpx2's client without httpcore2 (``bench/HTTP_CLIENTS.md``). What a backend call
needs is small: write one request on a kept-alive socket, parse the answer with httptools
(the C parser uvicorn already uses) and hand the body on as it arrives; that is all this
transport does.

Guarantees kept from the pool it replaces: at most ``size`` connections (a request waits
at most the request's ``pool`` timeout for one, then ``httpx2.PoolTimeout``); the
``connect`` and ``read`` timeouts; a connection goes back to the pool only after a complete response
whose server did not ask to close it, so a cancelled or half-read request closes its
connection. No TLS (``https`` backends stay on httpcore2), no HTTP/2, no proxies.

A kept-alive connection can be closed by the backend just as a request goes out on it: at
the end of the backend's idle timeout, or after an answer (uvicorn closes a connection when
the application fails after it answered). The request then dies with nothing answered.
Four things keep that rare and harmless:

- an idle socket with anything to read (an end already arrived) is never reused;
- the connection idle the longest is reused first (the most time to have seen an end) and
  none past ``keepalive_expiry`` (4 s, under the common 5 s server idle timeout);
- a connection whose last answer was ``202 Accepted`` carries only replayable requests
  from then on. 202 means the backend answered before doing the work, and the work goes on
  behind the answer: the MCP SDK's server answers a notification or a response 202, then
  hands it to the session, and when that fails (the session is closing) uvicorn closes
  the connection, tens of milliseconds later, under whatever request came next;
- a request its sender marked replayable (``vmcp.replayable``: reads, notifications,
  responses) is sent once more on a new connection.

Any other request (a tool call, an initialize) is never sent twice: the backend may have
run it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

import httptools
import httpx2
from httpcore2._utils import is_socket_readable

_FRAMING = frozenset((b"content-length", b"transfer-encoding"))

REPLAYABLE = "vmcp.replayable"
"""The request extension that allows one resend (``vmcp.backend.wire.REPLAYABLE``)."""

_HIGH_WATER = 256 * 1024
"""Body bytes buffered unread before the socket stops being read (back-pressure)."""


class _ClosedUnanswered(httpx2.ReadError):
    """The backend closed the connection before sending any byte of the answer."""


class _Connection(asyncio.Protocol):
    """One kept-alive socket and the response being read on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.socket: socket.socket | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[None] | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.closed = False
        self.wakeup: asyncio.Future[None] | None = None
        self.error: Exception | None = None
        self.idle_since = 0.0
        self.answered = False  # any byte of the current answer arrived
        self.accepted = False  # an answer was 202: the backend may still be at work behind it

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.socket = transport.get_extra_info("socket")

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx2.RemoteProtocolError(f"invalid HTTP response: {exc}"))
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._ends_at_close():  # a body without a length ends where the connection does
            self.complete = True
            self._wake()
        if not self.complete:
            self._fail(httpx2.ReadError("backend closed the connection") if self.answered
                       else _ClosedUnanswered("backend closed the connection unanswered"))

    def pause_writing(self) -> None:  # request bodies are small: never paused for long
        pass

    def resume_writing(self) -> None:
        pass

    def _ends_at_close(self) -> bool:
        if self.head is None or not self.head.done() or self.complete or self.error is not None:
            return False
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # only valid in this callback
        self.complete = True
        self._wake()

    def _fail(self, error: Exception) -> None:
        self.error = error
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    def start(self, request: bytes) -> asyncio.Future[None]:
        assert self.transport is not None
        self.headers = []
        self.chunks.clear()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.error = None
        self.answered = False
        self.head = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.head

    async def body(self, timeout: float | None) -> AsyncIterator[bytes]:  # noqa: ASYNC109
        while True:
            while self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                if self.buffered <= _HIGH_WATER // 4 and self.transport is not None:
                    self.transport.resume_reading()
                yield chunk
            if self.complete:
                return
            if self.error is not None:
                raise self.error
            self.wakeup = asyncio.get_running_loop().create_future()
            await _within(self.wakeup, timeout)
            self.wakeup = None

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def note_answer(self) -> None:
        """Remember a 202: from then on the connection carries replayable requests only."""
        if self.parser.get_status_code() == 202:
            self.accepted = True

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Body(httpx2.AsyncByteStream):
    """A response body; the connection returns to the pool when the body was read to its
    end and the body is closed, and is closed otherwise."""

    def __init__(self, pool: LeanHttpTransport, key: tuple[str, int], conn: _Connection,
                 read_timeout: float | None) -> None:
        self._pool, self._key, self._conn = pool, key, conn
        self._read_timeout = read_timeout
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._conn.body(self._read_timeout):
            yield chunk

    async def aclose(self) -> None:
        if self._done:
            return
        self._done = True
        self._pool._release(self._key, self._conn)


class LeanHttpTransport(httpx2.AsyncBaseTransport):
    """Up to ``size`` kept-alive HTTP/1.1 connections per origin of plain-``http`` URLs."""

    def __init__(self, size: int, keepalive_expiry: float = 4.0) -> None:
        self._expiry = keepalive_expiry
        self._slots = _Slots(size)
        # Per origin, idle connections fit for any request, and those after a 202
        # (replayable requests only; see the module).
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._idle_accepted: dict[tuple[str, int], deque[_Connection]] = {}
        self._open: set[_Connection] = set()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx2.UnsupportedProtocol(f"lean transport serves http only, not {url.scheme}")
        timeouts = request.extensions.get("timeout") or {}
        key = (url.host, url.port or 80)
        replayable = bool(request.extensions.get(REPLAYABLE))
        await self._acquire(timeouts.get("pool"))
        try:
            wire = _request_bytes(request, await request.aread())
            conn, reused = await self._connection(key, replayable, timeouts.get("connect"))
            try:
                await self._exchange(conn, wire, timeouts.get("read"))
            except _ClosedUnanswered:
                if not (reused and replayable):
                    raise
                conn = await self._connect(key, timeouts.get("connect"))
                await self._exchange(conn, wire, timeouts.get("read"))
        except BaseException:
            self._slots.release()
            raise
        parser = conn.parser
        return httpx2.Response(
            parser.get_status_code(), headers=conn.headers,
            stream=_Body(self, key, conn, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def _acquire(self, timeout: float | None) -> None:  # noqa: ASYNC109 - httpx2 pool timeout
        if self._slots.take():
            return
        try:
            async with asyncio.timeout(timeout):
                await self._slots.wait()
        except TimeoutError:
            raise httpx2.PoolTimeout(f"no connection free within {timeout:g}s") from None

    async def _exchange(self, conn: _Connection, wire: bytes, timeout: float | None) -> None:  # noqa: ASYNC109
        """Send a request on ``conn`` and wait for the head of its answer; ``conn`` is
        closed if that fails."""
        try:
            await _within(conn.start(wire), timeout)
        except BaseException:
            self._discard(conn)
            raise

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    async def _connection(self, key: tuple[str, int], replayable: bool,
                          timeout: float | None) -> tuple[_Connection, bool]:  # noqa: ASYNC109
        """An idle connection to ``key`` that looks alive and may carry this request, else
        a new one; and whether it was reused. Replayable requests use up the connections
        after a 202 first."""
        if replayable:
            conn = self._idle_alive(self._idle_accepted.get(key)) \
                or self._idle_alive(self._idle.get(key))
        else:
            conn = self._idle_alive(self._idle.get(key))
        if conn is not None:
            return conn, True
        return await self._connect(key, timeout), False

    def _idle_alive(self, idle: deque[_Connection] | None) -> _Connection | None:
        now = time.monotonic()
        while idle:
            conn = idle.popleft()  # idle the longest: the most time to have seen an end
            # A backend may close a kept-alive connection right after its answer (uvicorn
            # does after an application error); the loop may not have read that end yet.
            # An idle socket with anything to read is such an end: never reused, as
            # httpcore2 does it.
            if not conn.closed and now - conn.idle_since < self._expiry \
                    and conn.transport is not None and not conn.transport.is_closing() \
                    and not is_socket_readable(conn.socket):
                return conn
            self._discard(conn)
        return None

    async def _connect(self, key: tuple[str, int], timeout: float | None) -> _Connection:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(_Connection, key[0], key[1])
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"connect to {key[0]}:{key[1]} timed out") from None
        except OSError as exc:
            raise httpx2.ConnectError(str(exc)) from None
        self._open.add(conn)
        return conn

    def _release(self, key: tuple[str, int], conn: _Connection) -> None:
        if conn.reusable():
            now = conn.idle_since = time.monotonic()
            conn.note_answer()
            (self._idle_accepted if conn.accepted else self._idle).setdefault(
                key, deque()).append(conn)
            self._sweep(self._idle.get(key), now)
            self._sweep(self._idle_accepted.get(key), now)
        else:
            self._discard(conn)
        self._slots.release()

    def _sweep(self, idle: deque[_Connection] | None, now: float) -> None:
        """Close the connections idle past the expiry: those no request comes to take (after
        a burst, or after a 202 with no replayable request since) are not kept open."""
        while idle and now - idle[0].idle_since >= self._expiry:
            self._discard(idle.popleft())

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
        self._idle_accepted.clear()


class _Slots:
    """A counting semaphore for the pool's connections, first come first served.

    Why not ``asyncio.Semaphore``: on Python 3.11 its ``acquire`` and ``locked`` scan the
    waiters with a generator on every call, a measurable share of a relayed call's CPU
    (bench profile). Here taking a free slot is a comparison and a decrement.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        """Take a slot if one is free and nobody waits for it before us."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def wait(self) -> None:
        """Wait for a slot; a released slot is handed to the first waiter directly."""
        if self.take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as it gave up: pass it on
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


async def _within(waiter: asyncio.Future[None], timeout: float | None) -> None:  # noqa: ASYNC109
    """Wait for the backend's next bytes, at most the request's ``read`` timeout."""
    if timeout is None:
        await waiter
        return
    try:
        async with asyncio.timeout(timeout):
            await waiter
    except TimeoutError:
        raise httpx2.ReadTimeout(f"no data from the backend within {timeout:g}s") from None


def _request_bytes(request: httpx2.Request, body: bytes) -> bytes:
    """The whole request in one buffer: one write, one wake-up of the backend. The body was
    read whole, so it is sent with its length even if it was given as a stream."""
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode(), request.url.raw_path)]
    lines.extend(b"%s: %s\r\n" % (name, value) for name, value in request.headers.raw
                 if name.lower() not in _FRAMING)
    if body or request.method not in ("GET", "HEAD", "DELETE"):
        lines.append(b"content-length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


def connection_count(transport: LeanHttpTransport) -> int:
    """Open connections (tests)."""
    return len(transport._open)
