"""The replica registry contract, against the memory registry and a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.crc import key_slot

from tests.store.conftest import ManualClock
from tests.support.redis_server import RedisServer
from vmcp.errors import StoreUnavailable
from vmcp.store import RedisStore
from vmcp.store.replicas import (
    MemoryReplicaRegistry,
    RedisReplicaRegistry,
    ReplicaRegistry,
    index_key,
    record_key,
)

pytestmark = pytest.mark.anyio

EXPIRY = 15.0
FORGET = 300.0


class RegistryUnderTest:
    """A registry plus ways to make its time pass, whichever kind it is."""

    def __init__(self, registry: ReplicaRegistry, wall: ManualClock,
                 clock: ManualClock | None, store: RedisStore | None, prefix: str) -> None:
        self.registry = registry
        self.wall = wall
        self._clock = clock
        self._store = store
        self._prefix = prefix

    async def lapse(self, replica_id: str) -> None:
        """Let ``replica_id``'s heartbeat expire (the store's clock decides on Redis)."""
        if self._clock is not None:
            self._clock.now += EXPIRY
            return
        assert self._store is not None
        # What the key's TTL does when it runs out (its length is checked on its own).
        await self._store.client.delete(record_key(self._prefix, replica_id))

    def pass_time(self, seconds: float) -> None:
        self.wall.now += seconds
        if self._clock is not None:
            self._clock.now += seconds


@pytest.fixture(params=["memory", "redis"])
async def subject(request: pytest.FixtureRequest,
                  key_prefix: str) -> AsyncIterator[RegistryUnderTest]:
    wall = ManualClock()
    if request.param == "memory":
        clock = ManualClock()
        yield RegistryUnderTest(
            MemoryReplicaRegistry(expiry_seconds=EXPIRY, forget_seconds=FORGET, clock=clock,
                                  wall_clock=wall), wall, clock, None, key_prefix)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    store, registry = on_redis(server.url, key_prefix, timeout=2.0, wall=wall)
    yield RegistryUnderTest(registry, wall, None, store, key_prefix)
    await store.aclose()


def on_redis(url: str, prefix: str, *, timeout: float,
             wall: ManualClock | None = None) -> tuple[RedisStore, RedisReplicaRegistry]:
    store = RedisStore.from_url(url, key_prefix=prefix, ttl_seconds=60, timeout_seconds=timeout)
    registry = RedisReplicaRegistry(store.client, key_prefix=prefix, expiry_seconds=EXPIRY,
                                    forget_seconds=FORGET, timeout_seconds=timeout,
                                    **({"wall_clock": wall} if wall is not None else {}))
    return store, registry


def record(n: int) -> dict[str, Any]:
    return {"version": "1.0", "live_sessions": n, "backends": {"notes": "healthy"},
            "samples": [{"t": 1.5, "requests": n}]}


async def test_every_announced_replica_is_listed_with_its_latest_record(
        subject: RegistryUnderTest) -> None:
    await subject.registry.announce("b", record(1))
    await subject.registry.announce("a", record(2))
    subject.pass_time(1)
    await subject.registry.announce("b", record(3))
    listed = await subject.registry.replicas()
    assert [e.replica_id for e in listed] == ["a", "b"]
    assert [e.record for e in listed] == [record(2), record(3)]
    assert all(e.up for e in listed)
    assert listed[1].last_beat == listed[0].last_beat + 1


async def test_a_replica_whose_heartbeat_lapsed_is_listed_as_gone(
        subject: RegistryUnderTest) -> None:
    await subject.registry.announce("a", record(1))
    await subject.registry.announce("b", record(2))
    await subject.lapse("b")
    await subject.registry.announce("a", record(3))
    listed = {e.replica_id: e for e in await subject.registry.replicas()}
    assert listed["a"].up
    assert listed["a"].record == record(3)
    assert not listed["b"].up
    assert listed["b"].record is None


async def test_a_gone_replica_comes_back_when_it_beats_again(subject: RegistryUnderTest) -> None:
    await subject.registry.announce("a", record(1))
    await subject.lapse("a")
    assert not (await subject.registry.replicas())[0].up
    await subject.registry.announce("a", record(2))
    assert (await subject.registry.replicas())[0].record == record(2)


async def test_a_withdrawn_replica_is_gone_at_once_but_still_listed(
        subject: RegistryUnderTest) -> None:
    await subject.registry.announce("a", record(1))
    await subject.registry.withdraw("a")
    await subject.registry.withdraw("never-announced")
    listed = await subject.registry.replicas()
    assert [(e.replica_id, e.up) for e in listed] == [("a", False)]


async def test_gone_replicas_are_dropped_after_the_forget_window(
        subject: RegistryUnderTest) -> None:
    await subject.registry.announce("old", record(1))
    await subject.lapse("old")
    subject.pass_time(FORGET - EXPIRY - 1)
    await subject.registry.announce("new", record(2))
    assert [e.replica_id for e in await subject.registry.replicas()] == ["new", "old"]
    subject.pass_time(EXPIRY + 2)
    await subject.registry.announce("new", record(3))
    assert [e.replica_id for e in await subject.registry.replicas()] == ["new"]


async def test_a_record_that_is_not_json_is_refused_before_any_write(
        subject: RegistryUnderTest) -> None:
    with pytest.raises(TypeError):
        await subject.registry.announce("a", {"when": object()})
    with pytest.raises(ValueError, match="JSON"):
        await subject.registry.announce("a", {"rate": float("nan")})
    assert await subject.registry.replicas() == []


def test_forget_window_shorter_than_the_expiry_is_refused() -> None:
    with pytest.raises(ValueError, match="forget_seconds"):
        MemoryReplicaRegistry(expiry_seconds=10, forget_seconds=5)


async def test_redis_records_expire_on_the_servers_clock_and_share_one_slot(
        redis_server: RedisServer, key_prefix: str) -> None:
    store, registry = on_redis(redis_server.url, key_prefix, timeout=2.0)
    try:
        await registry.announce("r1", record(1))
        client = store.client
        assert 0 < await client.pttl(record_key(key_prefix, "r1")) <= EXPIRY * 1000
        assert EXPIRY * 1000 < await client.pttl(index_key(key_prefix)) <= FORGET * 1000
        # The slot a Cluster would put each key in (redis-py's own CRC16 of the hash tag).
        slots = {key_slot(key.encode()) for key in
                 (index_key(key_prefix), record_key(key_prefix, "r1"),
                  record_key(key_prefix, "another-replica"))}
        assert len(slots) == 1
    finally:
        await store.aclose()


async def test_an_unreadable_record_is_shown_as_gone(redis_server: RedisServer,
                                                     key_prefix: str) -> None:
    store, registry = on_redis(redis_server.url, key_prefix, timeout=2.0)
    try:
        await registry.announce("r1", record(1))
        await store.client.set(record_key(key_prefix, "r1"), b"\xff not json")
        assert [(e.replica_id, e.up) for e in await registry.replicas()] == [("r1", False)]
    finally:
        await store.aclose()


async def test_a_store_that_cannot_answer_raises_a_store_error() -> None:
    store, registry = on_redis("redis://127.0.0.1:1/0", "x:", timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable):
            await registry.announce("r1", record(1))
        with pytest.raises(StoreUnavailable):
            await registry.replicas()
    finally:
        await store.aclose()
