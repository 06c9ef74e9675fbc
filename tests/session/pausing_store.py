"""A store wrapper that stops a chosen write at its start, after the caller's load.

Every later write of the session manager is "load, compute, write with set-if-present"
(a whole-record ``update`` or a ``merge`` of some fields).
Holding the write lets a test put a terminate (or an expiry) exactly between the load and
the write, the interleaving where an upsert would bring an ended session back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from vmcp.store import SessionStore
from vmcp.store.base import Merged


@dataclass
class HeldWrite:
    """``reached`` is set when the held write starts; it goes on once ``release`` is set."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


class PausingStore:
    """Delegates everything to ``inner``; ``hold_next_update(id)`` holds that id's next
    ``update`` or ``merge`` before it reaches the store."""

    def __init__(self, inner: SessionStore) -> None:
        self.inner = inner
        self._held: dict[str, HeldWrite] = {}

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def hold_next_update(self, session_id: str) -> HeldWrite:
        held = self._held[session_id] = HeldWrite()
        return held

    async def _wait_if_held(self, session_id: str) -> None:
        held = self._held.pop(session_id, None)
        if held is not None:
            held.reached.set()
            await held.release.wait()

    async def update(self, session_id: str, metadata: Mapping[str, str]) -> bool:
        await self._wait_if_held(session_id)
        return await self.inner.update(session_id, metadata)

    async def merge(self, session_id: str, fields: Mapping[str, str], *,
                    remove: Collection[str] = (),
                    expect: Mapping[str, str | None] | None = None) -> Merged:
        await self._wait_if_held(session_id)
        return await self.inner.merge(session_id, fields, remove=remove, expect=expect)
