"""Sessions per identity across the store, on the memory store and a real redis-server."""

from __future__ import annotations

import uuid

import pytest

from tests.store.conftest import TTL, StoreUnderTest
from vmcp.store import MemoryStore, RedisStore
from vmcp.store.census import MemoryCensus, RedisCensus, SessionCensus

pytestmark = pytest.mark.anyio


def census_of(subject: StoreUnderTest) -> SessionCensus:
    if isinstance(subject.store, MemoryStore):
        return MemoryCensus(subject.store, field_name="identity")
    assert isinstance(subject.store, RedisStore)
    return RedisCensus(subject.store, field_name="identity", timeout_seconds=2.0)


async def add(subject: StoreUnderTest, identity: str | None) -> str:
    session_id = uuid.uuid4().hex
    await subject.store.create(session_id, {} if identity is None else
                               {"identity": identity, "backends": "a"})
    return session_id


async def test_counts_every_stored_session_by_identity(subject: StoreUnderTest) -> None:
    for identity in ["ci\x00bot", "ci\x00bot", "ci\x00bot", "unauthenticated", None]:
        await add(subject, identity)
    census = await census_of(subject).count(limit=100)
    assert dict(census.counts) == {"ci\x00bot": 3, "unauthenticated": 1}
    assert census.scanned == 5
    assert census.complete


async def test_ended_and_expired_sessions_are_not_counted_and_ttls_do_not_slide(
        subject: StoreUnderTest) -> None:
    ended = await add(subject, "ci\x00bot")
    kept = await add(subject, "ci\x00bot")
    await subject.store.delete(ended)
    await subject.advance(TTL / 2)
    before = await subject.remaining_ttl(kept)
    census = await census_of(subject).count(limit=100)
    assert dict(census.counts) == {"ci\x00bot": 1}
    assert await subject.remaining_ttl(kept) <= before
    await subject.advance(TTL)
    assert dict((await census_of(subject).count(limit=100)).counts) == {}


async def test_the_limit_bounds_the_records_read(subject: StoreUnderTest) -> None:
    for _ in range(7):
        await add(subject, "ci\x00bot")
    census = await census_of(subject).count(limit=5)
    assert census.scanned == 5
    assert not census.complete
    assert sum(census.counts.values()) == 5


async def test_keys_that_are_not_sessions_are_left_out(subject: StoreUnderTest) -> None:
    await add(subject, "ci\x00bot")
    await subject.store.create("not-a-gateway-id", {"identity": "x\x00y", "backends": "a"})
    assert dict((await census_of(subject).count(limit=100)).counts) == {"ci\x00bot": 1}
