"""Work a session runs detached from the HTTP connection that asked for it.

A call's work outlives its POST (the client may drop the connection and resume the
stream), and an interrupted stream is copied to the event log until its end. Neither
has an enclosing scope to run in: the session's lifetime is not a block of code but an
entry in a cache, ended by eviction, DELETE, expiry or shutdown. So these are plain
``asyncio`` tasks (the one place vmcp starts tasks outside a task group), owned and ended
by the session's close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any

import anyio

from vmcp.errors import SessionClosed, StoreError
from vmcp.session.streams import ResponseStream
from vmcp.store.event_log import EventLog

logger = logging.getLogger(__name__)

FINAL_COPY_SECONDS = 5.0
"""How long a closing session waits for its event-log copies to record their streams'
final events (each append has the store's own deadline; this bounds them together)."""


class StreamCopy:
    """Whether a stream's events so far reached the event log (see ``DetachedWork.persist``)."""

    def __init__(self) -> None:
        self._settled = anyio.Event()
        self._copied = False

    def settle(self, copied: bool) -> None:
        """Record the outcome once; later calls change nothing."""
        if not self._settled.is_set():
            self._copied = copied
            self._settled.set()

    async def wait(self) -> bool:
        """True once the events are in the log; False if they could not be written."""
        await self._settled.wait()
        return self._copied


class DetachedWork:
    """A session's detached request tasks and stream copies."""

    def __init__(self, session_id: str, event_log: EventLog | None) -> None:
        self._session_id = session_id
        self.event_log = event_log
        self._tasks: set[asyncio.Task[None]] = set()
        self._copies: set[asyncio.Task[None]] = set()
        self._persisted: set[str] = set()
        self._closed = False

    def spawn(self, work: Awaitable[None]) -> None:
        """Run a request's work; it ends with the session at the latest. Raises
        ``SessionClosed`` once the session is closing (the work is not started)."""
        if self._closed:
            raise SessionClosed(self._session_id)

        async def run() -> None:
            await work

        task = asyncio.create_task(run(), name=f"vmcp-request-{self._session_id[:8]}")
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if isinstance(work, Coroutine):
                work.close()  # cancelled before it started: never awaited, close quietly

        task.add_done_callback(done)

    def persist(self, stream: ResponseStream) -> StreamCopy:
        """Copy an interrupted stream's events to the event log, so that the client can
        resume it on any replica; follows the stream until its final event.

        The copy is not one of the request tasks that the session's close cancels: the
        close finishes the stream (``-32001``) and the copy records that end too, so a
        client resuming on another replica gets the same answer, not silence.

        The returned copy says once the events so far are in the log, or that they could
        not be written: a connection the server means to end (a pause) waits for it, so
        the client's resume, wherever it lands, finds the stream in the log."""
        copied = StreamCopy()
        if self.event_log is None or stream.id in self._persisted or self._closed:
            copied.settle(True)
            return copied
        self._persisted.add(stream.id)
        task = asyncio.create_task(self._copy(self.event_log, stream, copied),
                                   name=f"vmcp-stream-copy-{self._session_id[:8]}")
        self._copies.add(task)
        task.add_done_callback(self._copies.discard)
        return copied

    async def _copy(self, log: EventLog, stream: ResponseStream, copied: StreamCopy) -> None:
        position = 0
        try:
            while True:
                events = await stream.after(position)
                for position, item in events:
                    record: dict[str, Any] = {"m": item.message, "final": item.final}
                    if item.pause_ms is not None:
                        record["pause"] = item.pause_ms
                    try:
                        await log.append(self._session_id, stream.id, position, record)
                    except StoreError as exc:
                        logger.warning("could not persist stream events: %s", exc,
                                       extra={"session_id": self._session_id})
                        copied.settle(False)
                        return
                    if item.final or (item.pause_ms is not None and self._closed
                                      and stream.continued_elsewhere):
                        return  # ended, or the rest comes from the replica that goes on
                copied.settle(True)
        finally:
            copied.settle(True)

    async def wait_requests(self) -> None:
        """Return once no request's work is running (later ones may start)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    def cancel_requests(self) -> None:
        """Stop every request's work (the session is closing); no new work starts."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()

    async def finish_copies(self) -> None:
        """Let the stream copies record their final events, within a bound."""
        if self._copies:
            _, late = await asyncio.wait(list(self._copies), timeout=FINAL_COPY_SECONDS)
            for task in late:
                task.cancel()
