"""Which sessions may have expired, and the right to end each one's upstream sessions.

A session record that expires by TTL just disappears from the store: nothing tells any
replica, and the backend sessions it held stay open until each backend times them out
(if it ever does). To end them, a replica needs two things the store no longer has once
the record is gone: that the session existed, and its backend states (which backend
sessions to DELETE). The index keeps both, per session: an expiry *lower bound* (the
record's TTL only ever slides forward, so the record lives at least that long) and a
copy of the record as last written.

Ending is claimed: ``claim`` takes a session out of the index and returns its record to
exactly one caller, atomically (on Redis, one Lua script: ``ZREM`` decides, and the
record is read and removed in the same step). Whoever ends a session (a DELETE, a sweep
that found it expired, a replica that found it gone) claims it first and ends its
upstream sessions only if the claim was theirs, so each is ended exactly once, whichever
replicas race. ``claim_expired`` is the sweep: it looks only at entries past their
lower bound, re-scores those whose record is still there (it was used since) and claims
those whose record is gone. Clocks of different replicas need not agree: a claim is
made only once the record itself is gone, never on a score alone.

On Redis: a sorted set (session id → lower bound, epoch milliseconds) and a hash
(session id → record JSON) under ``<key_prefix>expiry:{index}`` and ``...:records``
(one hash tag: one Cluster slot, so the claim script may touch both).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from vmcp.store._redis_errors import once_more_if_dropped, translated_store_errors
from vmcp.store.base import validate_metadata, validate_timeout, validate_ttl
from vmcp.store.redis import RedisStore

__all__ = ["ExpiryIndex", "MemoryExpiryIndex", "RedisExpiryIndex"]


class ExpiryIndex(Protocol):
    """Sessions whose upstream sessions someone must end when they end; see the module."""

    async def track(self, session_id: str, record: Mapping[str, str]) -> None:
        """Note ``record`` as the session's latest, expiring no sooner than one TTL from
        now (call after every write of the record). Raises ``StoreError``."""
        ...

    async def claim(self, session_id: str) -> dict[str, str] | None:
        """Take the session out of the index: its last record if this call took it, None
        if it was not there (never tracked, or claimed already). Raises ``StoreError``."""
        ...

    async def claim_expired(self, limit: int) -> list[tuple[str, dict[str, str]]]:
        """Claim up to ``limit`` sessions whose record is gone (expired), with their last
        records; each is returned to exactly one caller. Raises ``StoreError``."""
        ...


class MemoryExpiryIndex:
    """The index beside the memory store (one process: no await between test and set).

    ``expires_at`` gives a held record's deadline on the store's clock (None once gone),
    without touching it."""

    def __init__(self, expires_at: Callable[[str], float | None], *, ttl_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._expires_at = expires_at
        self._ttl = validate_ttl(ttl_seconds)
        self._clock = clock
        self._entries: dict[str, tuple[float, dict[str, str]]] = {}

    async def track(self, session_id: str, record: Mapping[str, str]) -> None:
        self._entries[session_id] = (self._clock() + self._ttl, validate_metadata(record))

    async def claim(self, session_id: str) -> dict[str, str] | None:
        entry = self._entries.pop(session_id, None)
        return None if entry is None else entry[1]

    async def claim_expired(self, limit: int) -> list[tuple[str, dict[str, str]]]:
        now = self._clock()
        claimed: list[tuple[str, dict[str, str]]] = []
        for session_id, (bound, record) in list(self._entries.items()):
            if len(claimed) >= limit:
                break
            if bound > now:
                continue
            deadline = self._expires_at(session_id)
            if deadline is not None:
                self._entries[session_id] = (deadline, record)
            else:
                del self._entries[session_id]
                claimed.append((session_id, record))
        return claimed


# KEYS[1]: the sorted set; KEYS[2]: the hash of records. ARGV[1]: the session id.
# Returns the record's JSON if this call removed the id from the set, else false.
_CLAIM = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  local record = redis.call('HGET', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return record or '{}'
end
return false
"""


class RedisExpiryIndex:
    """The index in Redis, next to the session records (see the module)."""

    def __init__(self, store: RedisStore, *, key_prefix: str, ttl_seconds: float,
                 timeout_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._client = store.client
        self._index = f"{key_prefix}expiry:{{index}}"
        self._records = f"{key_prefix}expiry:{{index}}:records"
        self._ttl_ms = max(1, round(validate_ttl(ttl_seconds) * 1000))
        self._timeout = validate_timeout(timeout_seconds)
        self._clock = clock
        self._claim = self._client.register_script(_CLAIM)

    def _now_ms(self) -> int:
        return round(self._clock() * 1000)

    async def track(self, session_id: str, record: Mapping[str, str]) -> None:
        data = json.dumps(validate_metadata(record), separators=(",", ":"))

        async def attempt(retried: bool) -> Any:  # the same values again: safe to repeat
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.zadd(self._index, {session_id: self._now_ms() + self._ttl_ms})
                pipe.hset(self._records, session_id, data)
                return await pipe.execute()

        await self._call("expiry index", attempt)

    async def claim(self, session_id: str) -> dict[str, str] | None:
        async def attempt(retried: bool) -> Any:
            # A retry after a lost reply finds the id gone and claims nothing: that
            # session's upstream sessions are then left to their backends' own expiry,
            # the one way this errs (never toward ending them twice).
            return await self._claim(keys=[self._index, self._records], args=[session_id])

        raw = await self._call("expiry claim", attempt)
        if raw is None:
            return None
        try:
            return validate_metadata(json.loads(raw))
        except ValueError:
            return {}

    async def claim_expired(self, limit: int) -> list[tuple[str, dict[str, str]]]:
        now = self._now_ms()

        async def due(retried: bool) -> Any:
            return await self._client.zrangebyscore(self._index, "-inf", now, start=0,
                                                    num=limit)

        ids = [_text(member) for member in await self._call("expiry index", due)]
        if not ids:
            return []

        async def remaining(retried: bool) -> Any:
            async with self._client.pipeline(transaction=False) as pipe:
                for session_id in ids:
                    pipe.pttl(self._store.key(session_id))
                return await pipe.execute()

        claimed: list[tuple[str, dict[str, str]]] = []
        for session_id, pttl in zip(ids, await self._call("expiry index", remaining),
                                    strict=True):
            if int(pttl) == -2:  # the record is gone
                record = await self.claim(session_id)
                if record is not None:
                    claimed.append((session_id, record))
                continue
            bound = now + (int(pttl) if int(pttl) > 0 else self._ttl_ms)

            async def rescore(retried: bool, session_id: str = session_id,
                              bound: int = bound) -> Any:
                # XX: a session claimed meanwhile is not put back.
                return await self._client.zadd(self._index, {session_id: bound}, xx=True)

            await self._call("expiry index", rescore)
        return claimed

    async def _call(self, operation: str, attempt: Any) -> Any:
        with translated_store_errors(operation):
            async with asyncio.timeout(self._timeout):
                return await once_more_if_dropped(attempt)


def _text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member
