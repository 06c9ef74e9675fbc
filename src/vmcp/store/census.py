"""How many stored sessions each identity holds, across the whole deployment.

The store contract reads one record by id; an operator's "sessions per identity" needs
every record, so this reads them in bulk, off the request path: a ``SCAN`` of the
session keys and batched reads, bounded by ``limit`` records, for a status page that
asks every few seconds at most. Reads never slide a session's TTL (plain ``GET``, not
the store's ``GETEX``): counting sessions must not keep them alive.

Only counts leave this module, keyed by the value of one record field (the identity
binding); session ids are never returned.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from redis.asyncio.cluster import RedisCluster

from vmcp.store._redis_errors import translated_store_errors
from vmcp.store.memory import MemoryStore
from vmcp.store.redis import RedisStore

__all__ = ["Census", "MemoryCensus", "RedisCensus", "SessionCensus"]

SESSION_ID = re.compile(r"[0-9a-f]{32}")
"""The ids the gateway gives sessions (UUID4 hex): other keys under the prefix (event
logs, identity indexes, replica records) are not sessions."""

_BATCH = 500


@dataclass(frozen=True)
class Census:
    """Sessions per value of the counted field, over the first ``scanned`` records seen;
    ``complete`` is False when the ``limit`` stopped the count early."""

    counts: Mapping[str, int] = field(default_factory=dict)
    scanned: int = 0
    complete: bool = True


class SessionCensus(Protocol):
    async def count(self, limit: int) -> Census:
        """Count full session records by the value of their identity field, reading at
        most ``limit`` records. Raises ``StoreError`` if the store cannot answer."""
        ...


def _tally(records: Iterable[Mapping[str, str]], field_name: str) -> Counter[str]:
    return Counter(r[field_name] for r in records if field_name in r)


class MemoryCensus:
    def __init__(self, store: MemoryStore, *, field_name: str) -> None:
        self._store = store
        self._field = field_name

    async def count(self, limit: int) -> Census:
        records = [r for session_id, r in self._store.live_records()
                   if SESSION_ID.fullmatch(session_id)]
        seen = records[:limit]
        return Census(_tally(seen, self._field), len(seen), len(records) <= limit)


class RedisCensus:
    """``SCAN`` (every node of a Cluster) for keys shaped like session ids, then ``MGET``
    in batches (split by slot on a Cluster)."""

    def __init__(self, store: RedisStore, *, field_name: str, timeout_seconds: float) -> None:
        self._store = store
        self._field = field_name
        self._timeout = timeout_seconds

    async def count(self, limit: int) -> Census:
        client = self._store.client
        prefix = self._store.key("")
        keys: list[str] = []
        complete = True
        with translated_store_errors("session census"):
            async with asyncio.timeout(self._timeout * 5):
                async for raw_key in client.scan_iter(match=prefix + "?" * 32, count=1000,
                                                      _type="string"):
                    key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
                    if not SESSION_ID.fullmatch(key[len(prefix):]):
                        continue
                    if len(keys) == limit:
                        complete = False
                        break
                    keys.append(key)
                records: list[dict[str, str]] = []
                for start in range(0, len(keys), _BATCH):
                    batch = keys[start:start + _BATCH]
                    values = (await client.mget_nonatomic(batch)
                              if isinstance(client, RedisCluster) else await client.mget(batch))
                    records += (_record(v) for v in values if v is not None)
        return Census(_tally(records, self._field), len(keys), complete)


def _record(raw: bytes | str) -> dict[str, str]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
