"""Every store test runs against each implementation: the contract is the same."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.redis_ha import STORE_FIXTURES, STORE_KINDS, StoreServer
from vmcp.store import MemoryStore, RedisStore, SessionStore


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class StoreUnderTest:
    """A store plus a way to make time pass for it, whichever kind it is."""

    def __init__(
        self,
        store: SessionStore,
        kind: str,
        clock: ManualClock | None,
        redis: StoreServer | None,
        prefix: str,
    ) -> None:
        self.store = store
        self.kind = kind
        self._clock = clock
        self._redis = redis
        self._prefix = prefix

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass for every record: the clock for memory, PTTL for Redis."""
        if self._clock is not None:
            self._clock.now += seconds
            return
        assert isinstance(self.store, RedisStore)
        client = self.store.client
        async for key in client.scan_iter(match=self._prefix + "*"):
            remaining_ms = await client.pttl(key)
            if remaining_ms < 0:
                continue
            left = remaining_ms - round(seconds * 1000)
            if left <= 0:
                await client.delete(key)
            else:
                await client.pexpire(key, left)

    async def remaining_ttl(self, session_id: str) -> float:
        if isinstance(self.store, MemoryStore):
            return self.store._records[session_id][1] - self.store._clock()
        assert isinstance(self.store, RedisStore)
        return float(await self.store.client.pttl(self.store.key(session_id))) / 1000


TTL = 60.0


@pytest.fixture(params=["memory", *STORE_KINDS])
async def subject(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[StoreUnderTest]:
    """The contract on each implementation: memory, and Redis standalone, Sentinel and
    Cluster (the same ``RedisStore`` on three kinds of client)."""
    if request.param == "memory":
        clock = ManualClock()
        async with MemoryStore(ttl_seconds=TTL, clock=clock) as memory:
            yield StoreUnderTest(memory, "memory", clock, None, key_prefix)
        return
    server: StoreServer = request.getfixturevalue(STORE_FIXTURES[request.param])
    store = RedisStore.from_url(
        server.url, key_prefix=key_prefix, ttl_seconds=TTL, timeout_seconds=2.0
    )
    yield StoreUnderTest(store, "redis", None, server, key_prefix)
    await store.aclose()
