"""What one client request sends back, kept so that a dropped stream can be resumed.

MCP lets a client reconnect to an interrupted response stream (GET with
``Last-Event-ID``) and lets a server close a stream early, telling the client when to
come back (SSE ``retry``). Every message a request produces is appended here under a
sequence number; the HTTP layer writes them out, and after a reconnect writes out what
the client has not seen yet. The request itself runs on, independent of any connection.

A stream is bounded (``StreamBounds``): events already taken by a reader (written to the
connection, or copied to the event log) are dropped from the front once the bound is
reached, and an event that finds the stream full of untaken ones waits (``put``), which
stops the gateway reading the backend's response: a slow client slows its backend, it
does not grow the gateway. A stream still full after ``stall_seconds`` is ended with a
``SlowReader`` error as its final answer, which replaces the backlog (a final event is
always admitted: it is one more message, and it is what frees everything else).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import anyio

from vmcp.errors import SlowReader
from vmcp.lru import LRU

logger = logging.getLogger(__name__)

KEEP_FINISHED_SECONDS = 300.0
MAX_STREAMS_PER_SESSION = 256


@dataclass(frozen=True, slots=True)
class StreamBounds:
    """How much one request's stream may hold, and how long it may stay full.

    The defaults: 1,000 events or 4 MiB, whichever comes first, and 30 s. Progress and
    log notifications are small (a few hundred bytes), so 1,000 of them is a few seconds
    of a chatty tool, far more than a reader that keeps up ever has waiting; 4 MiB bounds
    the worst case per request (a session has at most ``MAX_STREAMS_PER_SESSION``); 30 s
    lets a client on a poor link catch up, or reconnect and resume, before its call is
    ended. A single message larger than ``max_bytes`` (a big result) is still sent: only
    the backlog is bounded, not the size of a message (the backend connection bounds that).
    """

    max_events: int = 1000
    max_bytes: int = 4 * 1024 * 1024
    stall_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.max_events < 1 or self.max_bytes < 1 or not self.stall_seconds > 0:
            raise ValueError(f"stream bounds must be positive, got {self!r}")


@dataclass(frozen=True, slots=True)
class Outbound:
    """One event for the client.

    ``final`` marks the response that ends the stream; ``session_ended`` marks the error
    that ends it because its session closed (answered like an unknown session).
    ``pause_ms`` (no message) asks the HTTP layer to end the connection now and tell the
    client to reconnect after that many milliseconds, mirroring a backend that closed its
    own stream early. ``data`` is the message's JSON, encoded once when the stream takes
    it (for its size, and so that no writer encodes it again).
    """

    message: dict[str, Any] | None
    final: bool = False
    pause_ms: int | None = None
    session_ended: bool = False
    data: bytes = b""


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


class DuplicateRequestId(Exception):
    """A request id that is already in flight in the same session."""


class ResponseStream:
    """The ordered events of one request; sequence numbers start at ``start + 1`` (a
    stream continued here after events another replica wrote starts after them).

    Readers (the connection's writer, the event-log copy) ask for the events after what
    they have handled (``after``); that tells the stream what may be dropped."""

    def __init__(self, stream_id: str, request_id: Any = None,
                 bounds: StreamBounds | None = None, *, start: int = 0) -> None:
        self.id = stream_id
        self.request_id = request_id
        self.bounds = bounds or StreamBounds()
        self._events: deque[Outbound] = deque()
        self._first = start + 1  # the sequence number of ``_events[0]``
        self._bytes = 0
        self._taken = start  # every event up to here reached a reader
        self._changed = anyio.Event()
        self._room = anyio.Event()
        self.finished_at: float | None = None
        self.overflowed = False

    def append(self, item: Outbound) -> None:
        """Add one event now, past any bound (a final answer, a pause); nothing follows a
        final one (a stream has one answer). Notifications go through ``put``."""
        if self.finished_at is not None:
            return
        if item.message is not None and not item.data:
            item = replace(item, data=encode(item.message))
        self._events.append(item)
        self._bytes += len(item.data)
        if item.final:
            self.finished_at = time.monotonic()
            self._room.set()  # whoever waits for room: the stream is over
        self._changed.set()
        self._changed = anyio.Event()

    async def put(self, item: Outbound) -> bool:
        """Add one event, waiting (at most ``stall_seconds``) while the stream is full of
        events no reader has taken. False if the stream is over instead: it stayed full
        (it is then ended with a ``SlowReader`` error as its final answer), or it already
        had its answer; the request behind it should stop."""
        if self._full():
            with anyio.move_on_after(self.bounds.stall_seconds):
                while self._full() and self.finished_at is None:
                    await self._room.wait()
            if self._full() and self.finished_at is None:
                self.overflow()
        if self.finished_at is not None:
            return False
        self.append(item)
        return True

    def overflow(self) -> None:
        """End the stream with a ``SlowReader`` error as the request's final answer, next
        after what readers have taken: the backlog the client could not keep up with is
        dropped (its memory freed now), so the end reaches the client as soon as it reads
        what is already on its way."""
        self.overflowed = True
        logger.warning("response stream %s ended: its client read it too slowly (%d events "
                       "waiting for %gs)", self.id, len(self._events),
                       self.bounds.stall_seconds)
        self._first = len(self) + 1
        self._events.clear()
        self._bytes = 0
        self.append(Outbound({"jsonrpc": "2.0", "id": self.request_id, "error": {
            "code": SlowReader.jsonrpc_code, "message": SlowReader.public_message}},
            final=True))

    def _full(self) -> bool:
        """Whether another event would pass the bound, after dropping taken ones."""
        bounds = self.bounds
        while (self._events and self._first <= self._taken
               and (len(self._events) >= bounds.max_events
                    or self._bytes >= bounds.max_bytes)):
            self._bytes -= len(self._events.popleft().data)
            self._first += 1
        return len(self._events) >= bounds.max_events or self._bytes >= bounds.max_bytes

    def __len__(self) -> int:
        """The sequence number of the last event (events dropped from the front count)."""
        return self._first - 1 + len(self._events)

    def event_id(self, seq: int) -> str:
        return f"{self.id}.{seq}"

    async def wait_finished(self) -> None:
        """Return once the stream has its final event (taking nothing)."""
        while self.finished_at is None:
            await self._changed.wait()

    def can_replay(self, seq: int) -> bool:
        """Whether every event after ``seq`` is still held (none dropped for the bound)."""
        return seq >= self._first - 1

    async def after(self, seq: int) -> list[tuple[int, Outbound]]:
        """The events after ``seq``, waiting until there is at least one; events up to
        ``seq`` count as taken. Events dropped for the bound are skipped (a resume from
        before them continues from the oldest held)."""
        if seq > self._taken:
            self._taken = seq
            self._room.set()
            self._room = anyio.Event()
        # A stream continued after another replica's events has none up to its start:
        # wait for new ones rather than answer "none" at once (the reader would spin).
        while len(self) < (start := max(seq + 1, self._first)):
            await self._changed.wait()
        return [(n, self._events[n - self._first]) for n in range(start, len(self) + 1)]


class ResponseStreams:
    """A session's response streams, by id; finished ones expire, the number is bounded."""

    def __init__(self, prefix: str, bounds: StreamBounds | None = None) -> None:
        self._prefix = prefix
        self._bounds = bounds or StreamBounds()
        self._streams: LRU[str, ResponseStream] = LRU(MAX_STREAMS_PER_SESSION)
        self._by_request: dict[Any, ResponseStream] = {}
        self._next = 1

    def open(self, request_id: Any = None) -> ResponseStream:
        """A new stream for the request ``request_id``. Raises ``DuplicateRequestId`` if a
        request of this session with that id is still being answered here: a client must
        not reuse an id (MCP), and a cancel naming it would be ambiguous."""
        if request_id is not None:
            current = self._by_request.get(request_id)
            if current is not None and current.finished_at is None:
                raise DuplicateRequestId(request_id)
        self._prune()
        stream = ResponseStream(f"{self._prefix}-{self._next}", request_id, self._bounds)
        self._next += 1
        return self._register(stream)

    def adopt(self, stream_id: str, request_id: Any, *, start: int) -> ResponseStream:
        """A stream that continues, here, one another replica began (its id, its request,
        numbered after its last event ``start``)."""
        return self._register(ResponseStream(stream_id, request_id, self._bounds, start=start))

    def _register(self, stream: ResponseStream) -> ResponseStream:
        for _, evicted in self._streams.put(stream.id, stream):
            self._forget(evicted)
        if stream.request_id is not None:
            self._by_request[stream.request_id] = stream
        return stream

    def get(self, stream_id: str) -> ResponseStream | None:
        return self._streams.peek(stream_id)

    def drop(self, stream_id: str) -> None:
        stream = self._streams.pop(stream_id)
        if stream is not None:
            self._forget(stream)

    def _forget(self, stream: ResponseStream) -> None:
        if self._by_request.get(stream.request_id) is stream:
            del self._by_request[stream.request_id]

    def end_all(self, answer: Callable[[Any], dict[str, Any]]) -> None:
        """Finish every open stream with ``answer(request_id)``: the session closed, and
        whoever waits on a stream (the request's handler, a resumed GET) gets an end,
        whether or not the work behind it ever ran."""
        for stream in self._streams.values():
            stream.append(Outbound(answer(stream.request_id), final=True,
                                   session_ended=True))

    def _prune(self) -> None:
        now = time.monotonic()
        for stream_id in self._streams:
            stream = self._streams.peek(stream_id)
            if (stream is not None and stream.finished_at is not None
                    and now - stream.finished_at > KEEP_FINISHED_SECONDS):
                self.drop(stream_id)


MAX_EVENT_SEQ_DIGITS = 18


def parse_event_id(value: str) -> tuple[str, int] | None:
    """``"<stream>.<seq>"`` → (stream, seq); None for anything else.

    ``Last-Event-ID`` comes from the client: a sequence number must be plain ASCII digits,
    and short (``str.isdigit`` alone accepts "²", and ``int`` refuses 5000 digits).
    """
    stream_id, _, seq = value.rpartition(".")
    if (not stream_id or not seq.isascii() or not seq.isdigit()
            or len(seq) > MAX_EVENT_SEQ_DIGITS):
        return None
    return stream_id, int(seq)
