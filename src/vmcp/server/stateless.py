"""The stateless revision (MCP 2026-07-28) on the gateway's one MCP endpoint.

A request of this revision is a self-contained POST: no ``initialize``, no
``Mcp-Session-Id``. Its ``MCP-Protocol-Version`` header (any version outside the
handshake ones) brings it here from :class:`~vmcp.server.transport.McpEndpoint`, after
the origin check and authentication, and it never touches the session layer or its
store, so any replica serves it.

What is checked, in order, before anything reaches a backend (the SDK's own ladder,
:mod:`mcp.shared.inbound`, so the gateway refuses exactly what the SDK's servers do):

1. the body is one JSON-RPC request (a notification is acknowledged with 202 and
   dropped: the revision defines none a server must act on);
2. no routing header appears twice; ``params._meta`` carries the envelope
   (protocol version, client capabilities); ``MCP-Protocol-Version``, ``Mcp-Method``
   and ``Mcp-Name`` agree with the body (``HeaderMismatch``, -32020, after the optional
   whitespace around header values is dropped, RFC 9110 section 5.5); the version is
   one this gateway serves (``UnsupportedProtocolVersion``, -32022);
3. the method exists at this revision (else -32601 with HTTP 404) and its params have
   the revision's shape (-32602);
4. for ``tools/call``, the ``Mcp-Param-*`` headers agree with the arguments the tool's
   ``inputSchema`` marks with ``x-mcp-header``.

Errors carry the HTTP status the revision assigns to their code (the SDK's table), and
the request's id. Listings and ``server/discover`` carry caching hints (``ttlMs``,
``cacheScope``) derived from the backends' own; every result names the gateway in
``_meta`` (``io.modelcontextprotocol/serverInfo``). A call answers with plain JSON
unless a notification (progress, a requested log message) comes first; then the answer
is an event stream that ends with the response, kept alive by comments while the call
is silent. A client that closes the stream cancels the call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Mapping
from typing import Any, Final

import pydantic
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
    unsupported_protocol_version_rejection,
)
from mcp_types import (
    CLIENT_INFO_META_KEY,
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SERVER_INFO_META_KEY,
)
from mcp_types.jsonrpc import JSONRPCNotification, JSONRPCRequest
from mcp_types.methods import CACHEABLE_METHODS, serialize_server_result, validate_client_request
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from vmcp import __version__, tracing
from vmcp.audit import record as audit_record
from vmcp.authz import Authorizer
from vmcp.backend import BackendRpcError
from vmcp.composite import CompositeRegistry
from vmcp.dispatch import LISTINGS, Dispatcher, Target, aggregate_capabilities
from vmcp.errors import (
    BackendError,
    ConfigError,
    InvalidIdentity,
    NotPermitted,
    RequestError,
)
from vmcp.identity import Principal, binding_for
from vmcp.server import auditing
from vmcp.server.caller_upstream import CallerUpstream, Notify
from vmcp.server.jsonrpc import first_error
from vmcp.server.listen import MAX_RESOURCES, Listening
from vmcp.server.responses import send_json
from vmcp.server.stateless_answer import answer_stream
from vmcp.stateless.backends import Caller, StatelessBackends, View
from vmcp.stateless.input_rounds import Outcome
from vmcp.stateless.pool import BackendKind
from vmcp.stateless.subscriptions import ChangeHub
from vmcp.store.workflow_states import MemoryWorkflowStates, WorkflowStates

logger = logging.getLogger(__name__)

__all__ = ["SERVED_METHODS", "StatelessEndpoint", "is_stateless"]

VERSION_HEADER: Final = "mcp-protocol-version"
SESSION_HEADER: Final = "mcp-session-id"
METHOD_KEY: Final = "vmcp.method"  # the ASGI scope key the transport's metrics read

SERVED_METHODS: Final = frozenset({
    "server/discover", "tools/list", "tools/call", "resources/list",
    "resources/templates/list", "resources/read", "prompts/list", "prompts/get",
    "completion/complete", "subscriptions/listen",
})
"""What the gateway serves at the stateless revision (``subscriptions/listen`` only where
change delivery is set up: without it, no capability announces list changes)."""
LISTEN: Final = "subscriptions/listen"

OWS = " \t"




def is_stateless(headers: Headers) -> bool:
    """Whether a request belongs here rather than to the session layer.

    It does if its ``MCP-Protocol-Version`` is a stateless revision. An unknown version
    comes here too, to be told which versions are served (``UnsupportedProtocolVersion``)
    as the revision requires, unless the request names a session: then it is a
    session's request with a bad version, which the session layer refuses as before.
    """
    version = headers.get(VERSION_HEADER)
    if version is None:
        return False
    version = version.strip(OWS)
    if version in MODERN_PROTOCOL_VERSIONS:
        return True
    return version not in HANDSHAKE_PROTOCOL_VERSIONS and SESSION_HEADER not in headers


class StatelessEndpoint:
    """Serves stateless-revision POSTs; one instance per process."""

    def __init__(self, backends: StatelessBackends, *, server_name: str = "vmcp",
                 authorizer: Authorizer | None = None,
                 composites: CompositeRegistry | None = None,
                 subscriptions: ChangeHub | None = None,
                 workflow_states: WorkflowStates | None = None,
                 max_resource_subscriptions: int = MAX_RESOURCES) -> None:
        self._backends = backends
        self._states = (workflow_states if workflow_states is not None
                        else MemoryWorkflowStates())
        self._subscriptions = subscriptions
        self._listening = (Listening(subscriptions, max_resources=max_resource_subscriptions)
                           if subscriptions is not None else None)
        self._server_info = {"name": server_name, "version": __version__}
        self._dispatcher: Dispatcher[tuple[BackendKind, Outcome]] = Dispatcher(
            resource_not_found_code=INVALID_PARAMS, authorizer=authorizer,
            composites=composites)

    def drain(self) -> None:
        """The replica is stopping: listen streams end gracefully, none open."""
        if self._subscriptions is not None:
            self._subscriptions.drain()

    async def serve(self, scope: Scope, receive: Receive, send: Send, body: bytes,
                    principal: Principal) -> None:
        """Answer one POST whose body has been read and whose caller is authenticated."""
        try:
            decoded = json.loads(body)
        except (ValueError, RecursionError):
            await send_json(send, 400, _error(None, PARSE_ERROR, "Parse error"))
            return
        raw_headers = [(k.decode("latin-1"), v.decode("latin-1").strip(OWS))
                       for k, v in scope.get("headers", [])]
        headers = Headers(raw=[(k.encode("latin-1"), v.encode("latin-1"))
                               for k, v in raw_headers])
        if isinstance(decoded, dict) and "id" not in decoded:
            await self._notification(send, decoded, headers)
            return
        try:
            request = JSONRPCRequest.model_validate(decoded)
        except pydantic.ValidationError:
            await send_json(send, 400, _error(None, INVALID_REQUEST, "Body must be a single "
                                               "JSON-RPC request or notification object"))
            return
        label = request.method if request.method in SERVED_METHODS else "other"
        scope[METHOD_KEY] = label
        attributes = {"mcp.method.name": label,
                      "mcp.protocol.version": headers.get(VERSION_HEADER, "")[:32]}
        if request.method == "tools/call" and isinstance(name := (request.params or {}).get(
                "name"), str):
            attributes["mcp.tool.name"] = name[:128]
        operation = audit_record.current()
        if operation is not None:
            operation.method = label
            operation.protocol_version = headers.get(VERSION_HEADER, "")[:32] or None
            meta = (request.params or {}).get("_meta")
            if isinstance(meta, dict):
                auditing.note_client(operation, meta.get(CLIENT_INFO_META_KEY))
        with tracing.server_span(f"mcp {label}", headers, attributes):
            if operation is not None:
                auditing.note_trace(operation)
            await self._serve_request(receive, send, decoded, request, raw_headers, headers,
                                      principal)

    async def _serve_request(self, receive: Receive, send: Send, decoded: dict[str, Any],
                             request: JSONRPCRequest, raw_headers: list[tuple[str, str]],
                             headers: Headers, principal: Principal) -> None:
        request_id = request.id
        try:
            caller = self._admit(decoded, request, raw_headers, headers, principal)
        except RequestError as exc:
            await send_json(send, _status(exc.code),
                             _error(request_id, exc.code, exc.message, exc.data))
            return
        params = dict(request.params or {})
        if request.method in ("server/discover", *LISTINGS):
            message = await self._answer(request_id, self._listing(caller, request.method,
                                                                   params, principal))
            await send_json(send, _message_status(message), message)
            return
        if request.method == LISTEN and self._listening is not None:
            await self._listening.serve(
                receive, send, request_id, params,
                lambda uris: self._subscribable(caller, principal, uris))
            return
        target = None
        if self._dispatcher.authorizing:
            # Before any work starts, so a refusal gets its own status (403).
            try:
                target = await self._dispatcher.authorize(
                    CallerUpstream(self._backends, caller, headers=headers), request.method,
                    params, principal)
            except NotPermitted as exc:
                await send_json(send, exc.http_status,
                                _error(request_id, exc.jsonrpc_code, exc.public_message))
                return
            except Exception:  # answered below, where the call meets it again
                logger.debug("authorizing before the call failed", exc_info=True)
        await answer_stream(receive, send, request_id, self._answer, _message_status,
                            lambda notify: self._call(caller, request.method, params, headers,
                                                      notify, principal, target))

    # -- admission ----------------------------------------------------------------

    async def _notification(self, send: Send, decoded: dict[str, Any],
                            headers: Headers) -> None:
        try:
            JSONRPCNotification.model_validate(decoded)
        except pydantic.ValidationError:
            await send_json(send, 400, _error(None, INVALID_REQUEST, "Invalid notification"))
            return
        rejection = unsupported_protocol_version_rejection(headers.get(VERSION_HEADER, ""))
        if rejection is not None:
            await send_json(send, 400, _rejection(None, rejection))
            return
        await send({"type": "http.response.start", "status": 202,
                    "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    def _admit(self, decoded: dict[str, Any], request: JSONRPCRequest,
               raw_headers: list[tuple[str, str]], headers: Headers,
               principal: Principal) -> Caller:
        duplicated = find_duplicated_routing_header(raw_headers)
        if duplicated is not None:
            raise RequestError(HEADER_MISMATCH, f"{duplicated} header appears more than once")
        verdict = classify_inbound_request(decoded, headers=dict(headers.items()))
        if isinstance(verdict, InboundLadderRejection):
            raise RequestError(verdict.code, verdict.message, verdict.data)
        if request.method not in SERVED_METHODS or (
                request.method == LISTEN and self._listening is None):
            raise RequestError(METHOD_NOT_FOUND, "Method not found", request.method)
        try:
            validate_client_request(request.method, verdict.protocol_version, request.params)
        except KeyError:
            raise RequestError(METHOD_NOT_FOUND, "Method not found", request.method) from None
        except pydantic.ValidationError as exc:
            raise RequestError(INVALID_PARAMS, f"Invalid params: {first_error(exc)}") from None
        try:
            binding = binding_for(principal)
        except InvalidIdentity as exc:
            raise RequestError(INVALID_REQUEST, str(exc)) from None
        meta = (request.params or {}).get("_meta")
        return Caller(binding, meta if isinstance(meta, dict) else {})

    # -- answers ------------------------------------------------------------------

    async def _answer(self, request_id: Any, work: Awaitable[dict[str, Any]]
                      ) -> dict[str, Any]:
        """The JSON-RPC message answering ``request_id`` with what ``work`` returns or raises."""
        try:
            return {"jsonrpc": "2.0", "id": request_id, "result": await work}
        except RequestError as exc:
            return _error(request_id, exc.code, exc.message, exc.data)
        except NotPermitted as exc:
            return _error(request_id, exc.jsonrpc_code, exc.public_message)
        except BackendRpcError as exc:
            return _error(request_id, exc.code, exc.message, exc.data)
        except BackendError as exc:
            logger.warning("backend call failed: %s", exc, extra={"backend": exc.backend})
            return _error(request_id, INTERNAL_ERROR, str(exc), {"backend": exc.backend})
        except ConfigError:
            return _error(request_id, INTERNAL_ERROR, "Internal error")
        except Exception:
            logger.exception("unexpected error answering a stateless request")
            return _error(request_id, INTERNAL_ERROR, "Internal error")

    async def _listing(self, caller: Caller, method: str, params: dict[str, Any],
                       principal: Principal) -> dict[str, Any]:
        upstream = CallerUpstream(self._backends, caller)
        if method == "server/discover":
            await upstream.routing()
        else:
            await self._dispatcher.listing(upstream, method, params, principal)
        view = upstream.view
        shaped = view.shaped.get(method)
        if shaped is None:
            shaped = self._shape_listing(view, method)
            view.shaped[method] = shaped
        if method != "server/discover" and self._dispatcher.authorizing:
            # The shaped listing is shared; what this caller sees of it is theirs alone.
            key = LISTINGS[method]
            shaped = {**shaped, key: self._dispatcher.visible(principal, view.routing, method,
                                                             shaped[key]),
                      "cacheScope": "private"}
        return shaped

    async def _subscribable(self, caller: Caller, principal: Principal,
                            uris: list[str]) -> dict[str, str]:
        """Of ``uris``, those this caller may subscribe to: routed to a backend that
        offers resource subscriptions (and, with policies, that the caller may read)."""
        upstream = CallerUpstream(self._backends, caller)
        try:
            routing = await upstream.routing()
        except Exception:  # nothing can be routed: nothing is acknowledged
            logger.warning("could not route resource subscriptions", exc_info=True)
            return {}
        entries = upstream.view.entries
        honoured: dict[str, str] = {}
        for uri in uris:
            backend = routing.route_resource(uri)
            entry = entries.get(backend) if backend is not None else None
            if backend is None or entry is None or not (
                    entry.capabilities.get("resources") or {}).get("subscribe"):
                continue
            if self._dispatcher.authorizing:
                try:
                    await self._dispatcher.authorize(upstream, "resources/read",
                                                     {"uri": uri}, principal)
                except (NotPermitted, RequestError):
                    continue
            honoured[uri] = backend
        return honoured

    def _shape_listing(self, view: View, method: str) -> dict[str, Any]:
        hints = {"ttlMs": view.ttl_ms, "cacheScope": "private" if view.private else "public",
                 "resultType": "complete"}
        if method == "server/discover":
            payload: dict[str, Any] = {"supportedVersions": list(MODERN_PROTOCOL_VERSIONS),
                                       "capabilities": aggregate_capabilities(
                           (e.capabilities for e in view.entries.values()),
                           list_changed=self._listening is not None,
                           logging_always=False), **hints}
            instructions = [e.instructions for e in view.entries.values() if e.instructions]
            if instructions:
                payload["instructions"] = "\n\n".join(instructions)
        else:
            payload = {LISTINGS[method]: self._dispatcher.listed(view.routing, method),
                       **hints}
        return self._stamp(_sieve(method, payload))

    async def _call(self, caller: Caller, method: str, params: dict[str, Any],
                    headers: Headers, notify: Notify, principal: Principal,
                    target: Target | None) -> dict[str, Any]:
        upstream = CallerUpstream(self._backends, caller, headers=headers, notify=notify,
                                  states=self._states)
        if target is not None:
            await upstream.routing()  # the view the call's header checks read
        kind, outcome = await self._dispatcher.call(upstream, method, params, principal,
                                                    target=target)
        return self._finish(method, kind, outcome)

    def _finish(self, method: str, kind: BackendKind, outcome: Outcome) -> dict[str, Any]:
        """A call's result as this revision's client takes it."""
        if outcome.result is None:
            payload: dict[str, Any] = {"resultType": "input_required",
                                       "inputRequests": outcome.input_requests or {},
                                       "requestState": outcome.request_state}
            return self._stamp(_sieve(method, payload))
        result = dict(outcome.result)
        result.setdefault("resultType", "complete")
        if method in CACHEABLE_METHODS and result["resultType"] == "complete":
            result.setdefault("ttlMs", 0)
            result.setdefault("cacheScope", "private")
        if kind is BackendKind.SESSION:
            # Shaped by a handshake-era backend: keep what this revision defines.
            result = _sieve(method, result)
        return self._stamp(result)

    def _stamp(self, result: dict[str, Any]) -> dict[str, Any]:
        """Name the gateway as the server that answered (``_meta`` serverInfo)."""
        meta = result.get("_meta")
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta[SERVER_INFO_META_KEY] = dict(self._server_info)
        return {**result, "_meta": meta}

    # -- the response ---------------------------------------------------------------


def _sieve(method: str, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` as this revision defines ``method``'s result (unknown fields dropped)."""
    try:
        return serialize_server_result(method, MODERN_PROTOCOL_VERSIONS[-1], payload)
    except (KeyError, ValueError):
        return payload
    except pydantic.ValidationError as exc:
        logger.warning("a backend's %s result does not fit this revision: %s", method,
                       first_error(exc))
        raise RequestError(INTERNAL_ERROR, "The backend returned an invalid result") from None


def _error(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    """A JSON-RPC error; ``id`` is null when the request's could not be read. The request's
    audit record learns its code."""
    operation = audit_record.current()
    if operation is not None:
        operation.error_code = code
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def _rejection(request_id: Any, rejection: InboundLadderRejection) -> dict[str, Any]:
    return _error(request_id, rejection.code, rejection.message, rejection.data)


def _status(code: int) -> int:
    return ERROR_CODE_HTTP_STATUS.get(code, 200)


def _message_status(message: Mapping[str, Any]) -> int:
    error = message.get("error")
    return _status(error["code"]) if isinstance(error, dict) else 200


