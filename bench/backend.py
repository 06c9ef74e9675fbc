"""The benchmark backend: an official-SDK MCP server with two trivial tools.

``echo(text)`` returns its argument and ``blob()`` returns a fixed 5 KiB text, so what a
benchmark measures is transport and relaying, not tool work. Both are registered with
``structured_output=False``: a ``str`` result is then one text content item, not also a
``structuredContent`` copy that would double every payload.

Run it with ``python -m bench.backend --port P`` (Streamable HTTP at ``/mcp``).

Response mode: the SDK's session manager answers a POST either as a one-event SSE
stream (the default) or, with ``json_response=True``, as one ``application/json`` body.
JSON is what this backend serves by default because it was the faster of the two here
(see ``bench/RESULTS.md``, "Backend response mode"); ``--sse`` and ``--stateless`` select
the other modes for that comparison. The event loop is uvloop when installed (uvicorn's
``loop="auto"``), as it is for ``vmcp serve``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import warnings
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types import ToolAnnotations

from examples.backends import handshake_only

BLOB_BYTES = 5 * 1024
# Printable, and not one repeated character, so nothing on the way can shortcut it.
BLOB = ("0123456789abcdef" * (BLOB_BYTES // 16 + 1))[:BLOB_BYTES]
MCP_PATH = "/mcp"


def create_server(extra_tools: int = 0) -> MCPServer:
    """``extra_tools`` more tools ``t0``... (read-only ones and destructive ones in turn),
    for measuring listings of a large catalog."""
    server: MCPServer = MCPServer("bench", version="1.0.0", log_level="WARNING")
    for index in range(extra_tools):
        def filler(text: str = "") -> str:
            return text

        server.add_tool(filler, name=f"t{index}", description=f"filler tool {index}",
                        annotations=ToolAnnotations(readOnlyHint=index % 2 == 0,
                                                    destructiveHint=index % 2 == 1),
                        structured_output=False)

    @server.tool(structured_output=False)
    def echo(text: str) -> str:
        """Return ``text`` unchanged."""
        return text

    @server.tool(structured_output=False)
    def blob() -> str:
        """Return a fixed 5 KiB text."""
        return BLOB

    return server


def add_hanging_tools(server: MCPServer) -> None:
    """``hang()`` never answers (it sleeps an hour), ``hanging()`` says how many ``hang``
    calls are still running: what the attack runner's hanging-backend and abandoned-call
    attacks need to see whether the gateway cancelled them."""
    running = [0]

    @server.tool(structured_output=False)
    async def hang() -> str:
        """Sleep an hour (a tool that never answers)."""
        running[0] += 1
        try:
            await anyio.sleep(3600)
        finally:
            running[0] -= 1
        return "woke"

    @server.tool(structured_output=False)
    def hanging() -> str:
        """How many ``hang`` calls are running."""
        return str(running[0])


def _exit_quietly(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark backend MCP server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sse", action="store_true",
                        help="answer POSTs as SSE streams (the SDK default) instead of JSON")
    parser.add_argument("--tools", type=int, default=0,
                        help="this many more (filler) tools, for listing figures")
    parser.add_argument("--stateless", action="store_true",
                        help="no sessions: every request is served by a fresh transport")
    parser.add_argument("--hang", action="store_true",
                        help="add the tools hang() and hanging() (for bench/attacks.py)")
    parser.add_argument("--handshake-only", action="store_true",
                        help="refuse the stateless revision (2026-07-28), as a backend built "
                             "before it: a gateway must hold a session with it")
    args = parser.parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_quietly)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.simplefilter("ignore", MCPDeprecationWarning)
    server = create_server(args.tools)
    if args.hang:
        add_hanging_tools(server)
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        json_response=not args.sse,
        stateless_http=args.stateless,
        host=args.host,
    )
    served = handshake_only(app) if args.handshake_only else app
    config = uvicorn.Config(served, host=args.host, port=args.port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=2)
    # ``Server.run`` (not ``anyio.run(serve)``) so that uvicorn installs uvloop.
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
