"""Connection to a Streamable HTTP backend (MCP 2025-03-26, 2025-06-18, 2025-11-25).

Every call is one POST. The backend answers with a single ``application/json``
response, or with a ``text/event-stream`` carrying the request's notifications and
server-to-client requests, then its response. Server-initiated messages that belong
to no request arrive on an optional GET stream (:meth:`StreamableHttpBackend.listen`).

The connection holds no background task and no open stream between calls. Its whole
session is the :class:`BackendState` (session id, protocol version, initialize
result), so another replica can take it over with :func:`vmcp.backend.attach`.
Because a request reads its own response stream, a caller's cancellation or deadline
reaches exactly that call.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping
from contextlib import AsyncExitStack
from typing import Any, Final, NoReturn

import anyio
import httpx2

from vmcp.backend import wire
from vmcp.backend.base import (
    DEFAULT_RETRY,
    INITIALIZED,
    LISTEN_BACKOFF_MAX,
    NO_HEADERS,
    TERMINATE_TIMEOUT,
    BaseBackend,
    Call,
    _SessionGone,
)
from vmcp.backend.contract import STREAM_PAUSED, BackendState, MessageHandler
from vmcp.errors import BackendError, BackendSessionExpired, BackendUnavailable

logger = logging.getLogger(__name__)

SESSION_HEADER: Final = "mcp-session-id"
VERSION_HEADER: Final = "mcp-protocol-version"
LAST_EVENT_ID_HEADER: Final = "last-event-id"

RESUME_ATTEMPTS: Final = 3
"""Consecutive fruitless reconnections to a request's dropped stream before giving up."""

DRAIN_TIMEOUT: Final = 0.05
"""How long to wait for a response stream to end after its response (see ``_drain``)."""

_POST_HEADERS: Final = {"accept": f"{wire.JSON}, {wire.EVENT_STREAM}",
                        "content-type": wire.JSON}
"""What every POST declares: a JSON body, and either answer form accepted."""

LISTEN_READ_TIMEOUT: Final = 300.0
"""Silence after which the GET stream is presumed dead and reopened.

Without it, a half-open TCP connection would end notifications for good.
"""


