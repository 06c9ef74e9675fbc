"""``limits.max_sessions_per_identity``: the identity index and the manager's refusal.

Every test runs on both stores (memory, and a real Redis). Replicas are simulated by
managers sharing one store and one index, each with its own cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.session.conftest import ALICE, ALICE_REFRESHED, MALLORY, RecordingFactory
from tests.support.redis_server import RedisServer
from vmcp.errors import BackendUnavailable, TooManySessions
from vmcp.identity import binding_for
from vmcp.session import SessionManager
from vmcp.session import metadata as md
from vmcp.store import MemoryStore, RedisStore, SessionStore
from vmcp.store.identity_index import (
    IdentityIndex,
    MemoryIdentityIndex,
    RedisIdentityIndex,
    index_key,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def index(store: SessionStore, key_prefix: str) -> IdentityIndex:
    if isinstance(store, MemoryStore):
        return MemoryIdentityIndex(store.exists, ttl_seconds=60)
    assert isinstance(store, RedisStore)
    return RedisIdentityIndex(store, key_prefix=key_prefix, ttl_seconds=60,
                              timeout_seconds=2.0)


@pytest.fixture
async def capped(store: SessionStore, factory: RecordingFactory, index: IdentityIndex
                 ) -> AsyncIterator[SessionManager]:
    manager = SessionManager(store, factory, cache_capacity=10, identities=index,
                             max_sessions_per_identity=2)
    yield manager
    await manager.aclose()


async def test_the_identity_at_its_cap_is_refused_and_others_are_not(
        capped: SessionManager, store: SessionStore, factory: RecordingFactory) -> None:
    first = await capped.initialize(ALICE)
    await capped.initialize(ALICE_REFRESHED)  # a new token, the same identity

    with pytest.raises(TooManySessions) as refused:
        await capped.initialize(ALICE)

    assert refused.value.http_status == 429
    assert "at most 2 live sessions per identity" in str(refused.value)
    assert len(factory.opened) == 2  # no backend was contacted for the refused one
    await capped.initialize(MALLORY)
    await capped.terminate(first.session_id, ALICE)
    again = await capped.initialize(ALICE)  # a slot is free again
    assert md.is_full_session(await store.load(again.session_id))


async def test_expired_and_ended_sessions_stop_counting_without_being_removed(
        store: SessionStore, factory: RecordingFactory, index: IdentityIndex) -> None:
    manager = SessionManager(store, factory, identities=index, max_sessions_per_identity=1)
    try:
        live = await manager.initialize(ALICE)
        await store.delete(live.session_id)  # as if it expired: the index was not told

        replacement = await manager.initialize(ALICE)

        assert replacement.session_id != live.session_id
    finally:
        await manager.aclose()


async def test_racing_initializes_admit_exactly_the_cap(
        store: SessionStore, factory: RecordingFactory, index: IdentityIndex) -> None:
    replicas = [SessionManager(store, factory, identities=index, max_sessions_per_identity=3)
                for _ in range(4)]
    try:
        outcomes = await asyncio.gather(
            *(replica.initialize(ALICE) for replica in replicas for _ in range(3)),
            return_exceptions=True)
    finally:
        for replica in replicas:
            await replica.aclose()

    refused = [o for o in outcomes if isinstance(o, TooManySessions)]
    admitted = [o for o in outcomes if not isinstance(o, BaseException)]
    assert (len(admitted), len(refused)) == (3, 9), outcomes


async def test_a_failed_creation_frees_its_slot(
        capped: SessionManager, factory: RecordingFactory) -> None:
    factory.open_error = BackendUnavailable("alpha", "down")
    with pytest.raises(BackendUnavailable):
        await capped.initialize(ALICE)
    with pytest.raises(BackendUnavailable):
        await capped.initialize(ALICE)
    factory.open_error = None

    await capped.initialize(ALICE)
    await capped.initialize(ALICE)


async def test_the_limit_off_by_default(store: SessionStore, factory: RecordingFactory,
                                        index: IdentityIndex) -> None:
    manager = SessionManager(store, factory, identities=index)
    try:
        for _ in range(5):
            await manager.initialize(ALICE)
    finally:
        await manager.aclose()
    assert len(factory.opened) == 5


async def members(index: IdentityIndex, binding: str) -> set[str]:
    """The ids holding a slot, read from the index itself (not through ``admit``, which
    drops members without a record and so would hide a slot never released)."""
    if isinstance(index, MemoryIdentityIndex):
        return set(index._members.get(binding, {}))
    assert isinstance(index, RedisIdentityIndex)
    listed = await index._store.client.zrange(index_key(index._prefix, binding), 0, -1)
    return {m.decode() for m in listed}


# -- the index's own contract, on both stores --------------------------------------

async def test_admit_reserves_below_the_cap_and_records_nothing_at_it(
        store: SessionStore, index: IdentityIndex) -> None:
    alice = binding_for(ALICE)
    for session_id in ("s1", "s2", "s3"):
        assert await store.create(session_id, {})

    assert [await index.admit(alice, s, 2) for s in ("s1", "s2", "s3")] == [True, True, False]
    assert await members(index, alice) == {"s1", "s2"}
    assert await index.admit(alice, "s2", 2)  # a slot held already is kept, not refused
    assert await index.admit(binding_for(MALLORY), "s3", 2)  # another identity's count


async def test_admit_drops_members_without_a_record(
        store: SessionStore, index: IdentityIndex) -> None:
    alice = binding_for(ALICE)
    for session_id in ("s1", "s2", "s3"):
        assert await store.create(session_id, {})
    assert await index.admit(alice, "s1", 2)
    assert await index.admit(alice, "s2", 2)
    await store.delete("s1")  # expired, or deleted without telling the index

    assert await index.admit(alice, "s3", 2)
    assert await members(index, alice) == {"s2", "s3"}


async def test_remove_releases_a_slot_whose_record_still_exists(
        store: SessionStore, index: IdentityIndex) -> None:
    alice = binding_for(ALICE)
    for session_id in ("s1", "s2"):
        assert await store.create(session_id, {})
    assert await index.admit(alice, "s1", 1)

    await index.remove(alice, "s1")  # a failed creation: its placeholder stays
    await index.remove(alice, "never-admitted")

    assert await members(index, alice) == set()
    assert await index.admit(alice, "s2", 1)


async def test_concurrent_admits_reserve_exactly_the_cap(
        store: SessionStore, index: IdentityIndex) -> None:
    alice = binding_for(ALICE)
    ids = [f"s{i}" for i in range(12)]
    for session_id in ids:
        assert await store.create(session_id, {})

    admitted = await asyncio.gather(*(index.admit(alice, s, 3) for s in ids))

    assert admitted.count(True) == 3
    assert await members(index, alice) == {s for s, ok in zip(ids, admitted, strict=True) if ok}


# -- the manager's use of it ----------------------------------------------------------

async def test_delete_releases_the_slot_at_once(
        capped: SessionManager, index: IdentityIndex) -> None:
    first = await capped.initialize(ALICE)
    second = await capped.initialize(ALICE)

    await capped.terminate(first.session_id, ALICE)

    assert await members(index, binding_for(ALICE)) == {second.session_id}


async def test_a_failed_creation_releases_its_slot_at_once(
        capped: SessionManager, factory: RecordingFactory, index: IdentityIndex) -> None:
    factory.open_error = BackendUnavailable("alpha", "down")
    with pytest.raises(BackendUnavailable):
        await capped.initialize(ALICE)

    # Its placeholder is still stored (marked terminated): only the release frees it.
    assert await members(index, binding_for(ALICE)) == set()


@pytest.mark.redis
async def test_replicas_whose_clocks_disagree_still_admit_exactly_the_cap(
        redis_server: RedisServer, key_prefix: str, factory: RecordingFactory) -> None:
    """Replicas on different machines read different wall clocks; a late request from
    a replica whose clock is behind must not take a slot already given out."""
    store = RedisStore.from_url(redis_server.url, key_prefix=key_prefix, ttl_seconds=60,
                                timeout_seconds=2.0)
    clocks = (lambda: 1_000_000.0, lambda: 999_990.0)
    replicas = [SessionManager(store, factory, max_sessions_per_identity=3,
                               identities=RedisIdentityIndex(
                                   store, key_prefix=key_prefix, ttl_seconds=60,
                                   timeout_seconds=2.0, clock=clock))
                for clock in clocks]
    try:
        ahead, behind = replicas
        for _ in range(3):
            await ahead.initialize(ALICE)
        with pytest.raises(TooManySessions):
            await behind.initialize(ALICE)
        outcomes = await asyncio.gather(
            *(replica.initialize(ALICE) for replica in replicas for _ in range(4)),
            return_exceptions=True)
    finally:
        for replica in replicas:
            await replica.aclose()
        await store.aclose()
    assert all(isinstance(o, TooManySessions) for o in outcomes), outcomes
    assert len(factory.opened) == 3


@pytest.mark.redis
async def test_the_redis_index_names_no_identity_and_expires(
        redis_server: RedisServer, key_prefix: str) -> None:
    store = RedisStore.from_url(redis_server.url, key_prefix=key_prefix, ttl_seconds=60,
                                timeout_seconds=2.0)
    try:
        index = RedisIdentityIndex(store, key_prefix=key_prefix, ttl_seconds=60,
                                   timeout_seconds=2.0)
        assert await store.create("s1", {})
        assert await index.admit(binding_for(ALICE), "s1", 1)

        keys = [key.decode() for key in await store.client.keys(f"{key_prefix}identities:*")]
        assert keys == [index_key(key_prefix, binding_for(ALICE))]
        assert "alice" not in keys[0]
        assert 0 < await store.client.pttl(keys[0]) <= 60_000
    finally:
        await store.aclose()
