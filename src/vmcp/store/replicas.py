"""Which replicas make up the deployment: each announces itself with a heartbeat.

Behind a round-robin load balancer an operator's browser reaches a random replica, so a
replica's page must show the others too. Each replica writes a small JSON record about
itself (version, start time, live sessions, backends' health, recent activity) every
few seconds, with an expiry a few beats long. A replica whose record expired stopped
beating: it is listed as gone, from when it was last seen, until ``forget_seconds``
after that beat, and then dropped.

Expiry is decided by the store's own clock (a Redis key TTL), never by comparing the
clocks of two replicas, so clock skew cannot make a live replica look gone.

On Redis, the records and their index share one hash tag (``{replicas}``): every key
this module names lives in one Redis Cluster slot, so the ``MGET`` that reads them all
works on Cluster as on a single server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from vmcp.store._redis_errors import translated_store_errors
from vmcp.store.base import validate_timeout, validate_ttl

__all__ = [
    "MemoryReplicaRegistry",
    "RedisReplicaRegistry",
    "ReplicaEntry",
    "ReplicaRegistry",
    "index_key",
    "record_key",
]

Clock = Callable[[], float]


@dataclass(frozen=True)
class ReplicaEntry:
    """One replica as the registry knows it.

    ``record`` is what the replica last announced (as JSON gives it back), or None once it
    is gone: its heartbeat lapsed, or it withdrew when it stopped. ``last_beat`` is the
    wall-clock time of its latest announcement, as the replica itself reported it.
    """

    replica_id: str
    last_beat: float
    record: dict[str, Any] | None

    @property
    def up(self) -> bool:
        return self.record is not None


class ReplicaRegistry(Protocol):
    """Every replica's latest heartbeat, shared through the store.

    ``expiry_seconds`` (set at construction) is how long an announcement keeps a replica
    up; ``forget_seconds`` how long a replica stays listed as gone after its last one.
    Errors: ``StoreTimeout`` / ``StoreUnavailable`` when the store cannot answer; a record
    that is not JSON-serialisable raises ``TypeError`` before any I/O.
    """

    async def announce(self, replica_id: str, record: Mapping[str, Any]) -> None:
        """Publish ``record`` as ``replica_id``'s state: it is up for ``expiry_seconds``
        from now, and listed (up or gone) for ``forget_seconds``."""
        ...

    async def withdraw(self, replica_id: str) -> None:
        """``replica_id`` is stopping: it is listed as gone from now on (until forgotten)."""
        ...

    async def replicas(self) -> list[ReplicaEntry]:
        """Every replica not yet forgotten, by id; forgotten ones are dropped here."""
        ...


@dataclass(frozen=True)
class _Timing:
    expiry: float
    forget: float

    @classmethod
    def of(cls, expiry_seconds: float, forget_seconds: float) -> _Timing:
        expiry, forget = validate_ttl(expiry_seconds), validate_ttl(forget_seconds)
        if forget < expiry:
            raise ValueError(f"forget_seconds ({forget:g}) must be at least expiry_seconds "
                             f"({expiry:g}): a replica is listed while it is up")
        return cls(expiry, forget)


def _encode(record: Mapping[str, Any]) -> str:
    return json.dumps(dict(record), separators=(",", ":"), allow_nan=False)


def _decode(raw: bytes | str | None) -> dict[str, Any] | None:
    """A record, or None for a missing or unreadable one (shown as gone, never a crash)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