class StreamableHttpBackend(BaseBackend):
    """A :class:`~vmcp.backend.BackendConnection` over Streamable HTTP."""

    def _setup(self) -> None:
        """Transport settings derived from the connection's timeout."""
        timeout = self._timeout
        # Reads are bounded by each call's own deadline (a tool may legitimately
        # think for minutes), connects by the connection's timeout.
        self._call_timeout = httpx2.Timeout(None, connect=timeout)
        self._listen_timeout = httpx2.Timeout(None, connect=timeout, read=LISTEN_READ_TIMEOUT)
        self._drain_streams = True
        self._base_headers: dict[str, str] = {}
        self._post_headers: dict[str, str] = {}
        self._set_headers(self._state)

    def _install(self, state: BackendState) -> None:
        super()._install(state)
        self._set_headers(self._state)

    def _set_headers(self, state: BackendState) -> None:
        self._base_headers = self._session_headers(state.session_id, state.protocol_version)
        self._post_headers = {**self._base_headers, **_POST_HEADERS}

    def _session_headers(self, session_id: str | None, protocol_version: str) -> dict[str, str]:
        """The target's static headers plus the ones naming our session and version."""
        headers = dict(self.target.headers)
        if session_id is not None:
            headers[SESSION_HEADER] = session_id
        headers[VERSION_HEADER] = protocol_version
        return headers

    # -- one POST ------------------------------------------------------------

    async def _call(self, call: Call) -> dict[str, Any]:
        headers = {**call.headers, **self._post_headers}
        result, _ = await self._post_request(call.id, call.body, headers, call.on_message,
                                             replay=call.replayable)
        return result

    async def _post_request(
        self,
        request_id: int,
        body: bytes,
        headers: dict[str, str],
        on_message: MessageHandler | None,
        answered: list[str] | None = None,
        *,
        replay: bool = False,
    ) -> tuple[dict[str, Any], str | None]:
        """POST one request; returns its result and the ``Mcp-Session-Id`` answered.

        The session id is also put in ``answered`` as soon as the headers arrive, so a
        caller learns it even when the rest of the answer then fails."""
        name = self.target.name

        async def read_stream(response: httpx2.Response) -> dict[str, Any]:
            return await self._read_stream(response, request_id, headers, on_message)

        async with wire.posted(name, self._http, self.target.url, body, headers,
                               self._call_timeout, replay=replay) as response:
            if answered is not None and (session_id := response.headers.get(SESSION_HEADER)):
                answered.append(session_id)
            if response.status_code >= 300 or response.status_code == 202:
                await self._refuse(response, request_id, headers)
            final = await wire.response_in(name, response, request_id, read_stream)
            return wire.result_of(name, final), response.headers.get(SESSION_HEADER)

    async def _read_stream(
        self,
        response: httpx2.Response,
        request_id: int,
        headers: dict[str, str],
        on_message: MessageHandler | None,
    ) -> dict[str, Any]:
        """The response to ``request_id`` from its event stream, resumed if the backend
        ends the stream first."""
        cursor = _Cursor()
        try:
            final = await self._pump(response, request_id, headers, on_message, cursor)
        except httpx2.TransportError as exc:
            # A broken connection can be resumed; a malformed stream cannot.
            if cursor.last_event_id is None or isinstance(exc, httpx2.SSEError):
                raise
            final = None
        if final is None:
            # The backend ended the stream early (SSE polling): let the caller mirror
            # that to its own client before this call resumes.
            retry = DEFAULT_RETRY if cursor.retry is None else cursor.retry
            paused = {"method": STREAM_PAUSED, "params": {"retryMs": int(retry * 1000)}}
            await wire.deliver(self.target.name, paused, on_message)
            final = await self._resume_stream(request_id, headers, on_message, cursor)
        return final

    async def _refuse(
        self, response: httpx2.Response, request_id: int | None, headers: dict[str, str]
    ) -> NoReturn:
        """Raise the error for a POST the backend did not answer with a response."""
        body, rpc_error = await wire.refusal(self.target.name, response, request_id)
        if rpc_error is not None:
            raise rpc_error
        if response.status_code == 404 and SESSION_HEADER in headers:
            raise _SessionGone
        raise wire.status_error(self.target.name, response, body)

    async def _pump(
        self,
        response: httpx2.Response,
        request_id: int,
        headers: dict[str, str],
        on_message: MessageHandler | None,
        cursor: _Cursor,
    ) -> dict[str, Any] | None:
        """Consume one event stream; return the response to ``request_id``, or None if
        the stream ended first."""
        name = self.target.name
        events = wire.event_stream(response)
        async for event in events:
            if event.id:
                cursor.last_event_id = event.id
                cursor.progressed = True
            if event.retry is not None:
                cursor.retry = event.retry / 1000
            if not event.data or event.event != "message":
                continue  # priming events carry only an id
            for message in wire.decode(name, event.data):
                if "method" not in message:
                    if wire.is_response_to(message, request_id):
                        await self._drain(events)
                        return message
                    continue  # a response to something else: not ours to take
                if "id" in message:
                    await self._post_reply(await wire.answer(name, message, on_message), headers)
                else:
                    await wire.deliver(name, message, on_message)
        return None

    async def _drain(self, events: AsyncGenerator[httpx2.ServerSentEvent, None]) -> None:
        """Read a response stream to its end once the response is in.

        Only a response read to the end leaves its connection in the pool. Closing it
        early costs a new TCP connection on the next call, about a third more CPU.
        Backends close the stream right after the response, as the spec asks. One that
        keeps it open costs this connection a single short wait, and is not waited for
        again.
        """
        if not self._drain_streams:
            return
        with anyio.move_on_after(DRAIN_TIMEOUT) as scope:
            try:
                async for _ in events:
                    pass  # anything after our response is not ours to handle
            except httpx2.HTTPError as exc:
                # The call already has its answer; only the connection is lost.
                logger.debug("backend %r: response stream ended badly: %s", self.target.name, exc)
        if scope.cancelled_caught:
            self._drain_streams = False
            logger.info(
                "backend %r keeps response streams open; not waiting for them", self.target.name
            )

    async def _resume_stream(
        self,
        request_id: int,
        headers: dict[str, str],
        on_message: MessageHandler | None,
        cursor: _Cursor,
    ) -> dict[str, Any]:
        """Reconnect to a response stream the backend closed early (SSE polling).

        A stream that ended without the response can be resumed only if the backend
        numbered its events. The request has already reached the backend, so a
        404 here is final: resending the request could run it twice.
        """
        name = self.target.name
        if cursor.last_event_id is None:
            raise BackendUnavailable(name, "response stream ended before the response")
        failures = 0
        while failures < RESUME_ATTEMPTS:
            await anyio.sleep(DEFAULT_RETRY if cursor.retry is None else cursor.retry)
            # The POST's own headers (its session, its credentials), minus the body's type.
            get_headers = {
                **{k: v for k, v in headers.items() if k != "content-type"},
                "accept": wire.EVENT_STREAM,
                LAST_EVENT_ID_HEADER: cursor.last_event_id,
            }
            request = self._http.build_request(
                "GET", self.target.url, headers=get_headers, timeout=self._call_timeout
            )
            cursor.progressed = False
            try:
                response = await self._http.send(request, stream=True)
                try:
                    if response.status_code == 404 and SESSION_HEADER in headers:
                        raise BackendSessionExpired(
                            name, "backend forgot the session during the request"
                        )
                    if (response.status_code == 200
                            and wire.content_type(response).startswith(wire.EVENT_STREAM)):
                        final = await self._pump(response, request_id, headers, on_message, cursor)
                        if final is not None:
                            return final
                finally:
                    await response.aclose()
            except httpx2.TransportError as exc:
                if isinstance(exc, httpx2.SSEError):
                    raise
                logger.debug("backend %r: resuming the response stream failed: %s", name, exc)
            failures = 0 if cursor.progressed else failures + 1
        raise BackendUnavailable(name, "response stream lost and could not be resumed")

    async def _post_reply(self, reply: dict[str, Any], headers: dict[str, str]) -> None:
        """Answer a server-to-client request within the session that asked."""
        try:
            await self._post(wire.encode(reply), headers)
        except _SessionGone:
            raise BackendSessionExpired(
                self.target.name, "backend forgot the session during the request"
            ) from None

    async def _send(self, body: bytes, headers: Mapping[str, str]) -> None:
        try:
            await self._post(body, {**headers, **self._post_headers})
        except httpx2.HTTPError as exc:
            raise wire.transport_error(self.target.name, exc) from exc

    async def _post(self, body: bytes, headers: dict[str, str]) -> None:
        """POST a notification or response; the backend should accept it with 202."""
        # A notification or a response: the backend takes a second copy as it took the
        # first (a response to a request it no longer waits for is dropped).
        request = self._http.build_request(
            "POST", self.target.url, content=body, headers=headers, timeout=self._call_timeout,
            extensions={wire.REPLAYABLE: True},
        )
        response = await self._http.send(request, stream=True)
        try:
            if not 200 <= response.status_code < 300:
                await self._refuse(response, None, headers)
        finally:
            await response.aclose()

    # -- session lifecycle ---------------------------------------------------

    async def _handshake(self, protocol_version: str, headers: Mapping[str, str]) -> BackendState:
        name = self.target.name
        request_id, body = self._initialize(protocol_version)
        # No session and no version yet: initialize is what negotiates them.
        post_headers = {**headers, **self.target.headers, **_POST_HEADERS}
        answered: list[str] = []
        try:
            result, session_id = await self._post_request(request_id, body, post_headers, None,
                                                          answered)
        except BaseException:
            # The backend opened the session and named it before the answer broke: the
            # session exists there, and only this client knows its id.
            if answered:
                with anyio.move_on_after(TERMINATE_TIMEOUT, shield=True):
                    await self._delete(answered[0], protocol_version, headers)
            raise
        session_id = session_id or None
        async with self._opening(lambda: self._delete(session_id, protocol_version, headers)):
            version = wire.negotiated_version(name, result)
            state = BackendState(session_id, version, result)
            try:
                await self._post(INITIALIZED, {
                    **headers, **self._session_headers(session_id, version), **_POST_HEADERS})
            except httpx2.HTTPError as exc:
                raise wire.transport_error(name, exc) from exc
        return state

    async def _terminate(self) -> None:
        await self._delete(
            self._state.session_id, self._state.protocol_version, self._latest_headers
        )

    async def _delete(
        self, session_id: str | None, protocol_version: str, headers: Mapping[str, str]
    ) -> None:
        """End a backend session with DELETE; failures are logged, never raised."""
        if session_id is None:
            return
        name = self.target.name
        try:
            response = await self._http.delete(
                self.target.url,
                headers={**headers, **self._session_headers(session_id, protocol_version)},
                timeout=min(self._timeout, TERMINATE_TIMEOUT),
            )
        except httpx2.HTTPError as exc:
            logger.warning("backend %r: DELETE of the session failed: %s", name, exc)
            return
        if response.status_code in (404, 405):
            logger.debug("backend %r: DELETE answered %d", name, response.status_code)
        elif not 200 <= response.status_code < 300:
            logger.warning("backend %r: DELETE answered HTTP %d", name, response.status_code)

    # -- the GET stream ------------------------------------------------------

    async def listen(
        self, *, headers: Mapping[str, str] | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        name = self.target.name
        extra = self._call_headers(headers)
        delay = DEFAULT_RETRY
        last_event_id: str | None = None
        recovered = False
        # A stateless backend has no session to push messages on.
        while not self._closed and self._state.session_id is not None:
            generation = self._generation
            get_headers = {**extra, **self._base_headers, "accept": wire.EVENT_STREAM}
            if last_event_id is not None:
                get_headers[LAST_EVENT_ID_HEADER] = last_event_id
            async with AsyncExitStack() as stack:
                with self._interruptible() as scope:
                    response = await self._open_stream(get_headers, stack)
                if scope.cancelled_caught:
                    return
                status = 0 if response is None else response.status_code
                kind = "" if response is None else wire.content_type(response)
                if status == 405:
                    return  # the backend offers no such stream
                if status == 404 and not recovered:
                    # Our session is gone. Run the shared re-initialization, then open the
                    # new session's stream at once. A second 404 in a row backs off.
                    last_event_id = None
                    with self._interruptible() as scope:
                        recovered = await self._recover_quietly(generation, extra)
                    if scope.cancelled_caught:
                        return
                    if recovered:
                        continue
                elif response is not None and status == 200 and kind.startswith(wire.EVENT_STREAM):
                    recovered = False
                    self.stream_opened.set()
                    events = wire.event_stream(response)
                    stack.push_async_callback(events.aclose)
                    while True:
                        with self._interruptible() as scope:
                            event = await self._next_event(events)
                        if scope.cancelled_caught:
                            return
                        if event is None:
                            break
                        delay = DEFAULT_RETRY
                        if event.id:
                            last_event_id = event.id
                        if event.retry is not None:
                            delay = min(event.retry / 1000, LISTEN_BACKOFF_MAX)
                        for message in wire.messages_in(name, event):
                            if "method" not in message:
                                continue  # only requests and notifications come this way
                            if message.get("method") == "ping" and "id" in message:
                                with self._interruptible():
                                    reply = await wire.answer(name, message, None)
                                    await self._reply_quietly(reply, extra)
                            else:
                                yield message
                elif response is not None:
                    logger.debug("backend %r: GET stream refused with HTTP %d", name, status)
            with self._interruptible() as scope:
                await anyio.sleep(delay)
            if scope.cancelled_caught:
                return
            delay = min(delay * 2, LISTEN_BACKOFF_MAX)
            recovered = False

    async def _open_stream(
        self, headers: dict[str, str], stack: AsyncExitStack
    ) -> httpx2.Response | None:
        """Open the GET stream; None if the backend could not be reached."""
        request = self._http.build_request(
            "GET", self.target.url, headers=headers, timeout=self._listen_timeout
        )
        try:
            response = await self._http.send(request, stream=True)
        except httpx2.HTTPError as exc:
            logger.debug("backend %r: opening the GET stream failed: %s", self.target.name, exc)
            return None
        stack.push_async_callback(response.aclose)
        return response

    async def _next_event(
        self, events: AsyncGenerator[httpx2.ServerSentEvent, None]
    ) -> httpx2.ServerSentEvent | None:
        """The next event of the GET stream; None once it has ended or broken."""
        try:
            return await events.__anext__()
        except StopAsyncIteration:
            return None
        except httpx2.HTTPError as exc:
            logger.debug("backend %r: GET stream broke: %s", self.target.name, exc)
            return None

    async def _reply_quietly(
        self, reply: dict[str, Any], headers: Mapping[str, str] = NO_HEADERS
    ) -> None:
        try:
            await self._send(wire.encode(reply), headers)
        except (BackendError, _SessionGone) as exc:
            logger.debug("backend %r: reply not delivered: %s", self.target.name, exc)


class _Cursor:
    """Where a response stream stands, so that it can be resumed."""

    __slots__ = ("last_event_id", "progressed", "retry")

    def __init__(self) -> None:
        self.last_event_id: str | None = None
        self.retry: float | None = None
        self.progressed = False
