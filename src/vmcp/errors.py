"""Every error vmcp raises on purpose, and how each one reaches an MCP client.

The tree::

    VmcpError                      root; never raised itself
    ├── SessionError               the client's session id cannot be served
    │   ├── SessionNotFound        unknown, expired or ended id            → 404, -32001
    │   ├── SessionTerminated      a placeholder ended before it was full  → 404, -32001
    │   └── SessionNotYours        caller is not the session's identity    → 404, -32001
    ├── InvalidSessionId           malformed id (before any store call)    → 400 (or 404)
    ├── AuthenticationError        missing, invalid or refused credentials → 401, -32600
    │   ├── MalformedCredentials   not exactly one well-formed Bearer token → 400
    │   └── AuthenticationUnavailable  the issuer's keys cannot be fetched  → 503
    ├── InvalidMetadata            metadata that is not a dict of str→str  → 500-free: a bug
    ├── StoreError                 the metadata store could not answer     → 503, -32603
    │   ├── StoreUnavailable       connection refused / reset, bad reply
    │   └── StoreTimeout           the call's own deadline passed
    ├── BackendError               a backend MCP server failed a call      → 200 + JSON-RPC error
    │   ├── BackendUnavailable     cannot connect
    │   ├── BackendBusy            every connection of its budget in use (bulkhead)
    │   ├── BackendTimeout         no answer within the per-backend timeout
    │   ├── BackendProtocolError   an answer that is not MCP
    │   ├── BackendSessionExpired  the backend forgot our session (its 404)
    │   └── OutgoingAuthError      no credentials for the backend (token exchange failed)
    ├── TooManySessions            the identity holds its maximum of live sessions → 429
    ├── ReplicaBusy                this replica has its maximum of initializes under way → 503
    ├── SlowReader                 the client read a response stream too slowly → -32000 on it
    ├── NotPermitted               not permitted, or no such name (authorization on) → 403, -32602
    ├── SessionClosed              we closed the live session ourselves (not a failure)
    ├── RequestError               a request the gateway answers with a JSON-RPC error
    │   │                          (unknown tool, bad cursor...) → its own code
    │   ├── MessageError           a message that is not valid JSON-RPC MCP → 400 (mostly)
    │   └── InvalidRound           an unusable ``requestState`` / ``inputResponses`` → -32602
    ├── InvalidIdentity            credentials whose issuer/subject form no binding → 401
    ├── DecorationError            a session decorator broke its contract (a bug)
    └── ConfigError                bad configuration; reported at start-up

A session that was ended and one that never existed answer the same way on purpose: the
404 must not tell a stranger holding a leaked id that the id is real (see
``SessionNotYours``). "We closed it" (``SessionClosed``) is kept apart from "it broke"
(``BackendError``) because only the second is worth an alert.
"""

from __future__ import annotations

from typing import ClassVar

# JSON-RPC error codes used by vmcp. -32001 is what MCP clients recognise as
# "session not found" and answer by re-initializing.
SESSION_NOT_FOUND_CODE = -32001
INTERNAL_ERROR_CODE = -32603
INVALID_REQUEST_CODE = -32600
INVALID_PARAMS_CODE = -32602
METHOD_NOT_FOUND_CODE = -32601
PARSE_ERROR_CODE = -32700
SLOW_READER_CODE = -32000  # the implementation-defined server error range


class VmcpError(Exception):
    """Root of vmcp's own errors.

    Each subclass names the HTTP status and JSON-RPC code the transport answers with,
    so that the mapping lives beside the error and not in a table elsewhere.
    """

    http_status: ClassVar[int] = 500
    jsonrpc_code: ClassVar[int] = INTERNAL_ERROR_CODE
    public_message: ClassVar[str] = "Internal error"


class SessionError(VmcpError):
    """The session id in the request cannot be served; the client should re-initialize."""

    http_status = 404
    jsonrpc_code = SESSION_NOT_FOUND_CODE
    public_message = "Session not found"


class SessionNotFound(SessionError):
    """No live record for this id: never created, expired, or deleted."""


class SessionTerminated(SessionError):
    """The id names a placeholder that was ended before it became a full session."""


class SessionNotYours(SessionError):
    """The caller is not the identity bound to the session.

    Answered exactly like ``SessionNotFound`` so the status is no oracle; only logs and
    the security-event counter tell them apart.
    """


class InvalidSessionId(VmcpError):
    """A session id outside the allowed alphabet or length; refused before any store call."""

    http_status = 400
    jsonrpc_code = INVALID_REQUEST_CODE
    public_message = "Invalid session id"


class AuthenticationError(VmcpError):
    """The request's credentials are missing, invalid or refused.

    ``www_authenticate`` is the RFC 6750 challenge the response carries, built by whoever
    refused the credentials since only it knows the resource and the error code; ``str()``
    is the description, safe to show the caller (it never contains the token).
    """

    http_status = 401
    jsonrpc_code = INVALID_REQUEST_CODE
    public_message = "Unauthorized"

    def __init__(self, description: str, *, www_authenticate: str | None) -> None:
        super().__init__(description)
        self.www_authenticate = www_authenticate

    def response_headers(self) -> list[tuple[str, str]]:
        """The headers the refusal is answered with, besides the JSON-RPC error body."""
        return [("www-authenticate", self.www_authenticate)] if self.www_authenticate else []


class MalformedCredentials(AuthenticationError):
    """An ``Authorization`` header that is not exactly one well-formed Bearer token.

    RFC 6750 answers ``invalid_request`` with 400: the client is broken, and a 401 would
    only send it into an authorization flow that cannot fix the request.
    """

    http_status = 400


