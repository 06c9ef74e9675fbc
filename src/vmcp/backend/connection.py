"""The contract of a connection to one backend MCP server for one vmcp session.

vmcp talks to its backends through a thin client of its own over ``httpx2`` rather than
the SDK's ``ClientSession``, for four reasons:

1. A vmcp session can be served by any replica. A replica that has never seen the
   session must be able to resume using the backend session from the stored
   ``Mcp-Session-Id`` and protocol version alone, with no wire traffic
   (:meth:`StreamableHttpBackend.attach`). ``ClientSession`` always runs ``initialize``.
2. The gateway relays messages: results go back to the client as they came, so they
   stay raw JSON-RPC dicts. Re-modelling every result with pydantic would cost time and
   risk dropping fields the SDK does not know. ``mcp_types`` is used only where
   validation pays for itself (the ``InitializeResult``).
3. The hot path (one ``tools/call``) must cost well under 1 ms of CPU. A
   ``ClientSession`` adds memory streams, a dispatcher task and model round trips to
   every message.
4. A backend that forgets our session answers HTTP 404. The gateway must see that
   status itself so it can re-initialize and retry. The SDK turns it into a generic
   JSON-RPC error.

This module holds the types the session layer depends on (:class:`BackendTarget`,
:class:`BackendState`, :class:`BackendConnection`, ...). It also holds
:class:`BaseBackend`, the half of a connection that does not depend on the transport:
request ids, timeouts, cancellation, the shared re-initialization, draining on close
and the counters.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol, Self, TypeVar

import anyio
import httpx2

from vmcp.errors import (
    INTERNAL_ERROR_CODE,
    METHOD_NOT_FOUND_CODE,
    BackendError,
    BackendProtocolError,
    BackendSessionExpired,
    BackendTimeout,
    BackendUnavailable,
    SessionClosed,
)

logger = logging.getLogger(__name__)

DEFAULT_PROTOCOL_VERSION: Final = "2025-11-25"
"""The version offered in ``initialize`` unless the caller asks for another."""

MAX_MESSAGE_BYTES: Final = 32 * 1024 * 1024
"""Largest JSON-RPC message accepted from a backend (one JSON body or one SSE event).

Large enough for big tool results (for example base64 images). Without a limit, a
broken backend could make a replica buffer without bound.
"""

CANCEL_NOTICE_TIMEOUT: Final = 2.0
"""Time allowed for the ``notifications/cancelled`` sent when a caller gives up."""

TERMINATE_TIMEOUT: Final = 5.0
"""Upper bound on the DELETE (or stream teardown) that ends a backend session."""

DEFAULT_RETRY: Final = 1.0
"""Seconds to wait before reconnecting a dropped stream when the backend named no ``retry``."""

LISTEN_BACKOFF_MAX: Final = 30.0
"""Upper bound of the delay between two attempts to reopen a ``listen`` stream."""

STREAM_PAUSED: Final = "vmcp/streamPaused"
"""A pseudo-notification given to ``on_message`` when a backend ends a response stream
before the response (MCP SSE polling); ``params.retryMs`` says when the call resumes.
It never comes from the wire (``/`` -namespaced methods there are MCP's own)."""

JSON: Final = "application/json"
EVENT_STREAM: Final = "text/event-stream"

_ID_SPACE: Final = 2**52
"""Request ids start at a random point below this bound and count up from there.

Two replicas can hold the same backend session at once, and a session must never
reuse a request id. Random starting points keep the two counters apart. The ids stay
integers below 2**53, which every JSON implementation represents exactly.
"""

T = TypeVar("T")

NO_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})
"""The per-call headers of a call that carries no credentials of its own."""


@dataclass(frozen=True, slots=True)
class BackendTarget:
    """What the configuration says about one backend.

    ``headers`` are sent on every HTTP request to the backend (for example a static
    ``Authorization``). The MCP headers the client sets itself take precedence over
    them.
    """

    name: str
    url: str
    transport: Literal["streamable-http", "sse"] = "streamable-http"
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # A read-only copy, so a frozen target cannot change under a live connection.
        object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))


