"""The contract of a connection to one backend MCP server for one vmcp session.

This is the small seam the layers above use: what a backend is (:class:`BackendTarget`),
what is stored to resume its session anywhere (:class:`BackendState`), the connection
itself (:class:`BackendConnection`) and the hooks it calls. The two transports that
implement it share :mod:`vmcp.backend.base`; the bytes on the wire are
:mod:`vmcp.backend.wire`.

vmcp talks to its backends through a thin client of its own over ``httpx2`` rather than
the SDK's ``ClientSession``, for four reasons:

1. A vmcp session can be served by any replica. A replica that has never seen the
   session must be able to resume using the backend session from the stored
   ``Mcp-Session-Id`` and protocol version alone, with no wire traffic
   (:func:`vmcp.backend.attach`). ``ClientSession`` always runs ``initialize``.
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
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol

from vmcp.errors import BackendError, BackendProtocolError

DEFAULT_PROTOCOL_VERSION: Final = "2025-11-25"
"""The version offered in ``initialize`` unless the caller asks for another."""

STREAM_PAUSED: Final = "vmcp/streamPaused"
"""A pseudo-notification given to ``on_message`` when a backend ends a response stream
before the response (MCP SSE polling); ``params.retryMs`` says when the call resumes.
It never comes from the wire (``/`` -namespaced methods there are MCP's own)."""



@dataclass(frozen=True, slots=True)
class StdioCommand:
    """How to start a stdio backend: the program, its arguments, the environment variables
    it is given (on top of the SDK's minimal default set) and its working directory.

    ``missing_env`` names the gateway's environment variables the configuration said to
    pass but that are unset: such a command is not started (its health says why).
    """

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    missing_env: tuple[str, ...] = ()
    initialize_seconds: float = 30.0
    """Bound on the process's ``initialize`` (the backend's connect timeout)."""

    def argv(self) -> list[str]:
        return [self.command, *self.args]


@dataclass(frozen=True, slots=True)
class BackendTarget:
    """What the configuration says about one backend.

    ``headers`` are sent on every HTTP request to the backend (for example a static
    ``Authorization``). The MCP headers the client sets itself take precedence over
    them. A ``stdio`` target has no ``url`` but its ``stdio`` command.
    """

    name: str
    url: str
    transport: Literal["streamable-http", "sse", "stdio"] = "streamable-http"
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    stdio: StdioCommand | None = None

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

ReinitializedHook = Callable[[BackendState, BackendState], Awaitable[bool]]
"""Called once after each successful re-initialization, with the state it replaced and the
new state to store; returns whether it was recorded (False: the session ended or changed
meanwhile, or another replica recorded its own re-initialization first)."""


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
