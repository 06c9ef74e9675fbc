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
``<key_prefix>identities:{<sha256 of the binding>}``, or a dict in memory.

Admission is a reservation, decided in one atomic step: count the identity's members
and add the new id only if the count is below the cap. On Redis that step is one Lua
script on the one index key (a script runs alone on the server), so two ``initialize``
requests racing on two replicas can never both take the last slot. The key's hash tag
(the braces) keeps every key the script may ever name for one identity in one Cluster
slot.

A member counts while its session record exists. The script cannot look at session
records (they live in other Cluster slots), so a refusal comes back with the members
that were counted; the caller checks which of them still have a record (``EXISTS``,
which unlike the store's ``load`` does not slide the session's TTL) and asks again with
the dead ones to drop. A record never comes back once gone (ids are random and created
set-if-absent), so dropping a member seen dead is always right, and ended or expired
sessions stop counting whether or not anyone removed them. A session that ends releases
its slot at once (``remove``: DELETE, or a creation that failed).

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
from typing import Any, Protocol

from vmcp.store._redis_errors import once_more_if_dropped, translated_store_errors
from vmcp.store.base import validate_timeout, validate_ttl
from vmcp.store.redis import RedisStore

__all__ = ["IdentityIndex", "MemoryIdentityIndex", "RedisIdentityIndex", "index_key"]

# Rounds of "reserve, else drop the dead members seen and try again". Each round only
# meets members added since the previous one (just admitted, so alive): two suffice in
# practice; the third bounds the work if sessions end while we ask.
ADMIT_ROUNDS = 3


class IdentityIndex(Protocol):
    """The sessions of each identity (its binding), for a per-identity cap."""

    async def admit(self, binding: str, session_id: str, limit: int) -> bool:
        """Reserve a slot for ``session_id`` among ``binding``'s sessions: True if fewer
        than ``limit`` of the identity's sessions are live (it is then recorded) or it
        holds a slot already; else False with nothing recorded. Atomic across replicas.

        ``session_id``'s record (its placeholder) must exist already: only sessions with
        a record count. Raises ``StoreError`` if the index cannot answer.
        """
        ...

    async def remove(self, binding: str, session_id: str) -> None:
        """Release ``session_id``'s slot (it ended, or its creation failed); absent ids
        are fine."""
        ...


def index_key(key_prefix: str, binding: str) -> str:
    """Where ``binding``'s sessions are listed; hashed, so no identity appears in a key,
    and hash-tagged, so that the identity's keys share one Redis Cluster slot."""
    return f"{key_prefix}identities:{{{hashlib.sha256(binding.encode()).hexdigest()}}}"


class MemoryIdentityIndex:
    """The index for the embedded store: one process, so a dict; ``admit`` never awaits
    between counting and recording, which makes it atomic on the event loop.

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
        self._sweep(now)
        members = self._members.get(binding, {})
        for member in [m for m in members if not self._exists(m)]:
            del members[member]
        if session_id not in members and len(members) >= limit:
            if not members:
                self._forget(binding)
            return False
        members[session_id] = now
        self._members[binding] = members
        self._expires[binding] = now + self._ttl
        return True

    async def remove(self, binding: str, session_id: str) -> None:
        members = self._members.get(binding)
        if members is not None:
            members.pop(session_id, None)
            if not members:
                self._forget(binding)

    def _forget(self, binding: str) -> None:
        self._members.pop(binding, None)
        self._expires.pop(binding, None)

    def _sweep(self, now: float) -> None:
        for binding in [b for b, deadline in self._expires.items() if deadline < now]:
            self._forget(binding)


# KEYS[1]: the identity's sorted set. ARGV: session id, limit, score, TTL (ms), then the
# members found dead since the last round. Returns {1} if the id holds a slot, else {0}
# followed by the members counted (for the caller to check).
_RESERVE = """
for i = 5, #ARGV do redis.call('ZREM', KEYS[1], ARGV[i]) end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {1}
end
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
if #members < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {1}
end
table.insert(members, 1, 0)
return members
"""


class RedisIdentityIndex:
    """The index in Redis: one sorted set per identity, next to the session records.

    One round trip per admission below the cap (the reservation script); at the cap,
    one more per round to check which counted members still have a record. Scores are
    wall-clock seconds of admission, kept for operators reading the set; nothing ranks
    by them, so clock skew between replicas cannot let a late request in.
    """

    def __init__(self, store: RedisStore, *, key_prefix: str, ttl_seconds: float,
                 timeout_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._prefix = key_prefix
        self._ttl_ms = max(1, round(validate_ttl(ttl_seconds) * 1000))
        self._timeout = validate_timeout(timeout_seconds)
        self._clock = clock
        self._reserve = store.client.register_script(_RESERVE)

    async def admit(self, binding: str, session_id: str, limit: int) -> bool:
        key = index_key(self._prefix, binding)

        async def attempt(retried: bool) -> bool:
            # Safe to repeat: a reservation that landed is found again (it holds a slot).
            dead: list[str] = []
            for _ in range(ADMIT_ROUNDS):
                reply = await self._reserve(
                    keys=[key], args=[session_id, limit, self._clock(), self._ttl_ms, *dead])
                if int(reply[0]) == 1:
                    return True
                dead = await self._dead([_text(member) for member in reply[1:]])
                if not dead:
                    return False
            return False

        with translated_store_errors("identity index"):
            async with asyncio.timeout(self._timeout):
                return await once_more_if_dropped(attempt)

    async def _dead(self, members: list[str]) -> list[str]:
        """Those of ``members`` whose session record is gone."""
        if not members:
            return []
        async with self._store.client.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.exists(self._store.key(member))
            found = await pipe.execute()
        return [member for member, held in zip(members, found, strict=True) if not held]

    async def remove(self, binding: str, session_id: str) -> None:
        key = index_key(self._prefix, binding)

        async def attempt(retried: bool) -> Any:
            return await self._store.client.zrem(key, session_id)

        with translated_store_errors("identity index"):
            async with asyncio.timeout(self._timeout):
                await once_more_if_dropped(attempt)


def _text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member
