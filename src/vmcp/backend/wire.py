"""JSON-RPC over HTTP, as vmcp's backend clients read and write it.

Helpers shared by every backend client (both session transports and the stateless
revision's client): request ids, encoding and decoding messages (an ``InitializeResult``
included), POSTing and reading bounded bodies and event streams, mapping HTTP failures
and refusals to the :mod:`vmcp.errors` tree, and answering what a backend sends through
a :data:`~vmcp.backend.MessageHandler`. Nothing here holds state.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import secrets
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
)
from contextlib import asynccontextmanager
from typing import Any, Final, cast

import httpx2
from mcp_types import InitializeResult
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError

from vmcp import __version__
from vmcp.backend.contract import BackendRpcError, MessageHandler
from vmcp.errors import (
    INTERNAL_ERROR_CODE,
    METHOD_NOT_FOUND_CODE,
    BackendBusy,
    BackendError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
)

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES: Final = 32 * 1024 * 1024
"""Largest JSON-RPC message accepted from a backend (one JSON body or one SSE event).

Large enough for big tool results (for example base64 images). Without a limit, a
broken backend could make a replica buffer without bound.
"""

JSON: Final = "application/json"
EVENT_STREAM: Final = "text/event-stream"

_ID_SPACE: Final = 2**52
"""Request ids start at a random point below this bound and count up from there.

Two replicas can hold the same backend session at once, and a session must never
reuse a request id. Random starting points keep the two counters apart. The ids stay
integers below 2**53, which every JSON implementation represents exactly.
"""


def request_ids() -> Iterator[int]:
    """The ids of one client's requests, counting up from a random start."""
    return itertools.count(secrets.randbelow(_ID_SPACE))


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
    if isinstance(exc, httpx2.PoolTimeout):
        return BackendBusy(backend, f"busy: {exc}")
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


def negotiated_version(backend: str, result: dict[str, Any]) -> str:
    """Validate an ``InitializeResult``; the protocol version it names, if this client
    speaks it."""
    try:
        version = InitializeResult.model_validate(result, by_name=False).protocol_version
    except ValidationError as exc:
        raise BackendProtocolError(
            backend, f"invalid InitializeResult: {exc.error_count()} problem(s)"
        ) from None
    if version not in HANDSHAKE_PROTOCOL_VERSIONS:
        raise BackendProtocolError(
            backend, f"backend chose unsupported protocol version {version!r}"
        )
    return version


def content_type(response: httpx2.Response) -> str:
    """The response's media type, lower-cased (empty if it names none)."""
    return response.headers.get("content-type", "").lower()


USER_AGENT: Final = f"vmcp/{__version__}"
"""How vmcp names itself to backends."""

REPLAYABLE: Final = "vmcp.replayable"
"""Request extension: the request may be sent again on a fresh connection when a reused
one was closed before any byte of the answer came (``vmcp.backend.http11``)."""

_SAFE_TO_REPEAT: Final = frozenset({
    "ping", "tools/list", "prompts/list", "prompts/get", "resources/list",
    "resources/templates/list", "resources/read", "resources/subscribe",
    "resources/unsubscribe", "completion/complete", "logging/setLevel",
})
"""Methods the specification defines as reads or as idempotent settings: running one twice
changes nothing. ``tools/call`` is absent (a tool may act), and so is ``initialize``: a
first one the backend ran, answered on a connection reset on the way (a proxy between),
would leave a backend session nobody knows the id of, never ended."""


def replayable(method: str) -> bool:
    """Whether a request for ``method`` may be sent twice."""
    return method in _SAFE_TO_REPEAT


