"""Sessions that end by expiry: their records are tracked, and a sweep ends them.

``TrackedStore`` notes every full session record it writes in the ``ExpiryIndex`` (see
``vmcp.store.expiry_index``), so the index always holds the backend states that the
last write stored. ``sweep_expired`` is the lifespan task that claims sessions whose
records expired and hands each to the session manager to end, on whichever replica
claims it first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping

import anyio

from vmcp.errors import StoreError
from vmcp.session import metadata as md
from vmcp.store.base import Merged, SessionStore
from vmcp.store.expiry_index import ExpiryIndex

logger = logging.getLogger(__name__)

SWEEP_BATCH = 100
"""Sessions claimed per round trip of a sweep; a sweep takes rounds until none is due."""


class TrackedStore:
    """A ``SessionStore`` that keeps the expiry index in step with full session records.

    The index is written after the record: a failure there fails the call (the record
    may be written, as with any store error), so a session the index does not know can
    only come from a write its caller saw fail."""

    def __init__(self, store: SessionStore, index: ExpiryIndex) -> None:
        self._store = store
        self.index = index

    async def create(self, session_id: str, metadata: Mapping[str, str]) -> bool:
        return await self._store.create(session_id, metadata)

    async def update(self, session_id: str, metadata: Mapping[str, str]) -> bool:
        updated = await self._store.update(session_id, metadata)
        if updated and md.is_full_session(metadata):
            await self.index.track(session_id, metadata)
        return updated

    async def merge(self, session_id: str, fields: Mapping[str, str], *,
                    remove: Collection[str] = (),
                    expect: Mapping[str, str | None] | None = None) -> Merged:
        merged = await self._store.merge(session_id, fields, remove=remove, expect=expect)
        if merged.applied and merged.record is not None and md.is_full_session(merged.record):
            await self.index.track(session_id, merged.record)
        return merged

    async def load(self, session_id: str) -> dict[str, str]:
        return await self._store.load(session_id)

    async def delete(self, session_id: str) -> None:
        await self._store.delete(session_id)

    async def ping(self) -> None:
        await self._store.ping()

    async def aclose(self) -> None:
        await self._store.aclose()


EndExpired = Callable[[str, dict[str, str]], Awaitable[None]]


async def sweep_expired(index: ExpiryIndex, end: EndExpired, *,
                        interval_seconds: float) -> None:
    """Every ``interval_seconds``, claim the sessions whose records expired and ``end``
    each (its upstream sessions, its copy here). Runs until cancelled; a store that
    cannot answer is tried again at the next interval."""
    while True:
        await anyio.sleep(interval_seconds)
        await sweep_once(index, end)


async def sweep_once(index: ExpiryIndex, end: EndExpired) -> int:
    """One sweep; returns how many sessions it ended."""
    ended = 0
    while True:
        try:
            claimed = await index.claim_expired(SWEEP_BATCH)
        except StoreError as exc:
            logger.warning("expiry sweep: the store did not answer: %s", exc)
            return ended
        for session_id, record in claimed:
            await end(session_id, record)
            ended += 1
        if len(claimed) < SWEEP_BATCH:
            return ended
