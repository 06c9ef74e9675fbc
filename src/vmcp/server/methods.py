"""What each MCP method does on the aggregated session: answer locally, or route.

Listings come from the session's routing table. Calls are routed by the exposed name to
the backend that owns it, under the backend's own name (stored in the route, never parsed
back out of the exposed string). Backend results are relayed as the backend sent them.
"""

from __future__ import annotations

import logging
from typing import Any

from vmcp import __version__
from vmcp.aggregate import Route
from vmcp.backend import BackendRpcError
from vmcp.errors import INVALID_PARAMS_CODE, METHOD_NOT_FOUND_CODE
from vmcp.identity import Principal
from vmcp.server.jsonrpc import Incoming
from vmcp.session.channel import ClientChannel
from vmcp.session.multisession import MultiSession

logger = logging.getLogger(__name__)

HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
RESOURCE_NOT_FOUND_CODE = -32002
BASE_CAPABILITIES: dict[str, Any] = {
    "tools": {"listChanged": True},
    "resources": {"listChanged": True},
    "prompts": {"listChanged": True},
    "logging": {},
}


def server_capabilities(backends: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the gateway can do for this session: lists and logging always; completions
    and resource subscriptions only if some backend offers them."""
    capabilities = {key: dict(value) for key, value in BASE_CAPABILITIES.items()}
    offered = [init.get("capabilities") or {} for init in backends.values()]
    if any("completions" in c for c in offered):
        capabilities["completions"] = {}
    if any((c.get("resources") or {}).get("subscribe") for c in offered):
        capabilities["resources"]["subscribe"] = True
    return capabilities


class RpcError(Exception):
    """A JSON-RPC error to answer a request with (HTTP 200)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class MethodHandler:
    """Serves the session-based MCP methods over a ``MultiSession``."""

    def __init__(self, *, server_name: str = "vmcp") -> None:
        self._server_info = {"name": server_name, "version": __version__}

    def initialize_result(self, session: MultiSession, params: dict[str, Any]) -> dict[str, Any]:
        requested = params.get("protocolVersion")
        version = requested if requested in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[0]
        result: dict[str, Any] = {
            "protocolVersion": version,
            "capabilities": server_capabilities(session.initialize_results()),
            "serverInfo": self._server_info,
        }
        instructions = [
            text for init in session.initialize_results().values()
            if isinstance(text := init.get("instructions"), str) and text
        ]
        if instructions:
            result["instructions"] = "\n\n".join(instructions)
        return result

    async def notification(self, session: MultiSession, message: Incoming) -> None:
        if message.method == "notifications/cancelled":
            session.cancel_request(message.params.get("requestId"))
        elif message.method == "notifications/roots/list_changed":
            await session.notify_all(message.method, message.params or None)

    async def request(self, session: MultiSession, message: Incoming, channel: ClientChannel,
                      principal: Principal) -> dict[str, Any]:
        handler = _HANDLERS.get(message.method)
        if handler is None:
            raise RpcError(METHOD_NOT_FOUND_CODE, f"Method not found: {message.method}")
        try:
            return await handler(session, message.params, channel)
        except BackendRpcError as exc:
            raise RpcError(exc.code, exc.message, exc.data) from exc


async def _ping(session: MultiSession, params: dict[str, Any],
                channel: ClientChannel) -> dict[str, Any]:
    return {}


async def _list_tools(session: MultiSession, params: dict[str, Any],
                      channel: ClientChannel) -> dict[str, Any]:
    _reject_cursor(params)
    return {"tools": session.routing.tools}


async def _list_prompts(session: MultiSession, params: dict[str, Any],
                        channel: ClientChannel) -> dict[str, Any]:
    _reject_cursor(params)
    return {"prompts": session.routing.prompts}


async def _list_resources(session: MultiSession, params: dict[str, Any],
                          channel: ClientChannel) -> dict[str, Any]:
    _reject_cursor(params)
    return {"resources": session.routing.resources}


async def _list_templates(session: MultiSession, params: dict[str, Any],
                          channel: ClientChannel) -> dict[str, Any]:
    _reject_cursor(params)
    return {"resourceTemplates": session.routing.resource_templates}


def _reject_cursor(params: dict[str, Any]) -> None:
    """The aggregated lists come in one page, so no cursor of ours exists to resume."""
    if params.get("cursor"):
        raise RpcError(INVALID_PARAMS_CODE, "Invalid cursor")


async def _route(session: MultiSession, kind: str, name: str) -> Route:
    """The route of an exposed tool or prompt name; an unknown name may be new (its
    ``list_changed`` went elsewhere), so the catalogs are re-read once before giving up."""
    lookup = session.routing.route_tool if kind == "tool" else session.routing.route_prompt
    route = lookup(name)
    if route is None:
        await session.refresh_all()
        lookup = session.routing.route_tool if kind == "tool" else session.routing.route_prompt
        route = lookup(name)
    if route is None:
        raise RpcError(INVALID_PARAMS_CODE, f"Unknown {kind}: {name}")
    return route


async def _call_tool(session: MultiSession, params: dict[str, Any],
                     channel: ClientChannel) -> dict[str, Any]:
    route = await _route(session, "tool", params["name"])
    return await session.call(route.backend, "tools/call", {**params, "name": route.name},
                              channel)


async def _get_prompt(session: MultiSession, params: dict[str, Any],
                      channel: ClientChannel) -> dict[str, Any]:
    route = await _route(session, "prompt", params["name"])
    return await session.call(route.backend, "prompts/get", {**params, "name": route.name},
                              channel)


def _resource_backend(session: MultiSession, uri: str) -> str:
    backend = session.routing.route_resource(uri)
    if backend is None:
        raise RpcError(RESOURCE_NOT_FOUND_CODE, f"Resource not found: {uri}", {"uri": uri})
    return backend


async def _read_resource(session: MultiSession, params: dict[str, Any],
                         channel: ClientChannel) -> dict[str, Any]:
    backend = _resource_backend(session, params["uri"])
    return await session.call(backend, "resources/read", params, channel)


async def _subscribe(session: MultiSession, params: dict[str, Any],
                     channel: ClientChannel) -> dict[str, Any]:
    backend = _resource_backend(session, params["uri"])
    return await session.call(backend, "resources/subscribe", params, channel)


async def _unsubscribe(session: MultiSession, params: dict[str, Any],
                       channel: ClientChannel) -> dict[str, Any]:
    backend = _resource_backend(session, params["uri"])
    return await session.call(backend, "resources/unsubscribe", params, channel)


async def _complete(session: MultiSession, params: dict[str, Any],
                    channel: ClientChannel) -> dict[str, Any]:
    ref = params.get("ref") or {}
    if ref.get("type") == "ref/prompt":
        route = session.routing.route_prompt(str(ref.get("name")))
        if route is None:
            raise RpcError(INVALID_PARAMS_CODE, f"Unknown prompt: {ref.get('name')}")
        return await session.call(route.backend, "completion/complete",
                                  {**params, "ref": {**ref, "name": route.name}}, channel)
    backend = _resource_backend(session, str(ref.get("uri")))
    return await session.call(backend, "completion/complete", params, channel)


async def _set_level(session: MultiSession, params: dict[str, Any],
                     channel: ClientChannel) -> dict[str, Any]:
    for name, init in session.initialize_results().items():
        if "logging" in (init.get("capabilities") or {}):
            await session.call(name, "logging/setLevel", params, channel)
    return {}


_HANDLERS = {
    "ping": _ping,
    "tools/list": _list_tools,
    "tools/call": _call_tool,
    "prompts/list": _list_prompts,
    "prompts/get": _get_prompt,
    "resources/list": _list_resources,
    "resources/templates/list": _list_templates,
    "resources/read": _read_resource,
    "resources/subscribe": _subscribe,
    "resources/unsubscribe": _unsubscribe,
    "completion/complete": _complete,
    "logging/setLevel": _set_level,
}
