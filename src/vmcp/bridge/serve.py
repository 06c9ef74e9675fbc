"""``vmcp bridge``: one stdio MCP server served over Streamable HTTP.

Run beside the gateway as a deployment of its own, it makes a command-line MCP server an
ordinary HTTP backend that every gateway replica can reach. The HTTP side is the SDK's
own server (both protocol revisions on one endpoint: the handshake ones with sessions,
and 2026-07-28); each request is forwarded to the one supervised process
(:mod:`.supervisor`) and its answer relayed. While the process is down, requests get a
JSON-RPC error naming why, ``/readyz`` answers 503 with the same reason, and
``/healthz`` shows the supervisor's state.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import anyio
import mcp_types as types
import uvicorn
from mcp.client.session import ClientSession
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ServerEvent,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vmcp import __version__, logs
from vmcp.backend.stdio_supervisor import ServerDown, StdioSupervisor, client_session_link
from vmcp.stateless.caller import without_envelope

logger = logging.getLogger(__name__)

__all__ = ["bridge_app", "serve_bridge"]

MCP_PATH: Final = "/mcp"
WAIT_FOR_START_SECONDS: Final = 10.0
"""How long a request waits for a server that is (re)starting before it is refused."""
CALL_SECONDS: Final = 300.0
ResultT = TypeVar("ResultT", bound=BaseModel)
CHANGES: Final[dict[type, ServerEvent]] = {
    types.ToolListChangedNotification: ToolsListChanged(),
    types.PromptListChangedNotification: PromptsListChanged(),
    types.ResourceListChangedNotification: ResourcesListChanged(),
}
Ctx = ServerRequestContext[Any]


class _Forward:
    """Request handlers that send each request on to the stdio server as it came."""

    def __init__(self, supervisor: StdioSupervisor[ClientSession]) -> None:
        self._supervisor = supervisor

    async def send(self, request: Any, result_type: type[ResultT]) -> ResultT:
        try:
            session = await self._supervisor.session(WAIT_FOR_START_SECONDS)
        except ServerDown as exc:
            raise MCPError(code=types.INTERNAL_ERROR, message=str(exc)) from None
        try:
            return await session.send_request(request, result_type,
                                              request_read_timeout_seconds=CALL_SECONDS)
        except MCPError as exc:
            if "closed" in exc.error.message.lower():
                self._supervisor.fail(f"its connection ended ({exc.error.message})")
                raise MCPError(code=types.INTERNAL_ERROR, message=(
                    f"the stdio server ({self._supervisor.name}) stopped during the "
                    "request")) from None
            raise

    def handler(self, request_type: Any, result_type: type[ResultT]
                ) -> Callable[[Ctx, Any], Awaitable[ResultT]]:
        async def forward(ctx: Ctx, params: Any) -> ResultT:
            return await self.send(request_type(params=_handshake_params(params)),
                                   result_type)

        return forward


def _handshake_params(params: BaseModel | None) -> BaseModel | None:
    """``params`` as the stdio server (a handshake-era session) takes them: without the
    2026-07-28 envelope in ``_meta`` (a progress token stays)."""
    if params is None:
        return None
    data = without_envelope(params.model_dump(by_alias=True, exclude_none=True, mode="json"))
    return type(params).model_validate(data)


def bridge_server(supervisor: StdioSupervisor[ClientSession]) -> Server[Any]:
    """The SDK server whose every request goes to the supervised stdio server.

    The stdio server's list changes reach 2026-07-28 clients on their
    ``subscriptions/listen`` streams (a gateway in front holds one).
    """
    forward = _Forward(supervisor)
    changes = InMemorySubscriptionBus()

    async def announce(notification: Any) -> None:
        event = CHANGES.get(type(notification))
        if event is not None:
            await changes.publish(event)

    supervisor.on_notification = announce
    return Server(
        "vmcp-bridge",
        version=__version__,
        on_list_tools=forward.handler(types.ListToolsRequest, types.ListToolsResult),
        on_call_tool=forward.handler(types.CallToolRequest, types.CallToolResult),
        on_list_resources=forward.handler(types.ListResourcesRequest,
                                          types.ListResourcesResult),
        on_list_resource_templates=forward.handler(types.ListResourceTemplatesRequest,
                                                   types.ListResourceTemplatesResult),
        on_read_resource=forward.handler(types.ReadResourceRequest, types.ReadResourceResult),
        on_list_prompts=forward.handler(types.ListPromptsRequest, types.ListPromptsResult),
        on_get_prompt=forward.handler(types.GetPromptRequest, types.GetPromptResult),
        on_completion=forward.handler(types.CompleteRequest, types.CompleteResult),
        on_subscriptions_listen=ListenHandler(changes),
    )


def bridge_app(supervisor: StdioSupervisor[ClientSession], *, host: str) -> Any:
    """The ASGI app: the MCP endpoint, ``/healthz`` (the supervisor's state) and
    ``/readyz`` (503 while the stdio server is not running)."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "stdio": supervisor.status()})

    async def readyz(request: Request) -> Response:
        if supervisor.running:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "stdio server not running",
                             "last_error": supervisor.last_error}, status_code=503)

    return bridge_server(supervisor).streamable_http_app(
        streamable_http_path=MCP_PATH, host=host,
        custom_starlette_routes=[Route("/healthz", healthz), Route("/readyz", readyz)])


def serve_bridge(command: Sequence[str], *, host: str, port: int,
                 log_level: str = "info", log_format: str = "auto",
                 initialize_seconds: float = 30.0, env: dict[str, str] | None = None,
                 cwd: str | None = None) -> None:
    """Serve ``command`` until SIGINT/SIGTERM; the process is stopped on the way out.

    ``env`` is added to the environment the SDK's stdio client gives the server (a
    minimal one: ``PATH``, ``HOME`` and the like, not the bridge's whole environment);
    ``cwd`` is its working directory."""
    logs.configure(log_level, log_format)
    supervisor = StdioSupervisor(command, link=client_session_link, env=env, cwd=cwd,
                                 initialize_seconds=initialize_seconds)
    config = uvicorn.Config(bridge_app(supervisor, host=host), host=host, port=port,
                            log_level=log_level, log_config=None, lifespan="on",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervisor.run)
            logger.info("bridge for %s on http://%s:%d%s", supervisor.name, host, port,
                        MCP_PATH)
            await server.serve()
            tg.cancel_scope.cancel()  # stops the stdio server (and its process group)
        logger.info("bridge stopped; stdio server (%s) ended", supervisor.name)

    anyio.run(main)
