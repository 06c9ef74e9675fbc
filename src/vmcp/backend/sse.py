"""Connection to a legacy HTTP+SSE backend (the 2024-11-05 transport).

A GET on the backend URL opens an event stream. Its first ``endpoint`` event names the
URL that messages are POSTed to. Every answer arrives on that stream, never on the
POST. The backend's session exists only while this one stream is open. So the session
cannot be handed to another replica: :meth:`SseBackend.resume_session` simply opens a
fresh session, so :func:`vmcp.backend.connect` and ``attach`` are the same apart from
the version they offer. If the stream drops, the session is gone. The next call notices
and re-initializes, exactly as after a 404.

The stream must be read all the time, whether or not a caller is waiting, and its
reader must outlive any single call. The connection therefore owns one reader task,
created on the running asyncio loop (vmcp runs on asyncio; the contract has no
enclosing task group to put it in). :meth:`SseBackend.aclose` cancels it, so an
``SseBackend`` must always be closed.

Messages are routed to the waiting call with the matching id. A
``notifications/progress`` goes to the call whose progress token it names. Any other
server message goes to the only in-flight call that has a handler, if there is exactly
one (this transport gives no other way to tell which call it belongs to). Otherwise it
goes to :meth:`SseBackend.listen`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import httpx2
from anyio.streams.memory import MemoryObjectSendStream

from vmcp.backend import wire
from vmcp.backend.base import (
    DEFAULT_RETRY,
    INITIALIZED,
    LISTEN_BACKOFF_MAX,
    TERMINATE_TIMEOUT,
    BaseBackend,
    Call,
    _SessionGone,
)
from vmcp.backend.contract import BackendState, MessageHandler
from vmcp.errors import (
    METHOD_NOT_FOUND_CODE,
    BackendError,
    BackendProtocolError,
    BackendSessionExpired,
    BackendUnavailable,
)

logger = logging.getLogger(__name__)

LISTEN_BUFFER: Final = 256
"""Messages kept for a slow :meth:`SseBackend.listen` consumer before newer ones are
dropped. The reader never waits for a consumer, because responses share the stream."""

_STREAM_ENDED: Final[dict[str, Any]] = {}
"""Put in each :meth:`SseBackend.listen` inbox when the current stream ends (by identity)."""

_SESSION_WIDE: Final = frozenset(
    {
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/resources/list_changed",
        "notifications/resources/updated",
    }
)
"""Notifications about the session as a whole, never about one call."""


@dataclass(slots=True, eq=False)
class _Waiter:
    """A call waiting for its response on the stream."""

    inbox: MemoryObjectSendStream[dict[str, Any]]
    has_handler: bool


@dataclass(eq=False)
class _Stream:
    """One GET stream, and with it one backend session."""

    opened: anyio.Event
    headers: Mapping[str, str] = field(default_factory=dict)
    """The credentials the stream was opened with; the reader's own replies use them."""
    endpoint: str | None = None
    error: BackendError | None = None
    alive: bool = True
    task: asyncio.Task[None] | None = None
    waiters: dict[Any, _Waiter] = field(default_factory=dict)
    progress_tokens: dict[Any, Any] = field(default_factory=dict)


