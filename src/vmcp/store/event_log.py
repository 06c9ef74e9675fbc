"""Response-stream events kept in Redis Streams, so any replica can resume a stream.

A client whose response stream was interrupted (the gateway paused it, or the connection
dropped) reconnects with ``Last-Event-ID`` through the load balancer, possibly to another
replica. The replica running the call copies that stream's events into a Redis stream
(bounded length, expiring); the replica the client reaches reads them from there.
Streams that finish on their first connection never touch Redis.

Key: ``prefix + session_id + ":" + stream_id``. Entry ids are ``0-<seq>`` (the event's
own sequence number), so "after event n" is simply ``XREAD`` from ``0-n``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import anyio
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from vmcp.store._redis_errors import once_more_if_dropped, translated_store_errors
from vmcp.store.base import validate_session_id

BLOCK_MS = 1000


class EventLog(Protocol):
    """Where interrupted response streams wait for their client to come back."""

    async def append(self, session_id: str, stream_id: str,
                     events: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """Record events ``(seq, event)`` (seq 1, 2, ...) of a stream, in order, in one
        round trip; raises ``StoreError`` (some of them may have landed)."""
        ...

    async def exists(self, session_id: str, stream_id: str) -> bool: ...

    async def last_seq(self, session_id: str, stream_id: str) -> int:
        """The sequence number of the stream's last recorded event (0 if none)."""
        ...

    def read(self, session_id: str, stream_id: str, after: int) -> AsyncIterator[
            tuple[int, dict[str, Any]]]:
        """Events after ``after``, waiting for new ones, until the stream's record is
        gone (it expires ``ttl_seconds`` after its last event: the replica running the
        call stopped without an end); the caller stops at the final event."""
        ...


class RedisEventLog:
    """``EventLog`` on Redis Streams (``XADD`` with ``MAXLEN``, ``XREAD BLOCK``)."""

    def __init__(self, client: aioredis.Redis | RedisCluster, prefix: str, *,
                 ttl_seconds: float, max_events: int, timeout_seconds: float) -> None:
        self._client = client
        self._prefix = prefix
        self._ttl_ms = max(1, round(ttl_seconds * 1000))
        self._max_events = max_events
        self._timeout = timeout_seconds

    def _key(self, session_id: str, stream_id: str) -> str:
        return f"{self._prefix}{validate_session_id(session_id)}:{stream_id}"

    async def append(self, session_id: str, stream_id: str,
                     events: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """One pipeline: an ``XADD`` per event, then one ``PEXPIRE`` (a batch of events
        costs one round trip, not one per event)."""
        if not events:
            return
        key = self._key(session_id, stream_id)
        with translated_store_errors("xadd"), anyio.fail_after(self._timeout):
            async with self._client.pipeline(transaction=False) as pipe:
                for seq, event in events:
                    pipe.xadd(key, {"e": json.dumps(event, separators=(",", ":"))},
                              id=f"0-{seq}", maxlen=self._max_events, approximate=True)
                pipe.pexpire(key, self._ttl_ms)
                await pipe.execute()

    async def exists(self, session_id: str, stream_id: str) -> bool:
        key = self._key(session_id, stream_id)

        async def attempt(retried: bool) -> bool:
            return bool(await self._client.exists(key))

        with translated_store_errors("exists"), anyio.fail_after(self._timeout):
            return await once_more_if_dropped(attempt)

    async def last_seq(self, session_id: str, stream_id: str) -> int:
        key = self._key(session_id, stream_id)

        async def attempt(retried: bool) -> Any:  # a read: safe to repeat
            return await self._client.xrevrange(key, "+", "-", count=1)

        with translated_store_errors("xrevrange"), anyio.fail_after(self._timeout):
            entries = await once_more_if_dropped(attempt)
        if not entries:
            return 0
        entry_id = entries[0][0]
        text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        return int(text.split("-", 1)[1])

    async def read(self, session_id: str, stream_id: str, after: int) -> AsyncIterator[
            tuple[int, dict[str, Any]]]:
        key = self._key(session_id, stream_id)
        last = f"0-{after}"

        async def next_batch(retried: bool) -> Any:  # a read: safe to repeat
            return await self._client.xread({key: last}, block=BLOCK_MS, count=100)

        async def still_there(retried: bool) -> bool:
            return bool(await self._client.exists(key))

        while True:
            with translated_store_errors("xread"), \
                    anyio.fail_after(self._timeout + BLOCK_MS / 1000):
                batches: Any = await once_more_if_dropped(next_batch)
            if not batches:
                # Nothing new: a stream whose writer is gone must not be followed forever.
                with translated_store_errors("exists"), anyio.fail_after(self._timeout):
                    if not await once_more_if_dropped(still_there):
                        return
            for _, entries in batches or []:
                for entry_id, fields in entries:
                    last = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                    raw = fields.get(b"e") or fields.get("e")
                    yield int(last.split("-", 1)[1]), json.loads(raw)