class MemoryReplicaRegistry:
    """The registry of a single process (the embedded store): it lists only itself, but
    behaves like the shared one, so the page and its tests are the same."""

    def __init__(self, *, expiry_seconds: float, forget_seconds: float,
                 clock: Clock = time.monotonic, wall_clock: Clock = time.time) -> None:
        self._timing = _Timing.of(expiry_seconds, forget_seconds)
        self._clock = clock
        self._wall = wall_clock
        # id -> (JSON text or None once withdrawn, up until, forget at, last beat (wall))
        self._entries: dict[str, tuple[str | None, float, float, float]] = {}

    async def announce(self, replica_id: str, record: Mapping[str, Any]) -> None:
        text = _encode(record)
        now = self._clock()
        self._entries[replica_id] = (text, now + self._timing.expiry,
                                     now + self._timing.forget, self._wall())

    async def withdraw(self, replica_id: str) -> None:
        entry = self._entries.get(replica_id)
        if entry is not None:
            self._entries[replica_id] = (None, entry[1], entry[2], entry[3])

    async def replicas(self) -> list[ReplicaEntry]:
        now = self._clock()
        for replica_id in [r for r, e in self._entries.items() if e[2] <= now]:
            del self._entries[replica_id]
        return [ReplicaEntry(replica_id, last_beat,
                             _decode(text) if text is not None and up_until > now else None)
                for replica_id, (text, up_until, _, last_beat) in sorted(self._entries.items())]


def index_key(key_prefix: str) -> str:
    """The hash of every listed replica's last beat (wall-clock seconds)."""
    return f"{key_prefix}{{replicas}}:index"


def record_key(key_prefix: str, replica_id: str) -> str:
    """One replica's latest record; the key expires when its heartbeat lapses."""
    return f"{key_prefix}{{replicas}}:beat:{replica_id}"


class RedisReplicaRegistry:
    """The registry on Redis: a string per replica with a TTL of ``expiry_seconds`` (its
    record), and one hash listing the replicas with their last beat, which outlives the
    records so gone replicas stay visible; the hash itself expires ``forget_seconds``
    after the latest beat of any replica. An announcement is one pipelined round trip
    (``SET PX``, ``HSET``, ``PEXPIRE``); a listing is two (``HGETALL``, ``MGET``)."""

    def __init__(self, client: aioredis.Redis | RedisCluster, *, key_prefix: str,
                 expiry_seconds: float, forget_seconds: float, timeout_seconds: float,
                 wall_clock: Clock = time.time) -> None:
        self._client = client
        self._prefix = key_prefix
        self._timing = _Timing.of(expiry_seconds, forget_seconds)
        self._timeout = validate_timeout(timeout_seconds)
        self._wall = wall_clock

    async def announce(self, replica_id: str, record: Mapping[str, Any]) -> None:
        text = _encode(record)
        index = index_key(self._prefix)
        with translated_store_errors("replica heartbeat"):
            async with asyncio.timeout(self._timeout):
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.set(record_key(self._prefix, replica_id), text,
                             px=max(1, round(self._timing.expiry * 1000)))
                    pipe.hset(index, replica_id, repr(self._wall()))
                    pipe.pexpire(index, max(1, round(self._timing.forget * 1000)))
                    await pipe.execute()

    async def withdraw(self, replica_id: str) -> None:
        with translated_store_errors("replica withdrawal"):
            async with asyncio.timeout(self._timeout):
                await self._client.delete(record_key(self._prefix, replica_id))

    async def replicas(self) -> list[ReplicaEntry]:
        index = index_key(self._prefix)
        with translated_store_errors("replica listing"):
            async with asyncio.timeout(self._timeout):
                listed = await self._client.hgetall(index)
                beats = {_text(k): _beat(v) for k, v in listed.items()}
                forgotten = [r for r, beat in beats.items()
                             if beat + self._timing.forget <= self._wall()]
                if forgotten:
                    await self._client.hdel(index, *forgotten)
                ids = sorted(set(beats) - set(forgotten))
                raw = (await self._client.mget([record_key(self._prefix, r) for r in ids])
                       if ids else [])
        return [ReplicaEntry(r, beats[r], _decode(value))
                for r, value in zip(ids, raw, strict=True)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _beat(value: bytes | str) -> float:
    try:
        return float(_text(value))
    except ValueError:
        return 0.0  # unreadable: forgotten at the next listing
