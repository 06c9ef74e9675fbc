"""Drive an ASGI endpoint in-process with one request and collect what it sends."""

from __future__ import annotations

import json
from typing import Any

import anyio
from starlette.types import ASGIApp


async def call(app: ASGIApp, headers: list[tuple[bytes, bytes]], body: bytes
               ) -> tuple[int, dict[bytes, bytes], dict[str, Any]]:
    """POST ``body`` to ``/mcp``; the status, headers and JSON body of the answer."""
    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": headers}
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(payload)
