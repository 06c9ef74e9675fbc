"""Work a session runs detached from the HTTP connection that asked for it.

A call's work outlives its POST (the client may drop the connection and resume the
stream), and an interrupted stream is copied to the event log until its end. Neither
has an enclosing scope to run in: the session's lifetime is not a block of code but an
entry in a cache, ended by eviction, DELETE, expiry or shutdown. So these are plain
``asyncio`` tasks (with the backends' cancellation notices, the only tasks vmcp starts
outside a task group), owned and ended by the session's close. A call whose client left
its stream and did not come back within a grace period is cancelled (``abandon``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Coroutine
from typing import Any

import anyio

from vmcp.errors import SessionClosed, StoreError
from vmcp.session.streams import Outbound, ResponseStream
from vmcp.store.event_log import EventLog

logger = logging.getLogger(__name__)

FINAL_COPY_SECONDS = 5.0
"""How long a closing session waits for its event-log copies to record their streams'
final events (each append has the store's own deadline; this bounds them together)."""
STOP_COPY_SECONDS = 1.0
"""How long an ended session waits for its copies to stop (they are cancelled at once)."""
COPY_BATCH_EVENTS = 256
COPY_BATCH_BYTES = 1024 * 1024
"""One round trip to the log carries at most this many events / bytes."""
COPY_MAX_EVENTS = 10_000
COPY_MAX_BYTES = 16 * 1024 * 1024
"""What one copy writes at most before it only waits for the stream's final answer: a
client that never comes back must not turn a chatty call into an endless stream of
writes. Past this, nothing takes the stream's events, so the stream's own bound stops the
backend and, after ``stall_seconds``, ends the request; that end is still recorded.
10,000 events is also the log's own length bound (older entries are trimmed)."""


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
        self._by_stream: dict[str, asyncio.Task[None]] = {}
        self._grace: dict[str, asyncio.TimerHandle] = {}
        self._closed = False
        self._stopping = False

    def spawn(self, work: Awaitable[None], stream_id: str | None = None) -> None:
        """Run a request's work; it ends with the session at the latest. Raises
        ``SessionClosed`` once the session is closing (the work is not started).
        ``stream_id`` names the response stream the work writes, for ``abandon``."""
        if self._closed:
            raise SessionClosed(self._session_id)

        async def run() -> None:
            await work

        task = asyncio.create_task(run(), name=f"vmcp-request-{self._session_id[:8]}")
        self._tasks.add(task)
        if stream_id is not None:
            self._by_stream[stream_id] = task

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if stream_id is not None and self._by_stream.get(stream_id) is finished:
                del self._by_stream[stream_id]
                self.resume(stream_id)
            if isinstance(work, Coroutine):
                work.close()  # cancelled before it started: never awaited, close quietly

        task.add_done_callback(done)

    def abandon(self, stream: ResponseStream, grace_seconds: float) -> None:
        """The client left ``stream`` before its answer: unless it comes back for it
        (``resume``) within ``grace_seconds``, cancel the work, which cancels the backend
        call (``notifications/cancelled`` and the upstream request closed), and end the
        stream without an answer, as for a call the client cancelled itself."""
        task = self._by_stream.get(stream.id)
        if task is None or task.done() or stream.finished_at is not None:
            return
        self.resume(stream.id)
        self._grace[stream.id] = asyncio.get_running_loop().call_later(
            grace_seconds, self._give_up, stream)

    def resume(self, stream_id: str) -> None:
        """A client reads ``stream_id`` again: its work is no longer abandoned."""
        timer = self._grace.pop(stream_id, None)
        if timer is not None:
            timer.cancel()

    def _give_up(self, stream: ResponseStream) -> None:
        self._grace.pop(stream.id, None)
        task = self._by_stream.pop(stream.id, None)
        if task is not None and not task.done():
            logger.info("client left a call's stream and did not resume it: cancelling the "
                        "call", extra={"session_id": self._session_id})
            task.cancel()
            stream.append(Outbound(None, final=True))

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
        copied_events = copied_bytes = 0
        try:
            while not self._stopping:
                if copied_events >= COPY_MAX_EVENTS or copied_bytes >= COPY_MAX_BYTES:
                    position = await self._copy_final(stream, position)
                batch = _batch(await stream.after(position))
                if self._stopping:
                    return
                try:
                    await log.append(self._session_id, stream.id,
                                     [(seq, record) for seq, record, _ in batch])
                except StoreError as exc:
                    logger.warning("could not persist stream events: %s", exc,
                                   extra={"session_id": self._session_id})
                    copied.settle(False)
                    return
                position = batch[-1][0]
                copied_events += len(batch)
                copied_bytes += sum(size for _, _, size in batch)
                if batch[-1][1]["final"]:
                    return
                if position >= len(stream):  # everything so far is in the log
                    copied.settle(True)
        finally:
            copied.settle(True)

    @staticmethod
    async def _copy_final(stream: ResponseStream, position: int) -> int:
        """Past the copy's bound: skip to the stream's final event (returns the position
        just before it), taking nothing else from the stream."""
        await stream.wait_finished()
        return max(position, len(stream) - 1)

    async def wait_requests(self) -> None:
        """Return once no request's work is running (later ones may start)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    def cancel_requests(self) -> None:
        """Stop every request's work (the session is closing); no new work starts."""
        self._closed = True
        for timer in self._grace.values():
            timer.cancel()
        self._grace.clear()
        for task in list(self._tasks):
            task.cancel()

    async def finish_copies(self) -> None:
        """Let the stream copies record their final events, within a bound."""
        if self._copies:
            _, late = await asyncio.wait(list(self._copies), timeout=FINAL_COPY_SECONDS)
            await self._cancel(late)

    async def stop_copies(self) -> None:
        """Stop every stream copy now (the session ended: nobody can resume it)."""
        self._stopping = True
        await self._cancel(set(self._copies))

    @staticmethod
    async def _cancel(tasks: set[asyncio.Task[None]]) -> None:
        """Cancel ``tasks`` and wait (bounded) until they have ended.

        Checked against redis-py 8.1 (tests/session/test_stream_copy.py): a copy whose
        pipeline is held in flight at Redis ends on one cancel, every time. The cancel is
        still repeated until the task is done, and the copy checks ``_stopping`` before
        every round trip, because a cancel can meet the copy where it is absorbed: inside
        our own per-call deadline scope as it expires (anyio then raises its timeout, a
        ``StoreError`` the copy would log and stop on, or not, depending on timing), or
        while redis-py awaits its own clean-up of the connection (pipeline reset,
        disconnect). Either way the task ends at its next round trip at the latest; one
        still running after ``STOP_COPY_SECONDS`` is logged.
        """
        deadline = time.monotonic() + STOP_COPY_SECONDS
        pending = {task for task in tasks if not task.done()}
        while pending and time.monotonic() < deadline:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.05)
        if pending:
            logger.warning("%d stream copies did not stop when cancelled", len(pending))


def _batch(events: list[tuple[int, Outbound]]) -> list[tuple[int, dict[str, Any], int]]:
    """The log records of the first of ``events`` (seq, record, bytes), at most
    ``COPY_BATCH_EVENTS`` and about ``COPY_BATCH_BYTES``, ending at the final one if
    there is one."""
    batch: list[tuple[int, dict[str, Any], int]] = []
    size = 0
    for seq, item in events[:COPY_BATCH_EVENTS]:
        record: dict[str, Any] = {"m": item.message, "final": item.final}
        if item.pause_ms is not None:
            record["pause"] = item.pause_ms
        batch.append((seq, record, len(item.data)))
        size += len(item.data)
        if item.final or size >= COPY_BATCH_BYTES:
            break
    return batch