@dataclass(frozen=True, slots=True)
class BackendState:
    """What the session metadata stores so that any replica can re-attach.

    ``session_id`` is the backend's ``Mcp-Session-Id``. It is None when the backend is
    stateless, and for legacy SSE backends, whose sessions live only as long as one
    stream. ``initialize_result`` is the backend's ``InitializeResult`` exactly as
    received (capabilities, serverInfo, instructions), so the gateway can merge
    capabilities without asking the backend again.
    """

    session_id: str | None
    protocol_version: str
    initialize_result: dict[str, Any] = field(hash=False)

    def to_json(self) -> str:
        """Compact JSON, to store in the session metadata."""
        return json.dumps(
            {
                "session_id": self.session_id,
                "protocol_version": self.protocol_version,
                "initialize_result": self.initialize_result,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, data: str | bytes, *, backend: str = "?") -> BackendState:
        """Parse what :meth:`to_json` wrote.

        Raises BackendProtocolError (naming ``backend``) for anything else. A corrupt
        record must fail like any other bad backend answer, not crash the caller with
        a ``KeyError``.
        """
        try:
            raw = json.loads(data)
        except ValueError as exc:
            raise BackendProtocolError(
                backend, f"stored backend state is not JSON: {exc}"
            ) from None
        if not isinstance(raw, dict):
            raise BackendProtocolError(backend, "stored backend state is not a JSON object")
        session_id = raw.get("session_id")
        protocol_version = raw.get("protocol_version")
        initialize_result = raw.get("initialize_result")
        if (
            not (session_id is None or (isinstance(session_id, str) and session_id))
            or not isinstance(protocol_version, str)
            or not protocol_version
            or not isinstance(initialize_result, dict)
        ):
            raise BackendProtocolError(
                backend, "stored backend state has missing or invalid fields"
            )
        return cls(session_id, protocol_version, initialize_result)


@dataclass(frozen=True, slots=True)
class BackendStatistics:
    """Counters of one connection, for metrics.

    ``requests`` counts calls to ``request``. ``errors`` counts those that failed for a
    transport or protocol reason (unreachable, timeout, garbage, session lost). These
    are the failures worth an alert. ``rpc_errors`` counts those the backend answered
    with a JSON-RPC error, which the gateway relays as they are.
    ``reinitializations`` counts the fresh ``initialize`` runs after the backend forgot
    the session.
    """

    requests: int
    errors: int
    rpc_errors: int
    reinitializations: int


class BackendRpcError(BackendError):
    """The backend answered a request with a JSON-RPC error.

    Carries the backend's own ``code``, ``message`` and ``data``, so the gateway can
    relay the error as the backend sent it instead of masking it as an internal error.
    """

    def __init__(self, backend: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(backend, f"JSON-RPC error {code}: {message}")
        self.code = code
        self.message = message
        self.data = data

    def error_object(self) -> dict[str, Any]:
        """The JSON-RPC ``error`` member to relay."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


MessageHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]
"""Receives what the backend sends during a request, other than the final response.

For a notification (``notifications/progress``, ``notifications/message``) the return
value is ignored. For a server-to-client request (``sampling/createMessage``,
``elicitation/create``, ``roots/list``) it returns the JSON-RPC response to send back:
a dict with ``result`` or ``error``. The connection sets ``jsonrpc`` and ``id`` to
match the backend's request, so a handler that relays a client's answer need not
restore the backend's id. If the handler raises, the backend gets a JSON-RPC internal
error. If it returns None for a request, the backend gets method-not-found.

``ping`` never reaches a handler. The connection answers it itself, because a ping
checks the link between vmcp and the backend, not the end client.
"""

ReinitializedHook = Callable[[BackendState], Awaitable[None]]
"""Called once after each successful re-initialization, with the new state to store."""


class BackendConnection(Protocol):
    """A live MCP session with one backend, held on behalf of one vmcp session.

    Every method can be called concurrently from many tasks. Failures raise
    :class:`BackendRpcError` (the backend answered with a JSON-RPC error),
    ``BackendUnavailable``, ``BackendTimeout``, ``BackendProtocolError`` or
    ``BackendSessionExpired``. Any call made after :meth:`aclose` raises
    ``SessionClosed``.

    If the backend answers HTTP 404 for our session, the connection runs a single fresh
    ``initialize``, shared by every caller that hit the 404. Each of those calls is then
    retried once. A second 404 raises ``BackendSessionExpired``.

    ``headers``, where a method takes them, are the credentials of the client request the
    call serves (outgoing auth). They go on every HTTP request of that call - including
    the re-initialization it may lead and the cancellation notice it may send - after
    the target's static headers; the transport's own headers always win. The connection
    keeps only the latest of them, in memory, to end the backend session on close.
    """

    @property
    def target(self) -> BackendTarget: ...

    @property
    def state(self) -> BackendState:
        """The current backend session; changes after a re-initialization."""
        ...

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        on_message: MessageHandler | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the per-call deadline is the contract
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send one JSON-RPC request and return its ``result`` object.

        ``timeout`` (default: the connection's timeout) bounds the whole call,
        including any re-initialization and the time spent in ``on_message``. If the
        caller is cancelled or the timeout passes, the backend is sent
        ``notifications/cancelled`` (best effort) before the error propagates.
        """
        ...

    async def notify(self, method: str, params: dict[str, Any] | None, *,
                     headers: Mapping[str, str] | None = None) -> None:
        """Send one JSON-RPC notification."""
        ...

    async def respond(self, message: dict[str, Any], *,
                      headers: Mapping[str, str] | None = None) -> None:
        """Send the answer to a server-to-client request that :meth:`listen` yielded.

        Never re-initializes: the request belonged to the session that sent it, so if
        the backend has forgotten that session, this raises ``BackendSessionExpired``.
        """
        ...

    def listen(self, *, headers: Mapping[str, str] | None = None
               ) -> AsyncGenerator[dict[str, Any], None]:
        """Server-initiated messages that belong to no request.

        Yields notifications such as ``notifications/tools/list_changed``, and requests
        to answer with :meth:`respond`. A dropped stream is reopened with bounded
        backoff. The iterator ends when the connection closes or when the backend has
        no such stream. Use it inside ``contextlib.aclosing`` so that its HTTP stream is
        released as soon as the consumer stops.
        """
        ...

    def statistics(self) -> BackendStatistics: ...

    async def aclose(self, *, timeout: float | None = None,  # noqa: ASYNC109 - drain bound
                     end_session: bool = True) -> None:
        """End the connection. Idempotent; never raises for a backend failure.

        New calls are refused at once. In-flight calls may finish for up to
        ``timeout`` (default: the connection's timeout); after that they are
        cancelled and raise ``SessionClosed``. Then the backend session is ended
        (an HTTP DELETE for Streamable HTTP). That step is bounded too, and its
        failures are logged, not raised. With ``end_session`` False the backend
        session is left open: only this connection to it closes, and a later
        ``attach`` with the same state goes on with it.
        """
        ...


# ---------------------------------------------------------------------------
# The transport-independent half of a connection.


class _SessionGone(Exception):
    """Internal signal: the backend no longer knows the session we named.

    Raised by a transport only when resending the same message to a fresh session is
    safe, that is, before the backend can have acted on it.
    """


@dataclass(slots=True)
class _Flight:
    """One re-initialization in progress; the callers that hit the same 404 wait on it."""

    done: anyio.Event
    error: BackendError | None = None


def encode(message: dict[str, Any]) -> bytes:
    """Serialize one JSON-RPC message for the wire."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def decode(backend: str, data: str | bytes) -> list[dict[str, Any]]:
    """Parse one body or SSE event into JSON-RPC messages.

    A list is accepted too, because 2025-03-26 backends may batch.
    """
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        raise BackendProtocolError(backend, f"invalid JSON from backend: {exc}") from None
    if isinstance(parsed, dict):
        return [parsed]
    if isinstance(parsed, list) and parsed and all(isinstance(item, dict) for item in parsed):
        return parsed
    raise BackendProtocolError(backend, "backend sent JSON that is not a JSON-RPC message")


def is_response_to(message: dict[str, Any], request_id: int) -> bool:
    """Whether ``message`` is the response or error for ``request_id``.

    Tolerates a backend that echoes the id back as a string.
    """
    if "method" in message:
        return False
    message_id = message.get("id")
    if message_id == request_id and not isinstance(message_id, bool):
        return True
    return isinstance(message_id, str) and message_id == str(request_id)


def error_reply(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def transport_error(backend: str, exc: httpx2.HTTPError) -> BackendError:
    """Map an ``httpx2`` failure to the vmcp error that names its cause."""
    if isinstance(exc, httpx2.SSEError):
        return BackendProtocolError(backend, f"bad event stream: {exc}")
    if isinstance(exc, httpx2.ConnectTimeout):
        return BackendUnavailable(backend, f"connect timed out: {exc}")
    if isinstance(exc, httpx2.TimeoutException):
        return BackendTimeout(backend, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, httpx2.TransportError):
        return BackendUnavailable(backend, f"{type(exc).__name__}: {exc}")
    return BackendProtocolError(backend, f"{type(exc).__name__}: {exc}")


async def read_body(backend: str, response: httpx2.Response) -> bytes:
    """Read a whole response body, refusing more than :data:`MAX_MESSAGE_BYTES`."""
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_MESSAGE_BYTES:
        raise BackendProtocolError(backend, f"response body of {length} bytes is too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_MESSAGE_BYTES:
            raise BackendProtocolError(backend, "response body is too large")
        chunks.append(chunk)
    return b"".join(chunks)


def status_error(backend: str, response: httpx2.Response, body: bytes) -> BackendError:
    """The error for an HTTP status that carries no usable JSON-RPC answer.

    5xx and 429 mean the backend (or a proxy in front of it) cannot serve now. Any
    other status means it does not accept what we send.
    """
    status = response.status_code
    detail = ""
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        detail = str(parsed["error"].get("message", ""))[:200]
    elif body:
        detail = body[:200].decode(errors="replace")
    text = f"HTTP {status}" + (f": {detail}" if detail else "")
    if 300 <= status < 400:
        location = response.headers.get("location", "")
        return BackendProtocolError(backend, f"HTTP {status} redirect to {location!r} not followed")
    if status >= 500 or status == 429:
        return BackendUnavailable(backend, text)
    return BackendProtocolError(backend, text)


def rpc_error_for(backend: str, body: bytes, request_id: int) -> BackendRpcError | None:
    """The JSON-RPC error in an HTTP error body, if it answers ``request_id``.

    A backend may answer a request with its JSON-RPC error at a 4xx status. That error
    is the backend's real answer and must be relayed. An error with ``id: null`` is
    the transport refusing the HTTP request, and is not.
    """
    if not body:
        return None
    try:
        messages = decode(backend, body)
    except BackendProtocolError:
        return None
    for message in messages:
        if is_response_to(message, request_id) and "error" in message:
            try:
                result_of(backend, message)
            except BackendRpcError as exc:
                return exc
            except BackendProtocolError:
                return None
    return None


def result_of(backend: str, message: dict[str, Any]) -> dict[str, Any]:
    """The ``result`` of a response, or the backend's JSON-RPC error raised as such."""
    if "error" in message:
        error = message["error"]
        if not isinstance(error, dict) or not isinstance(error.get("code"), int):
            raise BackendProtocolError(backend, "malformed JSON-RPC error from backend")
        raise BackendRpcError(
            backend, error["code"], str(error.get("message", "")), error.get("data")
        )
    result = message.get("result")
    if not isinstance(result, dict):
        raise BackendProtocolError(backend, "JSON-RPC response without a result object")
    return result


class BaseBackend:
    """The part of a backend connection that does not depend on the transport.

    A transport subclass implements ``listen`` and the four ``_``-prefixed coroutines
    below the divider. This class turns them into the :class:`BackendConnection`
    contract: ids, deadlines, cancellation notices, the singleflight
    re-initialization, draining on close and the counters.
    """

    def __init__(
        self,
        target: BackendTarget,
        http: httpx2.AsyncClient,
        *,
        client_info: Mapping[str, Any],
        capabilities: Mapping[str, Any],
        timeout: float,
        on_reinitialized: ReinitializedHook | None,
        state: BackendState,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.target = target
        self._http = http
        self._client_info = dict(client_info)
        self._capabilities = dict(capabilities)
        self._timeout = timeout
        self._on_reinitialized = on_reinitialized
        self._state = state
        self._generation = 0
        self._ids = itertools.count(secrets.randbelow(_ID_SPACE))
        self._flight: _Flight | None = None
        self._closed = False
        self._close_done: anyio.Event | None = None
        self._inflight: set[anyio.CancelScope] = set()
        self._drained: anyio.Event | None = None
        self._interruptible_scopes: set[anyio.CancelScope] = set()
        self._latest_headers: Mapping[str, str] = NO_HEADERS
        self._requests = 0
        self._errors = 0
        self._rpc_errors = 0
        self._reinitializations = 0
        self._setup()

    def _setup(self) -> None:
        """Transport-specific set-up, run at the end of construction; none by default."""

    @classmethod
    async def connect(
        cls,
        target: BackendTarget,
        http: httpx2.AsyncClient,
        *,
        client_info: Mapping[str, Any],
        capabilities: Mapping[str, Any],
        protocol_version: str = DEFAULT_PROTOCOL_VERSION,
        timeout: float,  # noqa: ASYNC109 - bounds the handshake, then every call
        on_reinitialized: ReinitializedHook | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Self:
        """Open a new backend session with the transport's handshake (``initialize``
        then ``notifications/initialized``; for legacy SSE, the stream and its endpoint
        first), all within ``timeout``.

        The ``InitializeResult`` is validated, and the negotiated version must be one
        this client speaks. A missing ``Mcp-Session-Id`` means a stateless backend.
        ``headers`` are the credentials of the request that opens the session.
        """
        connection = cls(
            target,
            http,
            client_info=client_info,
            capabilities=capabilities,
            timeout=timeout,
            on_reinitialized=on_reinitialized,
            state=BackendState(None, protocol_version, {}),
        )
        extra = connection._call_headers(headers)
        try:
            with anyio.fail_after(timeout):
                state = await connection._handshake(protocol_version, extra)
        except TimeoutError:
            raise BackendTimeout(
                target.name, f"initialize not answered within {timeout:g}s"
            ) from None
        connection._install(state)
        return connection

    @property
    def state(self) -> BackendState:
        return self._state

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> BackendStatistics:
        return BackendStatistics(
            requests=self._requests,
            errors=self._errors,
            rpc_errors=self._rpc_errors,
            reinitializations=self._reinitializations,
        )

    async def request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        on_message: MessageHandler | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the per-call deadline is the contract
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        if self._closed:
            raise self._closed_error()
        extra = self._call_headers(headers)
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        body = encode(message)

        async def attempt() -> dict[str, Any]:
            return await self._call(request_id, body, params, on_message, extra)

        self._requests += 1
        try:
            return await self._guarded(
                lambda: self._with_recovery(attempt, extra),
                self._timeout if timeout is None else timeout,
                cancel_id=request_id,
                headers=extra,
            )
        except BackendRpcError:
            self._rpc_errors += 1
            raise
        except BackendError:
            self._errors += 1
            raise

    async def notify(self, method: str, params: dict[str, Any] | None, *,
                     headers: Mapping[str, str] | None = None) -> None:
        extra = self._call_headers(headers)
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        body = encode(message)

        async def attempt() -> None:
            await self._send(body, extra)

        await self._guarded(lambda: self._with_recovery(attempt, extra), self._timeout)

    async def respond(self, message: dict[str, Any], *,
                      headers: Mapping[str, str] | None = None) -> None:
        extra = self._call_headers(headers)
        body = encode({**message, "jsonrpc": "2.0"})

        async def attempt() -> None:
            try:
                await self._send(body, extra)
            except _SessionGone:
                # The request being answered belonged to the forgotten session.
                raise BackendSessionExpired(
                    self.target.name, "backend forgot the session"
                ) from None

        await self._guarded(attempt, self._timeout)

    async def aclose(self, *, timeout: float | None = None,  # noqa: ASYNC109
                     end_session: bool = True) -> None:
        if self._closed:
            if self._close_done is not None:
                await self._close_done.wait()
            return
        self._closed = True
        self._close_done = anyio.Event()
        try:
            for scope in list(self._interruptible_scopes):
                scope.cancel()
            if self._inflight:
                self._drained = anyio.Event()
                with anyio.move_on_after(self._timeout if timeout is None else timeout):
                    await self._drained.wait()
                for scope in list(self._inflight):
                    scope.cancel()
        finally:
            with anyio.move_on_after(TERMINATE_TIMEOUT if end_session else 0, shield=True):
                try:
                    if end_session:
                        await self._terminate()
                except Exception:
                    logger.warning(
                        "backend %r: ending the session failed", self.target.name, exc_info=True
                    )
            self._close_done.set()

    # -- the shared mechanics ------------------------------------------------

    def _closed_error(self) -> SessionClosed:
        return SessionClosed(f"backend {self.target.name!r}: connection closed")

    def _call_headers(self, headers: Mapping[str, str] | None) -> Mapping[str, str]:
        """One call's own headers; the latest are kept for ending the session on close."""
        if not headers:
            return NO_HEADERS
        extra = MappingProxyType(dict(headers))
        self._latest_headers = extra
        return extra

    def _install(self, state: BackendState) -> None:
        """Make ``state`` current. Every call issued from now on uses it."""
        self._state = state
        self._generation += 1

    async def _guarded(
        self,
        operation: Callable[[], Awaitable[T]],
        seconds: float,
        *,
        cancel_id: int | None = None,
        headers: Mapping[str, str] = NO_HEADERS,
    ) -> T:
        """Run one call under the connection's rules.

        The call is refused after close, bounded by ``seconds`` and cancellable by
        :meth:`aclose`. If the request ``cancel_id`` is abandoned (the caller was
        cancelled or the deadline passed), the backend is told with
        ``notifications/cancelled``.
        """
        if self._closed:
            raise self._closed_error()
        scope = anyio.CancelScope()
        self._inflight.add(scope)
        try:
            with scope, anyio.fail_after(seconds):
                return await operation()
        except TimeoutError:
            if cancel_id is not None:
                await self._cancel_upstream(cancel_id, "timed out", headers)
            raise BackendTimeout(self.target.name, f"no answer within {seconds:g}s") from None
        except anyio.get_cancelled_exc_class():
            if cancel_id is not None and not scope.cancel_called:
                await self._cancel_upstream(cancel_id, "cancelled", headers)
            raise
        finally:
            self._inflight.discard(scope)
            if self._drained is not None and not self._inflight:
                self._drained.set()
        # Only reached when aclose cancelled the scope.
        raise self._closed_error()

    async def _cancel_upstream(self, request_id: int, reason: str,
                               headers: Mapping[str, str] = NO_HEADERS) -> None:
        """Tell the backend we gave up on ``request_id``; best effort, shielded, bounded."""
        body = encode(
            {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": request_id, "reason": reason},
            }
        )
        with anyio.move_on_after(CANCEL_NOTICE_TIMEOUT, shield=True):
            try:
                await self._send(body, headers)
            except (BackendError, _SessionGone) as exc:
                logger.debug(
                    "backend %r: cancellation notice not delivered: %s", self.target.name, exc
                )

    async def _with_recovery(self, attempt: Callable[[], Awaitable[T]],
                             headers: Mapping[str, str] = NO_HEADERS) -> T:
        """Run ``attempt``; if the backend forgot the session, re-initialize (with the
        call's ``headers``) and retry once."""
        generation = self._generation
        try:
            return await attempt()
        except _SessionGone:
            pass
        await self._recover(generation, headers)
        try:
            return await attempt()
        except _SessionGone:
            raise BackendSessionExpired(
                self.target.name, "backend forgot the session again right after re-initialization"
            ) from None

    async def _recover(self, generation: int, headers: Mapping[str, str] = NO_HEADERS) -> None:
        """Make sure the session seen at ``generation`` has been replaced.

        Singleflight: the first caller runs ``initialize`` and the others wait for it. A
        caller that arrives after the replacement returns at once and just retries.
        If the leader fails with a backend error, every waiter gets that error instead
        of trying again itself. If the leader was cancelled, the next waiter takes over.
        """
        while self._generation == generation:
            flight = self._flight
            if flight is None:
                await self._lead_recovery(headers)
                return
            await flight.done.wait()
            if flight.error is not None and self._generation == generation:
                raise flight.error

    async def _lead_recovery(self, headers: Mapping[str, str]) -> None:
        flight = _Flight(anyio.Event())
        self._flight = flight
        try:
            state = await self._handshake(self._state.protocol_version, headers)
            self._install(state)
            self._reinitializations += 1
        except BackendError as exc:
            flight.error = exc
            raise
        finally:
            self._flight = None
            flight.done.set()
        logger.info("backend %r: session re-initialized", self.target.name)
        if self._on_reinitialized is not None:
            try:
                await self._on_reinitialized(state)
            except Exception:
                # The live connection works either way. Another replica holding the old
                # state will meet the same 404 and recover by itself.
                logger.exception("backend %r: on_reinitialized hook failed", self.target.name)

    async def _recover_quietly(self, generation: int,
                               headers: Mapping[str, str] = NO_HEADERS) -> bool:
        """:meth:`_recover` for a ``listen`` stream, which retries later instead of failing."""
        try:
            await self._recover(generation, headers)
        except BackendError as exc:
            logger.debug(
                "backend %r: re-initialization for listen failed: %s", self.target.name, exc
            )
            return False
        return True

    async def _answer(
        self, message: dict[str, Any], on_message: MessageHandler | None
    ) -> dict[str, Any]:
        """The response to send back for a server-to-client request."""
        request_id = message.get("id")
        if message.get("method") == "ping":
            return {"jsonrpc": "2.0", "id": request_id, "result": {}}
        if on_message is None:
            return error_reply(request_id, METHOD_NOT_FOUND_CODE, "Method not found")
        try:
            reply = await on_message(message)
        except Exception:
            logger.warning(
                "backend %r: handler for %r failed",
                self.target.name,
                message.get("method"),
                exc_info=True,
            )
            return error_reply(request_id, INTERNAL_ERROR_CODE, "Internal error")
        if reply is None:
            return error_reply(request_id, METHOD_NOT_FOUND_CODE, "Method not found")
        if "result" not in reply and "error" not in reply:
            logger.warning(
                "backend %r: handler returned a reply without result or error", self.target.name
            )
            return error_reply(request_id, INTERNAL_ERROR_CODE, "Internal error")
        return {**reply, "jsonrpc": "2.0", "id": request_id}

    async def _deliver(self, message: dict[str, Any], on_message: MessageHandler | None) -> None:
        """Hand a notification that arrived during a request to its handler."""
        if on_message is None:
            return
        try:
            await on_message(message)
        except Exception:
            logger.warning(
                "backend %r: handler for %r failed",
                self.target.name,
                message.get("method"),
                exc_info=True,
            )

    @contextmanager
    def _interruptible(self) -> Iterator[anyio.CancelScope]:
        """A scope that :meth:`aclose` cancels; wraps each wait of a ``listen`` iterator.

        ``listen`` is an async generator and must never yield inside a cancel scope.
        So each wait gets its own short-lived scope, and a cancelled one means "closed,
        stop".
        """
        scope = anyio.CancelScope()
        if self._closed:
            scope.cancel()
        self._interruptible_scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._interruptible_scopes.discard(scope)

    # -- implemented by each transport ---------------------------------------

    async def _call(
        self,
        request_id: int,
        body: bytes,
        params: dict[str, Any] | None,
        on_message: MessageHandler | None,
        headers: Mapping[str, str],
    ) -> dict[str, Any]:
        """Send the encoded request once (with the call's ``headers``) and return its result.

        Raises _SessionGone if the backend refused it for an unknown session.
        """
        raise NotImplementedError

    async def _send(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Send an encoded notification or response; _SessionGone as for _call."""
        raise NotImplementedError

    async def _handshake(self, protocol_version: str, headers: Mapping[str, str]) -> BackendState:
        """Open a fresh backend session (``initialize`` + ``initialized``) with ``headers``."""
        raise NotImplementedError

    async def _terminate(self) -> None:
        """End the backend session (with the latest call's headers); called once,
        shielded and bounded, by aclose."""
        raise NotImplementedError
