"""Which live sessions each identity holds, across replicas: for
``limits.max_sessions_per_identity``.

Why an index beside the store rather than a count of this replica's cached sessions:
behind a round-robin balancer an identity's ``initialize`` requests land on every
replica, and a replica caches only the sessions it happens to serve. A per-replica count
would let an identity hold the cap on every replica, and would not even see the sessions
created on the others, so the limit would mean nothing. The store contract (create,
update, load, delete of one record) cannot answer "how many records belong to X"
without scanning every key, so the index keeps, per identity, the ids of its sessions:
a Redis sorted set (score: when the session was admitted) under
``<key_prefix>identities:<sha256 of the binding>``, or a dict in memory.

The index only proposes; the store decides. A member counts while its session record
exists - checked with ``EXISTS``, which, unlike the store's ``load``, does not slide the
session's TTL - so ended and expired sessions never count, whether or not anyone removed
them from the index, and they are pruned when next seen.

Admission is ordered: the new id is added first, then the identity's live members are
ranked by (admission time, id), and the new session is admitted only if it ranks within
the cap (otherwise it is removed again). Two ``initialize`` requests racing on two
replicas see the same order, so exactly the cap is admitted and neither is refused while
a slot is free.

The index key expires one session TTL after the identity's latest admission: it is
garbage collection for identities that stop coming. A session kept alive by use for
longer than that since its identity last initialized then drops out of the count, so
the limit errs toward admitting, never toward refusing an identity below its cap.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Protocol

from vmcp.store._redis_errors import translated_store_errors
from vmcp.store.base import validate_timeout, validate_ttl
from vmcp.store.redis import RedisStore

__all__ = ["IdentityIndex", "MemoryIdentityIndex", "RedisIdentityIndex", "index_key"]


class IdentityIndex(Protocol):
    """The sessions of each identity (its binding), for a per-identity cap."""

    async def admit(self, binding: str, session_id: str, limit: int) -> bool:
        """Record ``session_id`` as ``binding``'s; True if it is among the first ``limit``
        of the identity's live sessions, else False with nothing recorded.

        ``session_id``'s record (its placeholder) must exist already: only sessions with
        a record count. Raises ``StoreError`` if the index cannot answer.
        """
        ...

    async def remove(self, binding: str, session_id: str) -> None:
        """Forget ``session_id`` (its creation failed); absent ids are fine."""
        ...


def index_key(key_prefix: str, binding: str) -> str:
    """Where ``binding``'s sessions are listed; hashed, so no identity appears in a key."""
    return f"{key_prefix}identities:{hashlib.sha256(binding.encode()).hexdigest()}"


def _within(ranked: list[tuple[float, str]], session_id: str, limit: int) -> bool:
    """Whether ``session_id`` is among the first ``limit`` of ``ranked`` once sorted."""
    ranked.sort()
    return any(member == session_id for _, member in ranked[:limit])


class MemoryIdentityIndex:
    """The index for the embedded store: one process, so a dict.

    ``exists`` tells whether a session record is held, without touching its TTL
    (``MemoryStore.exists``).
    """

    def __init__(self, exists: Callable[[str], bool], *, ttl_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._exists = exists
        self._ttl = validate_ttl(ttl_seconds)
        self._clock = clock
        self._members: dict[str, dict[str, float]] = {}
        self._expires: dict[str, float] = {}

    async def admit(self, binding: str, session_id: str, limit: int) -> bool:
        now = self._clock()
        if self._expires.get(binding, now) < now:
            self._members.pop(binding, None)
        self._sweep(now)
        members = self._members.setdefault(binding, {})
        members[session_id] = now
        self._expires[binding] = now + self._ttl
        for member in [m for m in members if m != session_id and not self._exists(m)]:
            del members[member]
        if _within([(at, member) for member, at in members.items()], session_id, limit):
            return True
        await self.remove(binding, session_id)
        return False

    async def remove(self, binding: str, session_id: str) -> None:
        members = self._members.get(binding)
        if members is not None:
            members.pop(session_id, None)
            if not members:
                del self._members[binding]
                self._expires.pop(binding, None)

    def _sweep(self, now: float) -> None:
        for binding in [b for b, deadline in self._expires.items() if deadline < now]:
            self._members.pop(binding, None)
            del self._expires[binding]


class RedisIdentityIndex:
    """The index in Redis: one sorted set per identity, next to the session records.

    Three round trips per admission: add and read the set, check which members still
    have a record, then prune the dead (and the refused). Member scores are wall-clock
    seconds, so that every replica ranks the same way.
    """

    def __init__(self, store: RedisStore, *, key_prefix: str, ttl_seconds: float,
                 timeout_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._prefix = key_prefix
        self._ttl_ms = max(1, round(validate_ttl(ttl_seconds) * 1000))
        self._timeout = validate_timeout(timeout_seconds)
        self._clock = clock

    async def admit(self, binding: str, session_id: str, limit: int) -> bool:
        key = index_key(self._prefix, binding)
        client = self._store.client
        with translated_store_errors("identity index"):
            async with asyncio.timeout(self._timeout):
                async with client.pipeline(transaction=False) as pipe:
                    pipe.zadd(key, {session_id: self._clock()})
                    pipe.pexpire(key, self._ttl_ms)
                    pipe.zrange(key, 0, -1, withscores=True)
                    *_, listed = await pipe.execute()
                members = [(float(score), _text(member)) for member, score in listed]
                others = [member for _, member in members if member != session_id]
                async with client.pipeline(transaction=False) as pipe:
                    for member in others:
                        pipe.exists(self._store.key(member))
                    found = await pipe.execute() if others else []
                dead = {member for member, held in zip(others, found, strict=True) if not held}
                live = [(score, member) for score, member in members if member not in dead]
                admitted = _within(live, session_id, limit)
                gone = [*dead, *([] if admitted else [session_id])]
                if gone:
                    await client.zrem(key, *gone)
        return admitted

    async def remove(self, binding: str, session_id: str) -> None:
        with translated_store_errors("identity index"):
            async with asyncio.timeout(self._timeout):
                await self._store.client.zrem(index_key(self._prefix, binding), session_id)


def _text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member
