"""The ASGI floor: the least a gateway built on vmcp's own stack does per call.

Written for the benchmark only (never shipped). The floor (``bench/floor.py``) parses HTTP
with httptools itself; a gateway that wants uvicorn's front door (limits, timeouts, the
drain on SIGTERM) and an HTTP client that can stream pays for the ASGI layer and for
httpx2's request and response objects. This is that cost alone, with nothing of a
gateway's work: uvicorn (uvloop, httptools, access log off) runs one raw ASGI app that
reads the client's body, forwards it with the session and protocol headers through vmcp's
lean HTTP/1.1 pool (``vmcp.backend.http11``, as vmcp sends calls), and relays the answer's
bytes. No session lookup, no JSON parsing, no store.

``vmcp ÷ this`` is what vmcp's own work costs on its stack; ``this ÷ the floor`` is what
the stack costs.

``python -m bench.asgi_floor --port P --backend http://127.0.0.1:B/mcp``
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import httpx2
import uvicorn
from starlette.types import Message, Receive, Scope, Send

from vmcp.backend.http11 import LeanHttpTransport

PASSED_ON = frozenset((b"mcp-session-id", b"mcp-protocol-version", b"accept", b"content-type",
                       b"mcp-method", b"mcp-name"))


class Forwarder:
    """The raw ASGI app: one backend, every request forwarded as it came."""

    def __init__(self, backend: str) -> None:
        self._backend = httpx2.URL(backend)
        self._transport = LeanHttpTransport(64)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k in PASSED_ON]
        request = httpx2.Request(scope["method"], self._backend, content=bytes(body),
                                 headers=headers)
        response = await self._transport.handle_async_request(request)
        data = await response.aread()
        out = [(b"content-type", response.headers.get("content-type", "").encode()),
               (b"content-length", str(len(data)).encode())]
        if session_id := response.headers.get("mcp-session-id"):
            out.append((b"mcp-session-id", session_id.encode()))
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": out})
        await send({"type": "http.response.body", "body": data})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._transport.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", required=True, help="the backend's MCP URL")
    args = parser.parse_args(argv)
    uvicorn.run(Forwarder(args.backend), host="127.0.0.1", port=args.port, loop="uvloop",
                http="httptools", access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