class SseBackend(BaseBackend):
    """A :class:`~vmcp.backend.BackendConnection` over legacy HTTP+SSE."""

    def _setup(self) -> None:
        """Transport settings derived from the connection's timeout."""
        timeout = self._timeout
        # The stream is the session, so it has no read timeout: an idle session is
        # not a dead one.
        self._stream_timeout = httpx2.Timeout(None, connect=timeout)
        self._post_timeout = httpx2.Timeout(timeout)
        self._get_headers = {
            **self.target.headers,
            "accept": wire.EVENT_STREAM,
            "cache-control": "no-store",
        }
        self._post_headers = {**self.target.headers, "content-type": wire.JSON}
        self._stream: _Stream | None = None
        self._listeners: set[MemoryObjectSendStream[dict[str, Any]]] = set()

    async def resume_session(self, headers: Mapping[str, str] | None) -> None:
        """Open a fresh session, offering the version recorded in the state to resume.

        A legacy session lives and dies with its stream, which another process cannot
        take over. The new :attr:`state` is what the session metadata should store from
        now on.
        """
        await self.open_session(headers)

    # -- calls ---------------------------------------------------------------

    async def _call(self, call: Call) -> dict[str, Any]:
        stream = self._stream
        if stream is None or not stream.alive:
            raise _SessionGone  # the stream was the session
        token = None
        if call.params is not None and isinstance(meta := call.params.get("_meta"), dict):
            token = meta.get("progressToken")
        return await self._exchange(stream, call.id, call.body, call.on_message, token,
                                    call.headers)

    async def _exchange(
        self,
        stream: _Stream,
        request_id: int,
        body: bytes,
        on_message: MessageHandler | None,
        progress_token: Any,
        headers: Mapping[str, str],
    ) -> dict[str, Any]:
        name = self.target.name
        inbox, outbox = anyio.create_memory_object_stream[dict[str, Any]](math.inf)
        with inbox, outbox:
            stream.waiters[request_id] = _Waiter(inbox, on_message is not None)
            if progress_token is not None:
                stream.progress_tokens[progress_token] = request_id
            try:
                await self._post(stream, body, headers)
                async for message in outbox:
                    if "method" not in message:
                        return wire.result_of(name, message)
                    if "id" not in message:
                        await wire.deliver(name, message, on_message)
                        continue
                    reply = await wire.answer(name, message, on_message)
                    try:
                        await self._post(stream, wire.encode(reply), headers)
                    except _SessionGone:
                        raise BackendSessionExpired(
                            name, "backend forgot the session during the request"
                        ) from None
                raise BackendUnavailable(name, "event stream closed before the response")
            finally:
                stream.waiters.pop(request_id, None)
                if progress_token is not None:
                    stream.progress_tokens.pop(progress_token, None)

    async def _send(self, body: bytes, headers: Mapping[str, str]) -> None:
        stream = self._stream
        if stream is None or not stream.alive:
            raise _SessionGone
        await self._post(stream, body, headers)

    async def _post(self, stream: _Stream, body: bytes, headers: Mapping[str, str]) -> None:
        """POST one message to the session's endpoint; the answer comes on the stream."""
        assert stream.endpoint is not None
        try:
            response = await self._http.post(
                stream.endpoint,
                content=body,
                headers={**headers, **self._post_headers},
                timeout=self._post_timeout,
            )
        except httpx2.HTTPError as exc:
            raise wire.transport_error(self.target.name, exc) from exc
        if 200 <= response.status_code < 300:
            return
        if response.status_code == 404:
            raise _SessionGone
        raise wire.status_error(self.target.name, response, response.content)

    # -- session lifecycle ---------------------------------------------------

    async def _handshake(self, protocol_version: str, headers: Mapping[str, str]) -> BackendState:
        """Open a new stream and initialize its session.

        The new stream becomes current only once initialized, so calls never see a
        half-open session. The previous stream, if any, is closed at that moment.
        """
        name = self.target.name
        stream = _Stream(anyio.Event(), headers)
        stream.task = asyncio.get_running_loop().create_task(
            self._read(stream), name=f"vmcp-sse-reader:{name}"
        )
        async with self._opening(lambda: _stop(stream)):
            await stream.opened.wait()
            if stream.error is not None:
                raise stream.error
            request_id, body = self._initialize(protocol_version)
            result = await self._exchange(stream, request_id, body, None, None, headers)
            version = wire.negotiated_version(name, result)
            await self._post(stream, INITIALIZED, headers)
        previous, self._stream = self._stream, stream
        if previous is not None:
            with anyio.move_on_after(TERMINATE_TIMEOUT, shield=True):
                await _stop(previous)
        return BackendState(None, version, result)

    async def _terminate(self) -> None:
        if self._stream is not None:
            await _stop(self._stream)

    # -- the reader ----------------------------------------------------------

    async def _read(self, stream: _Stream) -> None:
        """Read one stream until it ends; runs as the connection's reader task."""
        name = self.target.name
        try:
            request = self._http.build_request(
                "GET",
                self.target.url,
                headers={**stream.headers, **self._get_headers},
                timeout=self._stream_timeout,
            )
            response = await self._http.send(request, stream=True)
            try:
                kind = wire.content_type(response)
                if response.status_code != 200 or not kind.startswith(wire.EVENT_STREAM):
                    body = await wire.read_body(name, response)
                    if response.status_code == 200:
                        stream.error = BackendProtocolError(
                            name, f"unexpected content type {kind!r}"
                        )
                    else:
                        stream.error = wire.status_error(name, response, body)
                    return
                async for event in wire.event_stream(response):
                    if event.event == "endpoint":
                        if stream.endpoint is None:
                            stream.endpoint = self._endpoint_url(event.data)
                            stream.opened.set()
                        continue
                    if stream.endpoint is None:
                        continue
                    for message in wire.messages_in(name, event):
                        await self._dispatch(stream, message)
            finally:
                await response.aclose()
        except httpx2.HTTPError as exc:
            stream.error = wire.transport_error(name, exc)
        except BackendError as exc:
            stream.error = exc
        except Exception:
            logger.exception("backend %r: event stream reader failed", name)
            stream.error = BackendProtocolError(name, "event stream reader failed")
        finally:
            stream.alive = False
            if stream.error is None and not stream.opened.is_set():
                stream.error = BackendUnavailable(
                    name, "event stream closed before the endpoint event"
                )
            stream.opened.set()
            for waiter in stream.waiters.values():
                waiter.inbox.close()
            if not self._closed and stream is self._stream:
                logger.info("backend %r: event stream ended: %s", name, stream.error or "closed")
                for listener in self._listeners:
                    _put(listener, _STREAM_ENDED)

    def _endpoint_url(self, data: str) -> str:
        """The POST URL from an ``endpoint`` event; it must stay on the backend's origin,
        since every POST carries the target's headers (credentials included)."""
        base = httpx2.URL(self.target.url)
        url = base.join(data.strip())
        if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            raise BackendProtocolError(
                self.target.name, f"endpoint {str(url)!r} is on another origin"
            )
        return str(url)

    async def _dispatch(self, stream: _Stream, message: dict[str, Any]) -> None:
        """Route one message from the stream; never waits on a caller."""
        if "method" not in message:
            message_id = message.get("id")
            waiter = stream.waiters.get(message_id)
            if waiter is None and isinstance(message_id, str) and message_id.isdigit():
                waiter = stream.waiters.get(int(message_id))  # an id echoed back as a string
            if waiter is not None:
                _put(waiter.inbox, message)
            return
        method = message["method"]
        if method == "ping" and "id" in message:
            reply = await wire.answer(self.target.name, message, None)
            await self._reply_from_reader(stream, reply)
            return
        if method == "notifications/progress":
            params = message.get("params")
            token = params.get("progressToken") if isinstance(params, dict) else None
            waiter = stream.waiters.get(stream.progress_tokens.get(token))
            if waiter is not None:
                _put(waiter.inbox, message)
                return
        elif method not in _SESSION_WIDE:
            with_handler = [waiter for waiter in stream.waiters.values() if waiter.has_handler]
            if len(with_handler) == 1:
                _put(with_handler[0].inbox, message)
                return
        if self._listeners:
            for listener in list(self._listeners):
                if listener.statistics().current_buffer_used >= LISTEN_BUFFER:
                    logger.warning(
                        "backend %r: listener too slow, dropped %r", self.target.name, method
                    )
                else:
                    _put(listener, message)
            return
        if "id" in message:
            reply = wire.error_reply(message["id"], METHOD_NOT_FOUND_CODE, "Method not found")
            await self._reply_from_reader(stream, reply)

    async def _reply_from_reader(self, stream: _Stream, reply: dict[str, Any]) -> None:
        with anyio.move_on_after(self._timeout):
            try:
                await self._post(stream, wire.encode(reply), stream.headers)
            except (BackendError, _SessionGone) as exc:
                logger.debug("backend %r: reply not delivered: %s", self.target.name, exc)

    # -- session-wide messages -----------------------------------------------

    async def listen(
        self, *, headers: Mapping[str, str] | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        extra = self._call_headers(headers)
        inbox, outbox = anyio.create_memory_object_stream[dict[str, Any]](math.inf)
        self._listeners.add(inbox)
        try:
            with inbox, outbox:
                while True:
                    if not self._stream_alive():
                        # The session went with its stream. Open a new one, so that
                        # session-wide messages keep coming even when no call would.
                        if not await self._reopen(extra):
                            return
                        continue
                    with self._interruptible() as scope:
                        message = await outbox.receive()
                    if scope.cancelled_caught:
                        return
                    if message is not _STREAM_ENDED:
                        yield message
        finally:
            self._listeners.discard(inbox)

    def _stream_alive(self) -> bool:
        return self._stream is not None and self._stream.alive

    async def _reopen(self, headers: Mapping[str, str]) -> bool:
        """Re-initialize for ``listen`` after its stream ended; False once closed."""
        delay = DEFAULT_RETRY
        while not self._stream_alive():
            generation = self._generation
            with self._interruptible() as scope:
                await anyio.sleep(delay)
                await self._recover_quietly(generation, headers)
            if scope.cancelled_caught:
                return False
            delay = min(delay * 2, LISTEN_BACKOFF_MAX)
        return True


async def _stop(stream: _Stream) -> None:
    """Close a stream, which ends the backend session bound to it."""
    if stream.task is not None and not stream.task.done():
        stream.task.cancel()
        await asyncio.wait({stream.task}, timeout=TERMINATE_TIMEOUT)


def _put(inbox: MemoryObjectSendStream[dict[str, Any]], message: dict[str, Any]) -> None:
    # A closed inbox means the call finished while this message was in flight.
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        inbox.send_nowait(message)
