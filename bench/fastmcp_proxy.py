"""FastMCP's proxy in front of one backend, over Streamable HTTP, for comparison.

``python -m bench.fastmcp_proxy --port P --backend http://127.0.0.1:B/mcp``

FastMCP 4 has no ``FastMCP.as_proxy`` any more; its documented replacement is
``fastmcp.server.create_proxy(target)``, used here as documented with a URL target:
FastMCP then builds a fresh backend client (a new backend session) for each request it
relays. The front answers in JSON (``json_response=True``), like the bench backend, and
runs on uvicorn with uvloop, like ``vmcp serve``.
"""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

import uvicorn
from fastmcp.server import create_proxy


def _exit_quietly(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FastMCP proxy for the benchmark.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="the backend's MCP URL")
    args = parser.parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_quietly)
    logging.basicConfig(level=logging.WARNING)
    proxy = create_proxy(args.backend, name="bench-proxy")
    app = proxy.http_app(path="/mcp", json_response=True, transport="http")
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=2)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
