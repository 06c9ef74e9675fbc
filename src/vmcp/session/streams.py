"""What one client request sends back, kept so that a dropped stream can be resumed.

MCP lets a client reconnect to an interrupted response stream (GET with
``Last-Event-ID``) and lets a server close a stream early, telling the client when to
come back (SSE ``retry``). Every message a request produces is appended here under a
sequence number; the HTTP layer writes them out, and after a reconnect writes out what
the client has not seen yet. The request itself runs on, independent of any connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from vmcp.lru import LRU

KEEP_FINISHED_SECONDS = 300.0
PAUSE_FOR_ELSEWHERE_MS = 1000
"""How soon the client of a stream whose run goes on elsewhere should resume it."""
MAX_STREAMS_PER_SESSION = 256


@dataclass(frozen=True, slots=True)
class Outbound:
    """One event for the client.

    ``final`` marks the response that ends the stream; ``session_ended`` marks the error
    that ends it because its session closed (answered like an unknown session).
    ``pause_ms`` (no message) asks the HTTP layer to end the connection now and tell the
    client to reconnect after that many milliseconds, mirroring a backend that closed its
    own stream early.
    """

    message: dict[str, Any] | None
    final: bool = False
    pause_ms: int | None = None
    session_ended: bool = False


class DuplicateRequestId(Exception):
    """A request id that is already in flight in the same session."""


class ResponseStream:
    """The ordered events of one request; sequence numbers start at ``start + 1`` (a
    stream continued here after events another replica wrote starts after them)."""

    def __init__(self, stream_id: str, request_id: Any = None, *, start: int = 0) -> None:
        self.id = stream_id
        self.request_id = request_id
        self._start = start
        self._events: list[Outbound] = []
        self._changed = anyio.Event()
        self.finished_at: float | None = None
        self.continued_elsewhere = False
        """Its request waits for an answer with which any replica can go on (the run is
        kept in the store): a closing session pauses the stream instead of ending it, so
        the client resumes it wherever the run goes on."""

    def append(self, item: Outbound) -> None:
        """Add one event; nothing follows a final one (a stream has one answer)."""
        if self.finished_at is not None:
            return
        self._events.append(item)
        if item.final:
            self.finished_at = time.monotonic()
        self._changed.set()
        self._changed = anyio.Event()

    def __len__(self) -> int:
        """The sequence number of the last event (0 before any)."""
        return self._start + len(self._events)

    def event_id(self, seq: int) -> str:
        return f"{self.id}.{seq}"

    async def after(self, seq: int) -> list[tuple[int, Outbound]]:
        """The events after ``seq``, waiting until there is at least one."""
        first = max(seq, self._start) + 1
        while len(self) < first:
            await self._changed.wait()
        return [(n, self._events[n - self._start - 1]) for n in range(first, len(self) + 1)]


class ResponseStreams:
    """A session's response streams, by id; finished ones expire, the number is bounded."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
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
        stream = ResponseStream(f"{self._prefix}-{self._next}", request_id)
        self._next += 1
        for _, evicted in self._streams.put(stream.id, stream):
            self._forget(evicted)
        if request_id is not None:
            self._by_request[request_id] = stream
        return stream

    def adopt(self, stream_id: str, request_id: Any, *, start: int) -> ResponseStream:
        """A stream that continues, here, one another replica began (its id, its request,
        numbered after its last event ``start``)."""
        stream = ResponseStream(stream_id, request_id, start=start)
        for _, evicted in self._streams.put(stream.id, stream):
            self._forget(evicted)
        if request_id is not None:
            self._by_request[request_id] = stream
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
        whether or not the work behind it ever ran. A stream ``continued_elsewhere`` is
        paused instead: its end will come from the replica that goes on."""
        for stream in self._streams.values():
            if stream.continued_elsewhere:
                stream.append(Outbound(None, pause_ms=PAUSE_FOR_ELSEWHERE_MS))
            else:
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
