"""The expiry index contract, on each store: a session's end is claimed exactly once, and
a sweep claims only sessions whose record is gone."""

from __future__ import annotations

import time

import anyio
import pytest

from tests.store.conftest import TTL, StoreUnderTest
from vmcp.store import MemoryStore, RedisStore
from vmcp.store.expiry_index import ExpiryIndex, MemoryExpiryIndex, RedisExpiryIndex

pytestmark = pytest.mark.anyio

RECORD = {"identity": "unauthenticated", "backends": "a", "backend:a": '{"sid":"u1"}'}


class Clock:
    """Wall-clock seconds moved on with the store's own time (see ``advance``)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def index_for(subject: StoreUnderTest, key_prefix: str, clock: Clock) -> ExpiryIndex:
    store = subject.store
    if isinstance(store, MemoryStore):
        return MemoryExpiryIndex(store.expires_at, ttl_seconds=TTL, clock=store._clock)
    assert isinstance(store, RedisStore)
    return RedisExpiryIndex(store, key_prefix=key_prefix, ttl_seconds=TTL,
                            timeout_seconds=2.0, clock=clock)


async def advance(subject: StoreUnderTest, clock: Clock, seconds: float) -> None:
    clock.offset += seconds
    await subject.advance(seconds)


async def test_concurrent_claims_of_one_session_give_its_record_to_exactly_one(
        subject: StoreUnderTest, key_prefix: str) -> None:
    index = index_for(subject, key_prefix, Clock())
    await index.track("s1", RECORD)
    results: list[dict[str, str] | None] = []

    async def claim() -> None:
        results.append(await index.claim("s1"))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(claim)
    assert [r for r in results if r is not None] == [RECORD]
    assert await index.claim("never-tracked") is None


async def test_a_sweep_claims_expired_sessions_once_and_leaves_used_ones(
        subject: StoreUnderTest, key_prefix: str) -> None:
    clock = Clock()
    index = index_for(subject, key_prefix, clock)
    # Another replica's sweep (the memory store serves one process: one index).
    rival = index if subject.kind == "memory" else index_for(subject, key_prefix, clock)
    for session_id in ("kept", "gone"):
        assert await subject.store.create(session_id, RECORD)
        await index.track(session_id, RECORD)
    assert await index.claim_expired(10) == []  # nothing is due yet

    await advance(subject, clock, TTL / 2)
    await subject.store.load("kept")  # used: its record now outlives the index's bound
    await advance(subject, clock, TTL / 2 + 1)

    claimed: list[tuple[str, dict[str, str]]] = []

    async def sweep(by: ExpiryIndex) -> None:
        claimed.extend(await by.claim_expired(10))

    async with anyio.create_task_group() as tg:
        tg.start_soon(sweep, index)
        tg.start_soon(sweep, rival)
    assert claimed == [("gone", RECORD)]

    await advance(subject, clock, TTL)  # now "kept" expires too
    assert await rival.claim_expired(10) == [("kept", RECORD)]
    assert await index.claim_expired(10) == []
