"""Small backend MCP servers to put behind the gateway.

Each module is runnable as ``python -m examples.backends.<name> --port N`` and
serves Streamable HTTP at ``http://127.0.0.1:N/mcp``. The shared runner lives
here so every backend starts, stays quiet and stops the same way: a gateway
test that launches several of them can then treat them interchangeably.
"""

from __future__ import annotations

import argparse
import logging
import signal
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Literal, NoReturn

import anyio
import uvicorn
from mcp.server import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http import EventStore
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from examples.backends.session_log import logging_sessions

__all__ = ["build_parser", "handshake_only", "run_backend"]

DEFAULT_HOST = "127.0.0.1"
MCP_PATH = "/mcp"

# Long-lived SSE streams would otherwise hold a graceful shutdown open for as
# long as the client keeps them, so a stop request must not wait on them.
_GRACEFUL_SHUTDOWN_SECONDS = 2


def build_parser(description: str, default_port: int) -> argparse.ArgumentParser:
    """Give every backend the same command line, so launch scripts need not special-case one."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"interface to bind (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port", type=int, default=default_port, help=f"TCP port (default {default_port})"
    )
    parser.add_argument(
        "--stateless",
        action="store_true",
        help=(
            "serve without sessions; clients that negotiate a handshake-era protocol "
            "then cannot be sent requests such as sampling"
        ),
    )
    parser.add_argument(
        "--handshake-only",
        action="store_true",
        help=(
            "serve only the session-based revisions (2025-11-25 and earlier), as servers "
            "written before 2026-07-28 do: stateless-revision requests get HTTP 400"
        ),
    )
    parser.add_argument(
        "--session-log",
        type=Path,
        default=None,
        help="append a JSON line for every session this backend opens and ends to this file",
    )
    return parser


def handshake_only(app: ASGIApp) -> ASGIApp:
    """Refuse every request whose ``MCP-Protocol-Version`` is not a handshake-era one.

    The SDK serves the stateless revision beside the session-based ones on any
    endpoint; this makes a backend look like one built before that revision, so
    a gateway's handling of such backends can be exercised with the same code.
    """
    header = b"mcp-protocol-version"

    async def refusing(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            version = dict(scope["headers"]).get(header)
            if version is not None and version.decode("latin-1") not in HANDSHAKE_PROTOCOL_VERSIONS:
                error = {"code": -32600, "message": "Bad Request: Unsupported protocol version"}
                body = {"jsonrpc": "2.0", "id": None, "error": error}
                await JSONResponse(body, status_code=400)(scope, receive, send)
                return
        await app(scope, receive, send)

    return refusing


def _exit_quietly(signum: int, frame: FrameType | None) -> NoReturn:
    # uvicorn re-raises the stop signal once it has shut down; ending with
    # status 0 here keeps a deliberate stop from looking like a crash.
    raise SystemExit(0)


def run_backend(
    create_server: Callable[[], MCPServer[Any] | Server[Any]],
    *,
    description: str,
    default_port: int,
    argv: Sequence[str] | None = None,
    event_store: EventStore | None = None,
    retry_interval_ms: int | None = None,
    http_parser: Literal["auto", "h11", "httptools"] = "auto",
) -> None:
    """Parse the command line, then build the server and serve it until SIGINT or SIGTERM.

    The server is built here rather than by the caller so that logging and the
    warning filter below are in place before any SDK code runs. ``http_parser`` is
    uvicorn's: ``h11`` drops the optional whitespace around header values (RFC 9110
    section 5.5), where httptools keeps the trailing part, which a server checking the
    2026-07-28 routing headers would then see.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_quietly)
    args = build_parser(description, default_port).parse_args(argv)
    # One plain line per record: these processes usually write into a test's
    # or a launcher's log file, where the SDK's default rich console output
    # (boxed, wrapped tracebacks) is hard to read. Configured before the server
    # is built, so the SDK's own logging setup finds it and leaves it alone.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The backends deliberately use handshake-era features (sampling, logging,
    # resource subscriptions) that the SDK marks deprecated for newer protocol
    # revisions; the resulting warnings would only clutter the console.
    warnings.simplefilter("ignore", MCPDeprecationWarning)
    app: ASGIApp = create_server().streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=args.stateless,
        event_store=event_store,
        retry_interval=retry_interval_ms,
        host=args.host,
    )
    if args.handshake_only:
        app = handshake_only(app)
    if args.session_log is not None:
        app = logging_sessions(app, args.session_log)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        http=http_parser,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
    )
    anyio.run(uvicorn.Server(config).serve)
