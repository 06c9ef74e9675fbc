"""The session-based revisions' methods: the handshake, and the rest through the dispatcher.

What only these revisions have is answered here: ``initialize`` (the session's
capabilities and instructions), ``ping``, ``logging/setLevel`` (sent to every backend
that logs) and the client's notifications. Listings and routed requests go to the
:class:`~vmcp.dispatch.Dispatcher` over the session's live backend connections.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from vmcp import __version__
from vmcp.aggregate import RoutingTable
from vmcp.audit import record as audit_record
from vmcp.authz import Authorizer
from vmcp.backend import BackendRpcError
from vmcp.composite import CompositeRegistry
from vmcp.config import CompositeToolConfig
from vmcp.dispatch import (
    LISTINGS,
    ROUTED_METHODS,
    Dispatcher,
    Target,
    WorkflowCall,
    aggregate_capabilities,
)
from vmcp.errors import (
    INTERNAL_ERROR_CODE,
    METHOD_NOT_FOUND_CODE,
    BackendError,
    NotPermitted,
    RequestError,
    SessionClosed,
    VmcpError,
)
from vmcp.identity import ANONYMOUS, Principal
from vmcp.server import jsonrpc
from vmcp.server.jsonrpc import Incoming
from vmcp.server.request_log import current_record
from vmcp.server.session_workflows import SessionQuestions
from vmcp.session.channel import ClientChannel
from vmcp.session.multisession import MultiSession, RequestCancelled
from vmcp.store.workflow_states import MemoryWorkflowStates

logger = logging.getLogger(__name__)

HANDSHAKE_VERSIONS: Final = ("2025-11-25", "2025-06-18", "2025-03-26")
RESOURCE_NOT_FOUND_CODE: Final = -32002


class SessionUpstream:
    """One request's view of its session's backends (the dispatcher's ``Upstream``).

    A listing (``listing``) is served from the replica's profiles of the backends the
    session has not opened, fetched again once stale; a call routes on what is held, and
    re-lists only for a name it does not know. Neither opens an upstream session: the
    call's target backend is opened by the call itself."""

    def __init__(self, session: MultiSession, channel: ClientChannel | None,
                 questions: SessionQuestions | None = None, *, listing: bool = False) -> None:
        self._session = session
        self._channel = channel
        self._questions = questions
        self._listing = listing

    async def routing(self, *, refresh: bool = False) -> RoutingTable:
        if refresh:
            await self._session.refresh_all()
        else:
            await self._session.sync_unopened(fetch=self._listing)
        return self._session.routing

    async def call(self, target: Target) -> dict[str, Any]:
        assert self._channel is not None, "an upstream for calls needs the request's channel"
        return await self._session.call(target.backend, target.method, target.params,
                                        self._channel)

    # -- composite tools (WorkflowUpstream) ------------------------------------------

    def for_steps(self) -> SessionUpstream:
        return self

    def tool_result(self, result: dict[str, Any]) -> dict[str, Any]:
        return result

    def step_meta(self) -> dict[str, Any]:
        return {}

    async def run_workflow(self, exposed: str, params: Mapping[str, Any],
                           work: WorkflowCall, *, asks: bool,
                           snapshot: Mapping[str, Any] | None = None,
                           answers: Mapping[str, dict[str, Any]] | None = None
                           ) -> dict[str, Any]:
        """The workflow waits here for the user, its state in the store; the client's
        answer may be POSTed to any replica (see ``session_workflows``)."""
        assert self._channel is not None, "an upstream for calls needs the request's channel"
        questions = self._questions or SessionQuestions(MemoryWorkflowStates(), None)
        return await work.run(self._channel.notify,
                              questions.elicitor(self._session, self._channel, work),
                              snapshot=snapshot, answers=answers)


class SessionMethods:
    """Serves the session-based MCP methods over a ``MultiSession``."""

    def __init__(self, *, server_name: str = "vmcp", authorizer: Authorizer | None = None,
                 composites: CompositeRegistry | None = None,
                 questions: SessionQuestions | None = None) -> None:
        self._server_info = {"name": server_name, "version": __version__}
        self._questions = questions or SessionQuestions(MemoryWorkflowStates(), None)
        self._dispatcher: Dispatcher[dict[str, Any]] = Dispatcher(
            resource_not_found_code=RESOURCE_NOT_FOUND_CODE, authorizer=authorizer,
            composites=composites)

    @property
    def authorizing(self) -> bool:
        """Whether routed requests must be authorized (:meth:`authorize`) before their work
        starts, so that a refusal can be answered with its own HTTP status."""
        return self._dispatcher.authorizing

    async def authorize(self, session: MultiSession, message: Incoming,
                        principal: Principal) -> Target:
        """The target of a routed request ``principal`` may make; raises ``NotPermitted``."""
        return await self._dispatcher.authorize(SessionUpstream(session, None), message.method,
                                                message.params, principal)

    def initialize_result(self, session: MultiSession, params: dict[str, Any]) -> dict[str, Any]:
        requested = params.get("protocolVersion")
        version = requested if requested in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[0]
        backends = session.initialize_results()
        result: dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": aggregate_capabilities(
                (init.get("capabilities") or {} for init in backends.values()),
                list_changed=True, logging_always=True),
            "serverInfo": self._server_info,
        }
        instructions = [text for init in backends.values()
                        if isinstance(text := init.get("instructions"), str) and text]
        if instructions:
            result["instructions"] = "\n\n".join(instructions)
        return result

    async def notification(self, session: MultiSession, message: Incoming) -> None:
        if message.method == "notifications/cancelled":
            session.cancel_request(message.params.get("requestId"))
        elif message.method == "notifications/roots/list_changed":
            await session.notify_all(message.method, message.params or None)

    async def request(self, session: MultiSession, message: Incoming,
                      channel: ClientChannel, principal: Principal = ANONYMOUS, *,
                      target: Target | None = None) -> dict[str, Any]:
        """The result of one request; raises ``RequestError`` for a JSON-RPC error answer
        (the backend's own errors included). ``target`` is what :meth:`authorize` gave for
        a routed request, if it was asked."""
        method, params = message.method, message.params
        upstream = SessionUpstream(session, channel, self._questions,
                                   listing=method in LISTINGS)
        try:
            if method in LISTINGS:
                return await self._dispatcher.listing(upstream, method, params, principal)
            if method in ROUTED_METHODS:
                return await self._dispatcher.call(upstream, method, params, principal,
                                                   target=target)
            if method == "ping":
                return {}
            if method == "logging/setLevel":
                await session.set_log_level(params, channel)
                return {}
        except BackendRpcError as exc:
            raise RequestError(exc.code, exc.message, exc.data) from exc
        raise RequestError(METHOD_NOT_FOUND_CODE, f"Method not found: {method}")

    async def workflow_answer(self, session: MultiSession, message: dict[str, Any],
                              principal: Principal) -> None:
        """A client's answer to a composite tool's question asked on another replica
        (see ``session_workflows``); raises ``WorkflowGone`` or ``StoreError``."""

        async def resume(channel: ClientChannel, record: dict[str, Any],
                         answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
            upstream = SessionUpstream(session, channel, self._questions)
            snapshot = record["snapshot"]
            tool = CompositeToolConfig.model_validate(snapshot["tool"])
            work = self._dispatcher.workflow_call(upstream, tool.name, tool,
                                                  snapshot.get("params") or {},
                                                  record.get("progress"), principal)
            return await upstream.run_workflow(tool.name, {}, work, asks=True,
                                               snapshot=snapshot, answers=answers)

        await self._questions.answer(session, message, resume)

    async def answer(self, session: MultiSession, message: Incoming, channel: ClientChannel,
                      principal: Principal, target: Target | None = None
                      ) -> dict[str, Any] | None:
        """The JSON-RPC answer to one request (None for a request the client cancelled),
        noted in the request's log record and audit record."""
        record = current_record.get()
        answer = await self._answer_for(session, message, channel, principal, target)
        record.outcome = ("cancelled" if answer is None
                          else "error" if "error" in answer else "ok")
        operation = audit_record.current()
        if operation is not None and answer is not None and isinstance(answer.get("error"),
                                                                       dict):
            operation.error_code = answer["error"].get("code")
        if record.tool is not None and record.backend is None:
            route = session.routing.route_tool(record.tool)
            record.backend = route.backend if route is not None else None
        return answer

    async def _answer_for(self, session: MultiSession, message: Incoming,
                          channel: ClientChannel, principal: Principal,
                          target: Target | None = None) -> dict[str, Any] | None:
        request_id = message.id
        try:
            with session.track_request(request_id):
                payload = await self.request(session, message, channel, principal,
                                                      target=target)
            return jsonrpc.result(request_id, payload)
        except RequestCancelled:
            return None
        except RequestError as exc:
            return jsonrpc.error(request_id, exc.code, exc.message, exc.data)
        except SessionClosed:
            return jsonrpc.error(request_id, SessionClosed.jsonrpc_code, "Session not found")
        except NotPermitted as exc:
            return jsonrpc.error(request_id, exc.jsonrpc_code, exc.public_message)
        except BackendError as exc:
            current_record.get().backend = exc.backend
            logger.warning("backend call failed: %s", exc,
                           extra={"session_id": session.session_id, "backend": exc.backend})
            return jsonrpc.error(request_id, INTERNAL_ERROR_CODE, str(exc),
                                 {"backend": exc.backend})
        except VmcpError as exc:
            return jsonrpc.error(request_id, exc.jsonrpc_code, str(exc) or exc.public_message)
        except Exception:
            logger.exception("unexpected error answering %s", message.method,
                             extra={"session_id": session.session_id})
            return jsonrpc.error(request_id, INTERNAL_ERROR_CODE, "Internal error")
