"""The embedded store: one process's dict, with the same semantics as Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Mapping
from typing import Self

from vmcp.errors import SessionNotFound
from vmcp.store.base import (
    ClosedOnExit,
    Merged,
    expectations_hold,
    merged_fields,
    validate_metadata,
    validate_session_id,
    validate_ttl,
)

Clock = Callable[[], float]


class MemoryStore(ClosedOnExit):
    """``SessionStore`` in memory: the default for a single replica, and for unit tests.

    Expired records are invisible at once (every read checks the deadline) and are
    removed by a background sweep so that abandoned sessions do not grow the dict
    forever. The sweep runs while the store is entered as an async context manager.
    Values are copied in and out so that no caller can mutate a stored record.
    """

    def __init__(
        self,
        *,
        ttl_seconds: float,
        sweep_interval_seconds: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._ttl = validate_ttl(ttl_seconds)
        self._sweep_interval = validate_ttl(sweep_interval_seconds)
        self._clock = clock
        self._records: dict[str, tuple[dict[str, str], float]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="vmcp-store-sweep")
        return self

    def _live(self, session_id: str) -> dict[str, str] | None:
        record = self._records.get(session_id)
        if record is None:
            return None
        if record[1] <= self._clock():
            del self._records[session_id]
            return None
        return record[0]

    def _put(self, session_id: str, metadata: dict[str, str]) -> None:
        self._records[session_id] = (metadata, self._clock() + self._ttl)

    async def create(self, session_id: str, metadata: Mapping[str, str]) -> bool:
        validate_session_id(session_id)
        copy = validate_metadata(metadata)
        if self._live(session_id) is not None:
            return False
        self._put(session_id, copy)
        return True

    async def update(self, session_id: str, metadata: Mapping[str, str]) -> bool:
        validate_session_id(session_id)
        copy = validate_metadata(metadata)
        if self._live(session_id) is None:
            return False
        self._put(session_id, copy)
        return True

    async def merge(self, session_id: str, fields: Mapping[str, str], *,
                    remove: Collection[str] = (),
                    expect: Mapping[str, str | None] | None = None) -> Merged:
        validate_session_id(session_id)
        changes = validate_metadata(fields)
        record = self._live(session_id)
        if record is None:
            return Merged(applied=False, record=None)
        if not expectations_hold(record, expect):
            return Merged(applied=False, record=dict(record))
        written = merged_fields(record, changes, remove)
        self._put(session_id, written)
        return Merged(applied=True, record=dict(written))

    async def load(self, session_id: str) -> dict[str, str]:
        validate_session_id(session_id)
        metadata = self._live(session_id)
        if metadata is None:
            raise SessionNotFound(session_id)
        self._put(session_id, metadata)
        return dict(metadata)

    async def delete(self, session_id: str) -> None:
        validate_session_id(session_id)
        self._records.pop(session_id, None)

    def exists(self, session_id: str) -> bool:
        """Whether a live record is held, without restarting its TTL window (a count of
        sessions must not keep them alive)."""
        return self._live(session_id) is not None

    def expires_at(self, session_id: str) -> float | None:
        """When a held record expires (on the store's clock), without restarting its TTL
        window; None if none is held."""
        record = self._records.get(session_id)
        if record is None or record[1] <= self._clock():
            return None
        return record[1]

    def live_records(self) -> list[tuple[str, dict[str, str]]]:
        """Every live record with its id, without restarting TTL windows (for counts of
        sessions); the dicts are the store's own: read them, never change them."""
        now = self._clock()
        return [(session_id, metadata) for session_id, (metadata, deadline)
                in self._records.items() if deadline > now]

    async def ping(self) -> None:
        return None

    def sweep_expired(self) -> int:
        """Drop every expired record now; returns how many were dropped."""
        now = self._clock()
        expired = [sid for sid, (_, deadline) in self._records.items() if deadline <= now]
        for session_id in expired:
            del self._records[session_id]
        return len(expired)

    def __len__(self) -> int:
        """Records held, expired or not (the sweep's backlog shows here)."""
        return len(self._records)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            self.sweep_expired()

    async def aclose(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
