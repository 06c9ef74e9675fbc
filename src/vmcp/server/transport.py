"""The MCP Streamable-HTTP endpoint: POST, GET and DELETE on one path.

Written as a raw ASGI app rather than on the SDK's ``StreamableHTTPSessionManager``:
that manager keeps sessions in one process's memory, while here every request's session
comes from the ``SessionManager`` (store-backed, restorable on any replica). Starlette
still provides the request parsing and the routing around this app.

Status codes (MCP 2025-11-25 transport): 400 bad message or missing session id, 404
unknown or ended session (body ``-32001``), 405 wrong verb, 406 unacceptable ``Accept``,
413 body too large, 415 not JSON, 503 session store unavailable (retry). Credentials are
checked before any session is looked up: 401 missing or refused (with ``WWW-Authenticate``),
400 malformed, 503 signing keys unavailable.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from vmcp import logs, tracing
from vmcp.audit import record as audit_record
from vmcp.audit.trail import AuditTrail
from vmcp.auth import outgoing
from vmcp.dispatch import ROUTED_METHODS, is_handle
from vmcp.errors import (
    INTERNAL_ERROR_CODE,
    INVALID_REQUEST_CODE,
    AuthenticationError,
    InvalidIdentity,
    MessageError,
    SessionClosed,
    SessionError,
    SessionNotFound,
    SessionNotYours,
    StoreError,
    VmcpError,
)
from vmcp.identity import Principal
from vmcp.server import auditing, jsonrpc
from vmcp.server.jsonrpc import Incoming
from vmcp.server.replies import Reply, error_reply, invalid, read_body
from vmcp.server.request_log import (
    VERB_LABELS,
    RequestRecord,
    current_record,
    log_request,
    method_label,
)
from vmcp.server.responses import (
    SSE_HEADERS,
    accepts,
    send_empty,
    send_encoded,
    send_json,
)
from vmcp.server.security import RequestGuard
from vmcp.server.session_methods import HANDSHAKE_VERSIONS, SessionMethods
from vmcp.server.session_streams import (
    first_event,
    is_logged,
    write_events,
    write_logged_events,
    write_server_messages,
)
from vmcp.server.session_workflows import WorkflowGone
from vmcp.server.stateless import StatelessEndpoint, is_stateless
from vmcp.server.stream_limits import StreamLimits, StreamRefused
from vmcp.session import SessionManager
from vmcp.session.multisession import MultiSession
from vmcp.session.streams import (
    DuplicateRequestId,
    Outbound,
    ResponseStream,
    parse_event_id,
)
from vmcp.telemetry import Metrics

logger = logging.getLogger(__name__)

SESSION_HEADER = "mcp-session-id"
METHOD_KEY = "vmcp.method"  # the JSON-RPC method, kept in the ASGI scope for metrics
VERSION_HEADER = "mcp-protocol-version"
JSON = "application/json"
EVENT_STREAM = "text/event-stream"
# How soon a client should reconnect to a stream the gateway ended early (SSE ``retry``).
RECONNECT_MS = 1000

Authenticate = Callable[[Headers], Awaitable[Principal]]


class McpEndpoint:
    """ASGI app for the MCP endpoint; one instance per process."""

    def __init__(
        self,
        manager: SessionManager,
        methods: SessionMethods,
        guard: RequestGuard,
        authenticate: Authenticate,
        *,
        max_body_bytes: int,
        metrics: Metrics | None = None,
        stateless: StatelessEndpoint | None = None,
        audit: AuditTrail | None = None,
        replica_id: str = "",
        streams: StreamLimits | None = None,
        abandon_grace: float = 5.0,
    ) -> None:
        self._abandon_grace = abandon_grace
        self._streams = streams or StreamLimits(per_session=4, per_replica=500)
        self._stateless = stateless
        self._audit = audit
        self._replica_id = replica_id
        self._manager = manager
        self._methods = methods
        self._guard = guard
        self._authenticate = authenticate
        self._max_body = max_body_bytes
        self._metrics = metrics
        self._draining = anyio.Event()

    def drain(self) -> None:
        """The replica is stopping: end the streams that only listen (GET streams, and
        resumes of calls another replica runs) now, so they do not hold the drain up; their
        clients reconnect, through the balancer, to a replica that stays. Streams that
        carry this replica's own answers stay until they end or their session closes."""
        self._draining.set()
        if self._stateless is not None:
            self._stateless.drain()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        refusal = self._guard.check(headers)
        if refusal is not None:
            status, reason = refusal
            await send_json(send, status, jsonrpc.error(None, INVALID_REQUEST_CODE, reason))
            return
        verb = scope["method"]
        logs.request_id.set(secrets.token_hex(6))
        record = RequestRecord()
        current_record.set(record)
        operation = audit_record.start()
        began = time.perf_counter()

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
            elif not message.get("more_body", False):
                record.complete = True
            await send(message)

        try:
            with outgoing.request_scope():
                await self._dispatch(verb, scope, receive, tracking_send, headers)
        except Reply as reply:
            error = reply.body.get("error")
            if isinstance(error, dict):
                operation.error_code = error.get("code")
            await send_json(tracking_send, reply.status, reply.body, extra=reply.headers)
        except Exception:
            # The last line of defence: a bug must still answer in JSON-RPC, not crash.
            logger.exception("unexpected error serving %s", verb)
            if not record.status:
                await send_json(tracking_send, 500, jsonrpc.error(None, INTERNAL_ERROR_CODE,
                                                                   "Internal error"))
            elif not record.complete:
                # A stream already under way ends as a stream, not as a cut connection.
                with contextlib.suppress(Exception):
                    await tracking_send({"type": "http.response.body", "body": b"",
                                         "more_body": False})
        finally:
            label = scope.get(METHOD_KEY) or VERB_LABELS.get(verb, "invalid")
            seconds = time.perf_counter() - began
            log_request(record, label, headers.get(SESSION_HEADER), seconds, self._metrics)
            if self._audit is not None:
                auditing.emit(self._audit, operation, label=label, scope=scope,
                              headers=headers, status=record.status, seconds=seconds,
                              replica_id=self._replica_id,
                              session_id=headers.get(SESSION_HEADER) or record.session_id)

    async def _dispatch(self, verb: str, scope: Scope, receive: Receive, send: Send,
                        headers: Headers) -> None:
        if self._stateless is not None and verb != "POST" and is_stateless(headers):
            # The stateless revision is POST only: there is no stream to GET or session to end.
            await send_json(send, 405, jsonrpc.error(
                None, INVALID_REQUEST_CODE, "Method not allowed"), extra=[(b"allow", b"POST")])
        elif verb == "POST":
            await self._post(scope, receive, send, headers)
        elif verb == "GET":
            await self._get(receive, send, headers)
        elif verb == "DELETE":
            await self._delete(send, headers)
        else:
            await send_json(send, 405, jsonrpc.error(
                None, INVALID_REQUEST_CODE, "Method not allowed"),
                extra=[(b"allow", b"GET, POST, DELETE")])

    # -- POST -----------------------------------------------------------------------

    async def _post(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        accept = headers.get("accept", "")
        if not (accepts(accept, JSON) and accepts(accept, EVENT_STREAM)):
            raise invalid(
                406, "Not Acceptable: Accept must include application/json and text/event-stream")
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type != JSON:
            raise invalid(415, "Unsupported Media Type: use application/json")
        body = await read_body(receive, headers, self._max_body)
        if self._stateless is not None and is_stateless(headers):
            # No session, no store: see vmcp.server.stateless.
            principal = await self._principal(headers, None)
            await self._stateless.serve(scope, receive, send, body, principal)
            return
        try:
            message = jsonrpc.parse_message(body)
        except MessageError as exc:
            raise Reply(exc.status, jsonrpc.error(exc.request_id, exc.code, exc.message)
                        ) from exc
        scope[METHOD_KEY] = method_label(message)
        attributes: dict[str, str] = {"mcp.method.name": scope[METHOD_KEY]}
        if message.method == "tools/call" and isinstance(message.params.get("name"), str):
            attributes["mcp.tool.name"] = message.params["name"][:128]
            current_record.get().tool = attributes["mcp.tool.name"]
        if session_id := headers.get(SESSION_HEADER):
            attributes["mcp.session.tag"] = tracing.session_tag(session_id)
        operation = audit_record.current()
        if operation is not None:
            operation.method = scope[METHOD_KEY]
            operation.protocol_version = headers.get(VERSION_HEADER)
            if message.method == "initialize":
                auditing.note_client(operation, message.params.get("clientInfo"))
                operation.protocol_version = str(message.params.get("protocolVersion"))[:32]
        with tracing.server_span(f"mcp {scope[METHOD_KEY]}", headers, attributes):
            if operation is not None:
                auditing.note_trace(operation)
            await self._serve_message(scope, receive, send, headers, message)

    async def _serve_message(self, scope: Scope, receive: Receive, send: Send,
                             headers: Headers, message: Incoming) -> None:
        self._check_version(headers, message)
        principal = await self._principal(headers, message.id)
        if message.kind == "request" and message.method == "initialize":
            await self._initialize(send, headers, message, principal)
            return
        session = await self._session(headers, principal, message.id)
        if message.kind == "response":
            if not session.deliver_client_response(message.raw):
                try:
                    if is_handle(message.raw.get("id")):
                        await self._methods.workflow_answer(session, message.raw, principal)
                    else:
                        await session.forward_client_response(message.raw)
                except (StoreError, SessionClosed) as exc:
                    raise error_reply(exc, None) from exc
                except WorkflowGone:
                    # Not 404: clients take that for an ended session and start over.
                    raise invalid(400, "No workflow waits for this answer: it expired, "
                                  "was answered already, or is not this session's") from None
            await send_empty(send, 202)
        elif message.kind == "notification":
            await self._methods.notification(session, message)
            await send_empty(send, 202)
        else:
            try:
                await self._request(receive, send, session, message, principal)
            except SessionClosed:
                # The copy looked up was closed before the call started: rebuilt from the
                # store (another replica changed its backends) or ended. Look once more;
                # an ended session answers 404 from the lookup itself.
                session = await self._session(headers, principal, message.id)
                try:
                    await self._request(receive, send, session, message, principal)
                except SessionClosed as exc:
                    raise error_reply(exc, message.id) from exc

    def _check_version(self, headers: Headers, message: Incoming) -> None:
        version = headers.get(VERSION_HEADER)
        if version is None or message.method == "initialize":
            return
        if version not in HANDSHAKE_VERSIONS:
            raise invalid(400, f"Unsupported MCP-Protocol-Version {version!r}; "
                          f"supported: {', '.join(HANDSHAKE_VERSIONS)}", message.id)

    async def _principal(self, headers: Headers, request_id: Any) -> Principal:
        """The request's caller; from here on, backend calls carry its credentials."""
        try:
            principal = await self._authenticate(headers)
            outgoing.act_for(principal, headers)
            operation = audit_record.current()
            if operation is not None:
                operation.principal = principal
            return principal
        except AuthenticationError as exc:
            # Before any session lookup, so the answer is the same for every session id.
            raise Reply(exc.http_status, jsonrpc.error(request_id, exc.jsonrpc_code, str(exc)),
                        [(k.encode(), v.encode()) for k, v in exc.response_headers()]) from exc
        except InvalidIdentity as exc:
            raise invalid(401, str(exc), request_id) from exc

    async def _initialize(self, send: Send, headers: Headers, message: Incoming,
                          principal: Principal) -> None:
        if headers.get(SESSION_HEADER):
            raise invalid(400, "initialize must not carry Mcp-Session-Id; the session is "
                          "already initialized", message.id)
        try:
            declared = message.params.get("capabilities")
            live = await self._manager.initialize(
                principal, [str(k) for k in declared] if isinstance(declared, dict) else [])
        except VmcpError as exc:
            raise error_reply(exc, message.id) from exc
        assert isinstance(live, MultiSession)
        payload = self._methods.initialize_result(live, message.params)
        current_record.get().session_id = live.session_id
        await send_json(send, 200, jsonrpc.result(message.id, payload),
                         extra=[(SESSION_HEADER.encode(), live.session_id.encode())])

    async def _session(self, headers: Headers, principal: Principal,
                       request_id: Any) -> MultiSession:
        session_id = headers.get(SESSION_HEADER)
        if not session_id:
            raise invalid(400, "Bad Request: Mcp-Session-Id header required", request_id)
        try:
            live = await self._manager.get(session_id, principal)
        except SessionNotYours as exc:
            # Alive, and someone else's: its live copy stays, or any holder of a leaked id
            # could keep closing the owner's backend sessions.
            raise error_reply(exc, request_id) from exc
        except SessionError as exc:
            # This replica's copy (if any) is stale: drop it now, not at LRU pressure.
            self._manager.evict_local(session_id)
            raise error_reply(exc, request_id) from exc
        except VmcpError as exc:
            raise error_reply(exc, request_id) from exc
        assert isinstance(live, MultiSession)
        return live

    async def _request(self, receive: Receive, send: Send, session: MultiSession,
                       message: Incoming, principal: Principal) -> None:
        """Answer with JSON, unless the backend sends something first: then stream SSE.

        Progress, logs and the backend's own requests (sampling, elicitation) can only
        reach the client on an SSE stream, but most calls have none of them; deciding at
        the first outbound event keeps the common case a plain JSON response. The work
        runs detached from this connection, so a client that drops the stream can resume
        it with ``Last-Event-ID`` and nothing is lost.
        """
        target = None
        if self._methods.authorizing and message.method in ROUTED_METHODS:
            # Before any work starts, so a refusal gets its own status (403).
            try:
                target = await self._methods.authorize(session, message, principal)
            except VmcpError as exc:
                raise error_reply(exc, message.id) from exc
        try:
            stream = session.streams.open(message.id)
        except DuplicateRequestId:
            raise invalid(400, "Invalid Request: this request id is already in use in the "
                          "session", message.id) from None
        channel = session.channel(stream, message.id)

        async def run() -> None:
            final = await self._methods.answer(session, message, channel, principal, target)
            stream.append(Outbound(final, final=True))

        work = run()
        try:
            session.work.spawn(work, stream.id)
        except SessionClosed:
            # Closed between lookup and use: the caller looks the session up again.
            work.close()
            session.streams.drop(stream.id)
            raise
        first = await first_event(receive, stream)
        abandon_after = self._abandon_after(session)
        if first is None:  # the client went away first; the work runs on, resumable
            if abandon_after is not None:
                session.work.abandon(stream, abandon_after)
            return
        if first.final:
            session.streams.drop(stream.id)
            if first.session_ended and first.message is not None:
                await send_json(send, SessionClosed.http_status, first.message)
            elif first.message is not None:
                await send_encoded(send, 200, first.data)
            else:  # cancelled by the client: no response, just the end of an empty stream
                await send({"type": "http.response.start", "status": 200,
                            "headers": SSE_HEADERS})
                await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        priming = f"id: {stream.event_id(0)}\nretry: {RECONNECT_MS}\ndata: \n\n".encode()
        await send({"type": "http.response.body", "body": priming, "more_body": True})
        await write_events(receive, send, session, stream, after=0,
                           abandon_after=abandon_after)

    def _abandon_after(self, session: MultiSession) -> float | None:
        """How long a call's work outlives a client that left its stream. Not bounded
        when the session has an event log: the client may resume on another replica,
        which this one would not hear of."""
        return self._abandon_grace if session.event_log is None else None

    # -- GET ------------------------------------------------------------------------

    async def _get(self, receive: Receive, send: Send, headers: Headers) -> None:
        if not accepts(headers.get("accept", ""), EVENT_STREAM):
            raise invalid(406, "Not Acceptable: Accept must include text/event-stream")
        principal = await self._principal(headers, None)
        session = await self._session(headers, principal, None)
        last_event_id = parse_event_id(headers.get("last-event-id") or "")
        local = session.streams.get(last_event_id[0]) if last_event_id else None
        # Events dropped here for the stream's bound may still be in the event log.
        replayable = (local is not None and last_event_id is not None
                      and local.can_replay(last_event_id[1]))
        logged = (last_event_id is not None and not replayable
                  and session.event_log is not None
                  and await is_logged(session, last_event_id[0]))
        if logged:
            local = None
        try:
            self._streams.acquire(session.session_id)
        except StreamRefused as refused:
            raise invalid(refused.status, refused.message, None,
                          [(b"retry-after", str(refused.retry_after).encode())]) from None
        try:
            await self._stream(receive, send, session, last_event_id, local, logged)
        finally:
            self._streams.release(session.session_id)

    async def _stream(self, receive: Receive, send: Send, session: MultiSession,
                      last_event_id: tuple[str, int] | None, local: ResponseStream | None,
                      logged: bool) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        if last_event_id is not None and local is not None:
            session.work.resume(local.id)
            await write_events(receive, send, session, local, after=last_event_id[1],
                               stale_pauses=len(local),
                               abandon_after=self._abandon_after(session))
            return
        if last_event_id is not None and logged:
            await write_logged_events(receive, send, session, last_event_id[0],
                                      after=last_event_id[1], draining=self._draining)
            return
        await write_server_messages(receive, send, session, draining=self._draining)

    # -- DELETE ---------------------------------------------------------------------

    async def _delete(self, send: Send, headers: Headers) -> None:
        session_id = headers.get(SESSION_HEADER)
        if not session_id:
            raise invalid(400, "Bad Request: Mcp-Session-Id header required")
        principal = await self._principal(headers, None)
        try:
            if not await self._manager.terminate(session_id, principal):
                # Nothing of the caller's to end: the same 404 as a stranger's DELETE of
                # a live session, byte for byte, or DELETE would tell live ids apart.
                raise SessionNotFound(session_id)
        except VmcpError as exc:
            raise error_reply(exc, None) from exc
        await send_empty(send, 200)
