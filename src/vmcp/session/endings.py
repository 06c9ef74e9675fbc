"""Ending a session's upstream sessions exactly once, whichever replica sees the end.

A session ends by DELETE on one replica, by expiry (whichever replica's sweep gets to it),
or never (a replica stopping is not the end of its sessions). Its upstream sessions must
be ended once: not by every replica that held a copy, and not by none. The replica that
*claims* the end (``vmcp.store.expiry_index``; always this one without an index) ends
them; copies elsewhere are closed without ending them, when the end is announced on the
bus or found at their next liveness check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

from vmcp.errors import StoreError
from vmcp.session.live import LiveSession, SessionFactory
from vmcp.store.expiry_index import ExpiryIndex
from vmcp.store.pubsub import EndedSessionBus

logger = logging.getLogger(__name__)


class UpstreamEndings:
    """Who ends which session's upstream sessions, on this replica."""

    def __init__(self, factory: SessionFactory, ended: EndedSessionBus | None,
                 expiry: ExpiryIndex | None) -> None:
        self._factory = factory
        self._ended = ended
        self._expiry = expiry
        self._claimed: set[str] = set()  # claimed here, not yet ended

    @property
    def shared(self) -> bool:
        """Whether other replicas can carry a session on (a bus connects them)."""
        return self._ended is not None

    def hold(self, session_id: str) -> None:
        """Note a claim won for ``session_id``, for the close of its copy to act on."""
        self._claimed.add(session_id)

    def release(self, session_id: str) -> None:
        self._claimed.discard(session_id)

    def holds(self, session_id: str) -> bool:
        return session_id in self._claimed

    async def claim(self, session_id: str) -> bool:
        """Whether this replica ends ``session_id``'s upstream sessions. A store that
        cannot answer leaves the claim to a later sweep."""
        if self._expiry is None:
            return True
        try:
            return await self._expiry.claim(session_id) is not None
        except StoreError as exc:
            logger.warning("could not claim the end of a session: %s", exc,
                           extra={"session_id": session_id})
            return False

    async def take(self, session_id: str) -> bool:
        """For a copy closing because its session ended: whether it ends the upstream
        sessions (a claim held here, or won now). Clears the hold."""
        end = session_id in self._claimed or await self.claim(session_id)
        self._claimed.discard(session_id)
        return end

    async def end_upstream(self, session_id: str, states: dict[str, str]) -> None:
        """End the upstream sessions recorded in ``states`` (no copy holds them here)."""
        if not states:
            return
        try:
            await self._factory.end(session_id, sorted(states), states)
        except Exception:
            logger.warning("could not end the upstream sessions of an ended session",
                           extra={"session_id": session_id}, exc_info=True)

    async def follow(self, evict: Callable[[str], bool]) -> None:
        """``evict`` this replica's copy of every session announced ended elsewhere, until
        cancelled. Without a bus there is nothing to follow."""
        if self._ended is None:
            return
        async for session_id in self._ended.subscribe():
            # The replica that claimed the end ends the upstream sessions; this copy's
            # close finds the claim taken and only closes its connections.
            if evict(session_id):
                logger.info("closed a session ended elsewhere", extra={"session_id": session_id})

    async def announce(self, session_id: str) -> None:
        """Tell the other replicas to drop their copies."""
        if self._ended is None:
            return
        try:
            await self._ended.publish(session_id)
        except StoreError as exc:
            # The others still find out at their next request for it (liveness check).
            logger.warning("could not announce ended session: %s", exc,
                           extra={"session_id": session_id})


async def let_calls_finish(live: LiveSession, closing: anyio.Event, limit: float) -> None:
    """Wait until the calls running on an outdated copy finish, at most ``limit`` seconds
    and no longer than until the replica closes."""
    with anyio.move_on_after(limit):
        async with anyio.create_task_group() as tg:
            async def calls_done() -> None:
                await live.wait_calls()
                tg.cancel_scope.cancel()

            async def shutting_down() -> None:
                await closing.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(calls_done)
            tg.start_soon(shutting_down)
