"""A session's event streams on the wire: a call's response stream, and its resumption.

A call answered with SSE writes its events as they come; a client that drops the
connection (or that the backend's polling pauses) resumes with ``Last-Event-ID``, here
from the live stream or, when another replica runs the call, from the event log.
"""

from __future__ import annotations

import asyncio
import logging
import math

import anyio
from starlette.types import Receive, Send

from vmcp.errors import StoreError
from vmcp.server.responses import (
    cancel_on_disconnect,
    cancel_on_event,
    sse_event,
    sse_frame,
    until_disconnected,
)
from vmcp.session.multisession import MultiSession
from vmcp.session.streams import Outbound, ResponseStream

logger = logging.getLogger(__name__)


WRITE_CHUNK_BYTES = 64 * 1024
"""Events are written in chunks of about this size: one ``send`` per chunk rather than
per event, and a chance to notice a hang-up between chunks."""


async def write_events(receive: Receive, send: Send, session: MultiSession,
                        stream: ResponseStream, *, after: int,
                        stale_pauses: int = 0, abandon_after: float | None = None) -> None:
    """Write ``stream``'s events past ``after`` until its final one or a pause.

    Pauses at positions up to ``stale_pauses`` were meant for an earlier connection
    (the one the client is resuming from) and are skipped. A client that disconnects
    only stops the writing; the events stay for a resume, and the work is cancelled if
    none comes within ``abandon_after`` seconds (None: it runs on). So does a client that
    takes nothing for twice ``stall_seconds`` (the connection is ended; it may resume):
    twice, so that a stream full for ``stall_seconds`` first gets its ``SlowReader`` end,
    which the client then receives as soon as it reads what was already sent.
    """
    stall = 2 * stream.bounds.stall_seconds
    wrote_final = paused = False
    with anyio.move_on_after(math.inf) as stalled:
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_on_disconnect, receive, tg.cancel_scope)
            wrote_final, paused = await _write_until_end(send, session, stream, after,
                                                         stale_pauses, stall, stalled)
            tg.cancel_scope.cancel()
    if wrote_final:
        session.streams.drop(stream.id)
    else:  # paused, or the client went away: make it resumable on any replica
        session.work.persist(stream)
        if not paused and abandon_after is not None:
            session.work.abandon(stream, abandon_after)


async def _write_until_end(send: Send, session: MultiSession, stream: ResponseStream,
                           position: int, stale_pauses: int, stall: float,
                           stalled: anyio.CancelScope) -> tuple[bool, bool]:
    """The writing loop of ``write_events``: whether it wrote the final event, and whether
    it ended at a pause."""

    async def write(body: bytes, more: bool = True) -> None:
        # A send that waits this long for the client to take bytes ends the connection.
        stalled.deadline = anyio.current_time() + stall
        await send({"type": "http.response.body", "body": body, "more_body": more})
        stalled.deadline = math.inf
        # uvicorn's send returns at once, without yielding, once the client is gone:
        # without this, a backlog would be "written" to a dead socket in one stall of
        # the event loop before the hang-up is noticed.
        await anyio.lowlevel.checkpoint()

    done = wrote_final = paused = False
    while not done:
        chunk = bytearray()
        events = await stream.after(position)
        for position, item in events:
            if item.pause_ms is not None:
                if position <= stale_pauses:
                    continue
                # The client resumes as soon as this connection ends, maybe on
                # another replica: the stream must be in the event log by then.
                # If the log cannot take it, this connection carries on instead.
                if chunk:
                    await write(bytes(chunk))
                    chunk.clear()
                if not await session.work.persist(stream).wait():
                    continue
                chunk += f"retry: {item.pause_ms}\n\n".encode()
                done = paused = True
            elif item.message is None:  # cancelled by the client: nothing to say
                done = wrote_final = True
            else:
                chunk += sse_frame(item.data, stream.event_id(position))
                done = wrote_final = item.final
            if done:
                break
            if len(chunk) >= WRITE_CHUNK_BYTES:
                await write(bytes(chunk))
                chunk.clear()
        if chunk:
            await write(bytes(chunk))
    await write(b"", more=False)
    return wrote_final, paused

async def write_logged_events(receive: Receive, send: Send, session: MultiSession,
                               stream_id: str, *, after: int,
                              draining: anyio.Event) -> None:
    """Resume a stream another replica runs, from the event log, until its end.

    Pauses recorded there were for earlier connections; this one stays to the end.
    """
    assert session.event_log is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_on_disconnect, receive, tg.cancel_scope)
        tg.start_soon(cancel_on_close, session, tg.cancel_scope)
        tg.start_soon(cancel_on_event, draining, tg.cancel_scope)
        try:
            async for position, record in session.event_log.read(
                    session.session_id, stream_id, after):
                message = record.get("m")
                if isinstance(message, dict):
                    await send({"type": "http.response.body", "more_body": True,
                                "body": sse_event(message, f"{stream_id}.{position}")})
                if record.get("final"):
                    break
        except StoreError as exc:
            logger.warning("resuming from the event log failed: %s", exc,
                           extra={"session_id": session.session_id})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        tg.cancel_scope.cancel()


async def write_server_messages(receive: Receive, send: Send, session: MultiSession, *,
                                draining: anyio.Event) -> None:
    """The session's GET stream of server messages, until the client leaves, the session
    closes or the replica drains."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_on_disconnect, receive, tg.cancel_scope)
        # Closed before it subscribed, its stream would never be closed by the session.
        tg.start_soon(cancel_on_close, session, tg.cancel_scope)
        tg.start_soon(cancel_on_event, draining, tg.cancel_scope)
        async with session.messages.subscribe() as messages:
            # Only now, with the stream subscribed everywhere, tell the client it is
            # open: what happens after this point cannot be missed.
            await send({"type": "http.response.body", "body": b": stream open\n\n",
                        "more_body": True})
            async for message in messages:
                await send({"type": "http.response.body", "body": sse_event(message),
                            "more_body": True})
        tg.cancel_scope.cancel()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def is_logged(session: MultiSession, stream_id: str) -> bool:
    """True if another replica keeps this stream's events in the event log."""
    assert session.event_log is not None
    try:
        return await session.event_log.exists(session.session_id, stream_id)
    except StoreError:
        return False



async def cancel_on_close(session: MultiSession, scope: anyio.CancelScope) -> None:
    """End a stream that the session's own close would not end."""
    await session.wait_closed()
    scope.cancel()


async def first_event(receive: Receive, stream: ResponseStream) -> Outbound | None:
    """The stream's first event, or None if the client disconnects before there is one.

    Bounded by the work: it ends with an answer, or the session's close answers it.

    Two plain tasks rather than a task group, on every request: anyio's cancel of a scope
    formats the repr of the task that cancels (its callbacks' source included), a
    measurable share of a relayed call's CPU.
    """
    events = asyncio.ensure_future(stream.after(0))
    hangup = asyncio.ensure_future(until_disconnected(receive))
    try:
        await asyncio.wait((events, hangup), return_when=asyncio.FIRST_COMPLETED)
    finally:
        hangup.cancel()
        if not events.done():
            events.cancel()
    return events.result()[0][1] if events.done() and not events.cancelled() else None
