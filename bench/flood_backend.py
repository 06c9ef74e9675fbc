"""A backend that floods: the fastest MCP server we could write, for attacks only.

``python -m bench.flood_backend --port P`` serves Streamable HTTP at ``/mcp`` with two
tools: ``flood(count, size)`` answers with an SSE stream of ``count`` progress
notifications (``size``-character messages) and then its result, and ``big(size)`` with
a ``size``-character text result. Written on raw ASGI, not the SDK, because the SDK's
server sends a few thousand notifications a second, too few to show what a gateway does
with a backend that outpaces its client (this one sends tens of thousands). It awaits
every write, so it honours backpressure like any HTTP server.
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send

TOOLS = [
    {"name": "flood", "description": "progress notifications, then a result",
     "inputSchema": {"type": "object", "properties": {
         "count": {"type": "integer"}, "size": {"type": "integer"}}}},
    {"name": "big", "description": "a large text result",
     "inputSchema": {"type": "object", "properties": {"size": {"type": "integer"}}}},
]
SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def dumps(message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["method"] != "POST":
        status = 200 if scope["method"] == "DELETE" else 405
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = json.loads(body)
    if "id" not in request:
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    method, params = request.get("method"), request.get("params") or {}
    if method == "tools/call" and params.get("name") == "flood":
        await flood(send, request["id"], params)
        return
    headers = [(b"content-type", b"application/json")]
    if method == "initialize":
        result: dict[str, Any] = {"protocolVersion": params.get("protocolVersion"),
                                  "capabilities": {"tools": {}},
                                  "serverInfo": {"name": "flood", "version": "1"}}
        headers.append((b"mcp-session-id", uuid.uuid4().hex.encode()))
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call" and params.get("name") == "big":
        size = int(params.get("arguments", {}).get("size", 0))
        result = {"content": [{"type": "text", "text": "y" * size}]}
    else:
        result = {}
    payload = dumps({"jsonrpc": "2.0", "id": request["id"], "result": result})
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def flood(send: Send, request_id: Any, params: dict[str, Any]) -> None:
    arguments = params.get("arguments") or {}
    count, size = int(arguments.get("count", 0)), int(arguments.get("size", 0))
    token = (params.get("_meta") or {}).get("progressToken", 0)
    await send({"type": "http.response.start", "status": 200, "headers": SSE})
    text = "x" * size
    batch = []
    for step in range(count):
        note = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {
            "progressToken": token, "progress": step, "total": count, "message": text}}
        batch.append(b"event: message\ndata: " + dumps(note) + b"\n\n")
        if len(batch) == 64:
            await send({"type": "http.response.body", "body": b"".join(batch),
                        "more_body": True})
            batch.clear()
    result = {"jsonrpc": "2.0", "id": request_id,
              "result": {"content": [{"type": "text", "text": f"sent {count}"}]}}
    batch.append(b"event: message\ndata: " + dumps(result) + b"\n\n")
    await send({"type": "http.response.body", "body": b"".join(batch)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
