"""How one 2026-07-28 request's answer is written: plain JSON, or an event stream.

A call answers with plain JSON unless a notification (progress, a requested log message)
comes first; then the answer is an event stream that ends with the response, kept alive
by comments while the call is silent. A client that hangs up cancels the call.

Two plain tasks rather than an anyio task group, on every request: anyio's cancel formats
the cancelling task's repr (its callbacks' source included), a measurable share of a
relayed call's CPU.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from starlette.types import Receive, Send

from vmcp.server.caller_upstream import Notify
from vmcp.server.responses import SSE_HEADERS, send_json, sse_event, until_disconnected

logger = logging.getLogger(__name__)

SSE_PING_SECONDS = 15.0
"""Silence after which a call's answer becomes an event stream kept open by comments,
so that a proxy's idle timeout does not cut a long call."""

Answer = Callable[[Any, Awaitable[dict[str, Any]]], Awaitable[dict[str, Any]]]
"""Turns the work's outcome (a result, or an error it raises) into the JSON-RPC answer."""


async def answer_stream(receive: Receive, send: Send, request_id: Any, answer_with: Answer,
                        status_of: Callable[[Mapping[str, Any]], int],
                        work: Callable[[Notify], Awaitable[dict[str, Any]]]) -> None:
    """Run ``work`` and answer ``request_id`` with its outcome: JSON (with the status
    ``status_of`` the answer), or SSE once it notifies."""
    sender, receiver = anyio.create_memory_object_stream[dict[str, Any]](0)
    answer: list[dict[str, Any]] = []

    async def notify(message: dict[str, Any]) -> None:
        try:
            await sender.send({**message, "jsonrpc": "2.0"})
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            logger.debug("dropped %s: the response stream is closed", message.get("method"))

    async def run() -> None:
        async with sender:
            answer.append(await answer_with(request_id, work(notify)))

    # A hang-up cancels the work; the work's end (or failure) ends the stream.
    working = asyncio.ensure_future(run())
    hangup = asyncio.ensure_future(until_disconnected(receive))
    hangup.add_done_callback(lambda _: working.cancel())
    try:
        async with receiver:
            done, event = await _next_event(receiver)
            if done:
                if await _settled(working):
                    await send_json(send, status_of(answer[0]), answer[0])
                return
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            while not done:
                chunk = sse_event(event) if event is not None else b": ping\n\n"
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                done, event = await _next_event(receiver)
            if await _settled(working):
                await send({"type": "http.response.body", "body": sse_event(answer[0]),
                            "more_body": False})
    finally:
        hangup.cancel()
        working.cancel()


async def _settled(working: asyncio.Future[None]) -> bool:
    """Wait for the work whose stream has ended. True once it finished (its failure is
    raised); False if the client's hang-up cancelled it: nobody to answer."""
    await asyncio.wait((working,))
    if working.cancelled():
        return False
    working.result()
    return True


async def _next_event(receiver: MemoryObjectReceiveStream[dict[str, Any]]
                      ) -> tuple[bool, dict[str, Any] | None]:
    """(the work is done, its next notification); neither after ``SSE_PING_SECONDS``
    of silence, when a keep-alive comment is due."""
    with anyio.move_on_after(SSE_PING_SECONDS):
        try:
            return False, await receiver.receive()
        except anyio.EndOfStream:
            return True, None
    return False, None
