"""The HTTP front door's own limits: header size, header and body read deadlines, and a
cap on open connections, each answered with a status and a JSON-RPC error body.

uvicorn with httptools parses any header size (httptools buffers a header until it ends,
so one 96 MB header is read in full and parsed on the event loop) and has no deadline for
reading a request's head or body: a client that dribbles bytes keeps its connection, and
its file descriptor, forever. Its ``limit_concurrency`` answers 503 only once a request's
head is complete, which a dribbling client never reaches. h11 has a head-size cap but no
read deadlines either, and is the slower parser. So this is a small subclass of uvicorn's
httptools protocol that adds the four limits; it is used with whatever event loop uvicorn
runs (uvloop included).

It relies on these private parts of ``HttpToolsProtocol`` (uvicorn is pinned, and
``tests/server/test_front_door.py`` pins them): the attributes ``transport``, ``loop``,
``connections``, ``cycle``, and the parser callbacks ``on_message_begin``,
``on_headers_complete`` and ``on_message_complete``; of ``RequestResponseCycle``:
``response_started``, ``response_complete``, ``disconnected`` and ``message_event``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from vmcp.errors import INVALID_REQUEST_CODE

LINGER_SECONDS = 1.0
"""How long a refused connection's incoming bytes are still read (and dropped) before it
closes, so that the refusal reaches a client that was still sending."""


@dataclass(frozen=True)
class FrontDoorLimits:
    """What one replica's HTTP listener accepts; see ``ServerConfig`` for each default."""

    max_connections: int
    max_header_bytes: int
    header_timeout_seconds: float
    body_timeout_seconds: float

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_header_bytes < 1:
            raise ValueError("max_connections and max_header_bytes must be at least 1")
        if self.header_timeout_seconds <= 0 or self.body_timeout_seconds <= 0:
            raise ValueError("read timeouts must be positive")


def refusal(status: int, reason: str, message: str, *,
            retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, with a JSON-RPC error body
    (no request id: the request was never read)."""
    body = json.dumps({"jsonrpc": "2.0", "id": None,
                       "error": {"code": INVALID_REQUEST_CODE, "message": message}}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json",
            f"content-length: {len(body)}", "connection: close"]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the front door's limits (set by ``bind``).

    A request's head must arrive whole within ``header_timeout_seconds`` of its first byte
    (or of the connection's opening) and be at most ``max_header_bytes`` long (request line
    included); its body must arrive whole within ``body_timeout_seconds`` after the head. A
    connection beyond ``max_connections`` is answered 503 and closed as soon as it opens, so
    the file descriptors it holds stay bounded by the cap.
    """

    limits: FrontDoorLimits

    @classmethod
    def bind(cls, limits: FrontDoorLimits) -> type[GuardedHttpToolsProtocol]:
        """The protocol class to give uvicorn's ``Config(http=...)`` for these limits."""
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._reading_head = True
        self._head_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "Service Unavailable",
                         "Too many open connections to this replica; retry shortly",
                         retry_after=1)
            return
        self._arm(self.limits.header_timeout_seconds, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self.transport.is_closing():
            return
        if self._reading_head:
            if self._deadline is None:
                self._arm(self.limits.header_timeout_seconds, self._head_too_slow)
            # Checked before parsing: httptools would buffer an endless header whole.
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(431, "Request Header Fields Too Large",
                             f"Request head larger than {self.limits.max_header_bytes} bytes")
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._arm(self.limits.body_timeout_seconds, self._body_too_slow)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._reading_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_too_slow(self) -> None:
        self._deadline = None
        self._refuse(408, "Request Timeout",
                     f"Request head not received within {self.limits.header_timeout_seconds:g}s")

    def _body_too_slow(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if cycle is None:
            return
        answered = cycle.response_started
        if not cycle.response_complete:
            # The application is waiting for the rest of the body: it gets a disconnect,
            # and whatever it answers after is dropped (the cycle counts as disconnected).
            cycle.disconnected = True
            cycle.message_event.set()
        if answered:
            self.transport.close()
            return
        self._refuse(408, "Request Timeout",
                     f"Request body not received within {self.limits.body_timeout_seconds:g}s")

    def _refuse(self, status: int, reason: str, message: str, *,
                retry_after: int | None = None) -> None:
        """Answer and close, lingering: a client still sending when a socket closes would
        get a reset that discards the answer unread, so the write side is shut first and
        what arrives is dropped for up to ``LINGER_SECONDS`` (nginx's lingering close)."""
        self._disarm()
        self._reading_head = False
        self._refused = True
        if self.transport.is_closing():
            return
        self.transport.write(refusal(status, reason, message, retry_after=retry_after))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._deadline = self.loop.call_later(LINGER_SECONDS, self.transport.close)
