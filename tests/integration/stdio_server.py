"""A Python SDK MCP server spoken to over stdio, for the stdio backend and bridge tests.

Run as ``python tests/integration/stdio_server.py [MARKER]`` (the marker only lets a test
find the process). Each tool exercises one thing the gateway has to route: answers to
many sessions' requests, progress, server-to-client requests, cancellation, list
changes, the process dying mid-call, and the environment it was started with.
"""

from __future__ import annotations

import os
import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import SamplingMessage, TextContent
from pydantic import BaseModel


class Confirmation(BaseModel):
    ok: bool


def create_server() -> MCPServer:
    server: MCPServer = MCPServer("stdio-test", version="1.0.0")

    @server.tool()
    async def echo(tag: str) -> str:
        """Answer with ``tag`` after a pause, so that calls overlap."""
        await anyio.sleep(0.01)
        return tag

    @server.tool()
    async def progress(tag: str, steps: int, ctx: Context) -> str:
        """Report ``steps`` progress notifications naming ``tag``."""
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"{tag} {step}")
            await anyio.sleep(0.02)
        return f"{tag} done"

    @server.tool()
    async def ask(question: str, ctx: Context) -> str:
        """Ask the client's model (sampling/createMessage); its answer's text."""
        answer = await ctx.session.create_message(
            [SamplingMessage(role="user", content=TextContent(type="text", text=question))],
            max_tokens=50)
        content = answer.content
        return content.text if isinstance(content, TextContent) else str(content)

    @server.tool()
    async def confirm(ctx: Context) -> str:
        """Ask the client's user (elicitation/create)."""
        result = await ctx.elicit("Go ahead?", Confirmation)
        return f"{result.action} {getattr(result, 'data', None)}"

    @server.tool()
    async def wait_for_cancel(path: str, ctx: Context) -> str:
        """Report progress once, wait until cancelled, then write ``cancelled`` to ``path``."""
        await ctx.report_progress(0, 1, "waiting")
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.Path(path).write_text("cancelled")
        return "never"

    @server.tool()
    async def add_tool(name: str, ctx: Context) -> str:
        """Add a tool called ``name`` and announce the change."""
        def added() -> str:
            return "added"

        server.add_tool(added, name=name)
        await ctx.session.send_tool_list_changed()
        return name

    @server.tool()
    def die() -> str:
        """Exit the process in the middle of the call."""
        os._exit(7)

    @server.tool()
    def environment(name: str) -> dict[str, str | None]:
        """The value of the environment variable ``name`` and the working directory."""
        return {"value": os.environ.get(name), "cwd": os.getcwd()}

    return server


if __name__ == "__main__":
    del sys.argv[1:]
    create_server().run("stdio")