@asynccontextmanager
async def posted(backend: str, http: httpx2.AsyncClient, url: str, body: bytes,
                 headers: Mapping[str, str], http_timeout: httpx2.Timeout,
                 *, replay: bool = False) -> AsyncIterator[httpx2.Response]:
    """POST ``body``; the streamed response, closed on exit. ``replay``: the request may
    be sent again if the connection it went out on turns out to have been closed.

    An ``httpx2`` failure, while sending or while the block reads the response, is
    raised as the vmcp error that names its cause (:func:`transport_error`).
    """
    extensions: dict[str, Any] = {"timeout": http_timeout.as_dict()}
    if replay:
        extensions[REPLAYABLE] = True
    try:
        # Straight to the client's transport, the calls' hot path: the client's layers
        # (defaults merged into each request, auth and redirect handling, cookies, the
        # elapsed timer, response wrapping) cost about a seventh of a relayed call's CPU
        # (bench), and the backend client uses none of them: no auth, no redirects
        # followed, no cookies kept (``vmcp.backend.http_client``).
        request = httpx2.Request("POST", parsed_url(url), content=body,
                                 headers={**headers, "user-agent": USER_AGENT},
                                 extensions=extensions)
        response = await http._transport.handle_async_request(request)
        response.request = request
        try:
            yield response
        finally:
            await response.aclose()
    except httpx2.HTTPError as exc:
        raise transport_error(backend, exc) from exc


@functools.lru_cache(maxsize=1024)
def parsed_url(url: str) -> httpx2.URL:
    """A backend's URL, parsed once: httpx2 parses a string URL again on every request
    (with regular expressions), a measurable share of a relayed call's CPU."""
    return httpx2.URL(url)


async def response_in(
    backend: str, response: httpx2.Response, request_id: int,
    read_stream: Callable[[httpx2.Response], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """The response to ``request_id`` in a POST's successful answer: the one in an
    ``application/json`` body, or what ``read_stream`` finds in a ``text/event-stream``."""
    kind = content_type(response)
    if kind.startswith(JSON):
        for message in decode(backend, await read_body(backend, response)):
            if is_response_to(message, request_id):
                return message
        raise BackendProtocolError(backend, "JSON answer does not contain the response")
    if kind.startswith(EVENT_STREAM):
        return await read_stream(response)
    raise BackendProtocolError(backend, f"unexpected content type {kind!r}")


async def refusal(backend: str, response: httpx2.Response, request_id: int | None
                  ) -> tuple[bytes, BackendRpcError | None]:
    """The body of a POST that was not answered with a response, and the backend's
    JSON-RPC error to ``request_id`` in it, if any (see :func:`rpc_error_for`).

    A ``202 Accepted`` for a request is a protocol error, raised at once.
    """
    if response.status_code == 202:
        raise BackendProtocolError(backend, "backend answered a request with 202 Accepted")
    body = await read_body(backend, response)
    if request_id is None:
        return body, None
    return body, rpc_error_for(backend, body, request_id)


def event_stream(response: httpx2.Response) -> AsyncGenerator[httpx2.ServerSentEvent, None]:
    """The events of a ``text/event-stream`` response, each at most
    :data:`MAX_MESSAGE_BYTES`; close the generator to release the response."""
    return cast(
        AsyncGenerator[httpx2.ServerSentEvent, None],
        httpx2.EventSource(response, max_event_size=MAX_MESSAGE_BYTES).__aiter__(),
    )


def messages_in(backend: str, event: httpx2.ServerSentEvent) -> list[dict[str, Any]]:
    """The JSON-RPC messages of one ``message`` event; none for other events.

    A stream that must go on after one bad event (a GET stream, the legacy transport's
    only stream) logs it and moves on.
    """
    if not event.data or event.event != "message":
        return []
    try:
        return decode(backend, event.data)
    except BackendProtocolError as exc:
        logger.warning("%s", exc)
        return []


async def answer(backend: str, message: dict[str, Any], on_message: MessageHandler | None
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
        _handler_failed(backend, message)
        return error_reply(request_id, INTERNAL_ERROR_CODE, "Internal error")
    if reply is None:
        return error_reply(request_id, METHOD_NOT_FOUND_CODE, "Method not found")
    if "result" not in reply and "error" not in reply:
        logger.warning("backend %r: handler returned a reply without result or error", backend)
        return error_reply(request_id, INTERNAL_ERROR_CODE, "Internal error")
    return {**reply, "jsonrpc": "2.0", "id": request_id}


async def deliver(backend: str, message: dict[str, Any], on_message: MessageHandler | None
                  ) -> None:
    """Hand a notification that arrived during a request to its handler."""
    if on_message is None:
        return
    try:
        await on_message(message)
    except Exception:
        _handler_failed(backend, message)


def _handler_failed(backend: str, message: dict[str, Any]) -> None:
    logger.warning("backend %r: handler for %r failed", backend, message.get("method"),
                   exc_info=True)
