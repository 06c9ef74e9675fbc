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
from vmcp.backend import BackendRpcError
from vmcp.composite import CompositeRegistry
from vmcp.dispatch import (
    LISTINGS,
    ROUTED_METHODS,
    Dispatcher,
    Target,
    Work,
    aggregate_capabilities,
)
from vmcp.errors import METHOD_NOT_FOUND_CODE, RequestError
from vmcp.server.jsonrpc import Incoming
from vmcp.session.channel import ClientChannel
from vmcp.session.multisession import MultiSession

logger = logging.getLogger(__name__)

HANDSHAKE_VERSIONS: Final = ("2025-11-25", "2025-06-18", "2025-03-26")
RESOURCE_NOT_FOUND_CODE: Final = -32002


class SessionUpstream:
    """One request's view of its session's backends (the dispatcher's ``Upstream``)."""

    def __init__(self, session: MultiSession, channel: ClientChannel) -> None:
        self._session = session
        self._channel = channel

    async def routing(self, *, refresh: bool = False) -> RoutingTable:
        if refresh:
            await self._session.refresh_all()
        return self._session.routing

    async def call(self, target: Target) -> dict[str, Any]:
        return await self._session.call(target.backend, target.method, target.params,
                                        self._channel)

    # -- composite tools (WorkflowUpstream) ------------------------------------------

    def for_steps(self) -> SessionUpstream:
        return self

    def tool_result(self, result: dict[str, Any]) -> dict[str, Any]:
        return result

    def step_meta(self) -> dict[str, Any]:
        return {}

    async def run_workflow(self, exposed: str, params: Mapping[str, Any], work: Work, *,
                           asks: bool) -> dict[str, Any]:
        """The workflow waits here for the user; the client's answer may be POSTed to any
        replica, and the session's relay brings it back (see ``ClientChannel.request``)."""
        return await work(self._channel.request, self._channel.notify)


class SessionMethods:
    """Serves the session-based MCP methods over a ``MultiSession``."""

    def __init__(self, *, server_name: str = "vmcp",
                 composites: CompositeRegistry | None = None) -> None:
        self._server_info = {"name": server_name, "version": __version__}
        self._dispatcher: Dispatcher[dict[str, Any]] = Dispatcher(
            resource_not_found_code=RESOURCE_NOT_FOUND_CODE, composites=composites)

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
                      channel: ClientChannel) -> dict[str, Any]:
        """The result of one request; raises ``RequestError`` for a JSON-RPC error answer
        (the backend's own errors included)."""
        method, params = message.method, message.params
        upstream = SessionUpstream(session, channel)
        try:
            if method in LISTINGS:
                return await self._dispatcher.listing(upstream, method, params)
            if method in ROUTED_METHODS:
                return await self._dispatcher.call(upstream, method, params)
            if method == "ping":
                return {}
            if method == "logging/setLevel":
                for name, init in session.initialize_results().items():
                    if "logging" in (init.get("capabilities") or {}):
                        await session.call(name, method, params, channel)
                return {}
        except BackendRpcError as exc:
            raise RequestError(exc.code, exc.message, exc.data) from exc
        raise RequestError(METHOD_NOT_FOUND_CODE, f"Method not found: {method}")