class AuthenticationUnavailable(AuthenticationError):
    """The token could not be checked because the issuer's keys could not be fetched.

    503, not 401: the token may be perfectly good, and telling the client to get a new
    one would not help while the identity provider is unreachable. Retry later.
    """

    http_status = 503
    public_message = "Authentication temporarily unavailable, retry"

    def response_headers(self) -> list[tuple[str, str]]:
        return [*super().response_headers(), ("retry-after", "5")]


class InvalidMetadata(VmcpError, ValueError):
    """Session metadata that is not a flat dict of strings."""


class StoreError(VmcpError):
    """The session store did not answer; the session may well be alive. Retry later."""

    http_status = 503
    jsonrpc_code = INTERNAL_ERROR_CODE
    public_message = "Session store unavailable, retry"


class StoreUnavailable(StoreError):
    """Connection refused or reset, or a reply the store contract does not allow."""


class StoreTimeout(StoreError):
    """The store call's own deadline passed."""


class BackendError(VmcpError):
    """A backend MCP server failed; reported to the client as a JSON-RPC error naming it."""

    jsonrpc_code = INTERNAL_ERROR_CODE
    public_message = "Backend error"

    def __init__(self, backend: str, message: str) -> None:
        super().__init__(f"backend {backend!r}: {message}")
        self.backend = backend


class BackendUnavailable(BackendError):
    """The backend could not be reached."""


class BackendBusy(BackendError):
    """Every connection this replica may open to the backend for this kind of request was in
    use for longer than the acquire timeout: the backend is saturated or hangs."""


class BackendTimeout(BackendError):
    """The backend did not answer within its timeout."""


class BackendProtocolError(BackendError):
    """The backend answered something that is not a valid MCP message."""


class BackendSessionExpired(BackendError):
    """The backend answered 404 for our backend session id: it forgot the session."""


class OutgoingAuthError(BackendError):
    """The gateway could not obtain credentials for the backend (a token exchange failed).

    The message says why (the token endpoint's status and OAuth ``error`` code) and never
    contains a token.
    """


class TooManySessions(VmcpError):
    """An ``initialize`` by an identity that already holds its maximum of live sessions.

    Refused rather than making room by ending the identity's oldest session: ending a
    session someone may be using breaks their work without warning, while a refusal
    tells the client exactly what to do (end a session it no longer needs, or wait for
    one to expire) and breaks nothing.
    """

    http_status = 429
    jsonrpc_code = INVALID_REQUEST_CODE
    public_message = "Too many sessions"


class ReplicaBusy(VmcpError):
    """An ``initialize`` while this replica already opens its maximum of sessions at once.

    Refused at once (503 with ``Retry-After``) rather than queued: each initialize holds
    backend connections while it waits, so a queue would only move the pile-up, and the
    balancer can send the retry to a replica with room.
    """

    http_status = 503
    jsonrpc_code = INTERNAL_ERROR_CODE
    public_message = "Too many sessions being opened on this replica; retry shortly"


class SlowReader(VmcpError):
    """A request's response stream stayed past its buffer bound for too long: the client
    reads more slowly than the backend writes. The request is ended with this error as
    its final answer (the one message a stream may still take beyond its bound), and the
    backend's call is cancelled, so a slow client costs a bounded buffer, never more."""

    http_status = 200
    jsonrpc_code = SLOW_READER_CODE
    public_message = ("Response stream ended: the client read it more slowly than the "
                      "backend wrote it, past the gateway's buffer bound")


class NotPermitted(VmcpError):
    """A call, prompt or read the caller may not make, or of a name that does not exist.

    With authorization configured, a denied name, a name the caller's listings leave out
    and a name that does not exist at all get this one answer, identical byte for byte
    apart from the request id: 403 and ``{"code": -32602, "message": "Not found or not
    permitted"}``, naming nothing. Anything else would tell a caller which hidden names
    are real. Raised before any backend is touched.
    """

    http_status = 403
    jsonrpc_code = INVALID_PARAMS_CODE
    public_message = "Not found or not permitted"


class SessionClosed(VmcpError):
    """A call reached a live session after vmcp closed it (eviction, terminate, shutdown)."""

    http_status = 404
    jsonrpc_code = SESSION_NOT_FOUND_CODE
    public_message = "Session not found"


class ConfigError(VmcpError):
    """The configuration is invalid; the message lists every problem with its location."""


class RequestError(VmcpError):
    """A request answered with a JSON-RPC error of its own code (an unknown tool, a bad
    cursor, an unknown method); the HTTP status is the protocol revision's to choose."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class MessageError(RequestError):
    """A client message that cannot be served; carries the JSON-RPC error to answer with,
    the id it answers (when one could be read) and the HTTP status."""

    def __init__(self, code: int, message: str, request_id: str | int | None = None,
                 http_status: int = 400) -> None:
        super().__init__(code, message)
        self.request_id = request_id
        self.status = http_status


class InvalidRound(RequestError):
    """The ``requestState`` or ``inputResponses`` of a retry cannot be used."""

    def __init__(self, message: str) -> None:
        super().__init__(INVALID_PARAMS_CODE, message)


class InvalidIdentity(VmcpError):
    """A caller presented credentials whose issuer/subject cannot form a binding."""

    http_status = 401
    public_message = "Unusable identity"


class DecorationError(VmcpError):
    """A session decorator returned nothing, or a session with another id."""
