"""Writing answers on the ASGI connection: JSON bodies, event streams, and hang-ups."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import anyio
from starlette.types import Receive, Send

from vmcp.server.jsonrpc import dumps

SSE_HEADERS: Final = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),  # nginx: pass events on at once
]


def sse_event(message: Mapping[str, Any], event_id: str | None = None) -> bytes:
    """One server-sent event carrying a JSON-RPC message."""
    return sse_frame(dumps(message), event_id)


def sse_frame(data: bytes, event_id: str | None = None) -> bytes:
    """One server-sent event carrying an encoded JSON-RPC message (one line of JSON)."""
    head = f"event: message\nid: {event_id}\n".encode() if event_id else b"event: message\n"
    return head + b"data: " + data + b"\n\n"


async def send_json(send: Send, status: int, body: Mapping[str, Any],
                    extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send_encoded(send, status, dumps(body), extra)


async def send_encoded(send: Send, status: int, payload: bytes,
                       extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """A JSON body already encoded (a stream's event: a large result is not encoded twice)."""
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(payload)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def send_empty(send: Send, status: int) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def accepts(accept: str, media_type: str) -> bool:
    """Whether an ``Accept`` header value admits ``media_type`` (wildcards included)."""
    for part in accept.split(","):
        value = part.split(";", 1)[0].strip().lower()
        if value in (media_type, "*/*") or value == media_type.split("/")[0] + "/*":
            return True
    return False


async def until_disconnected(receive: Receive) -> None:
    """Return when the client hangs up (the request's body already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` when the client hangs up (its work, or the writing of its stream)."""
    await until_disconnected(receive)
    scope.cancel()


async def cancel_on_event(event: anyio.Event, scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` once ``event`` is set (the replica is draining)."""
    await event.wait()
    scope.cancel()
