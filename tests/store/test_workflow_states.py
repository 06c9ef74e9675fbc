"""The store of waiting composite runs, on memory and on a real Redis: create only if
absent, take once, gone after the TTL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tests.store.conftest import ManualClock
from tests.support.redis_server import RedisServer
from vmcp.store import RedisStore
from vmcp.store.workflow_states import (
    MemoryWorkflowStates,
    RedisWorkflowStates,
    WorkflowStates,
)

pytestmark = pytest.mark.anyio


class Subject:
    def __init__(self, states: WorkflowStates, clock: ManualClock | None,
                 store: RedisStore | None, prefix: str) -> None:
        self.states, self._clock, self._store, self._prefix = states, clock, store, prefix

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass: the clock for memory, the keys' PTTL for Redis."""
        if self._clock is not None:
            self._clock.now += seconds
            return
        assert self._store is not None
        client = self._store.client
        async for key in client.scan_iter(match=self._prefix + "*"):
            left = await client.pttl(key) - round(seconds * 1000)
            if left <= 0:
                await client.delete(key)
            else:
                await client.pexpire(key, left)


@pytest.fixture(params=["memory", "redis"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    if request.param == "memory":
        clock = ManualClock()
        yield Subject(MemoryWorkflowStates(clock=clock), clock, None, "")
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"wfs:{uuid.uuid4().hex[:8]}:"
    store = RedisStore.from_url(server.url, key_prefix=prefix, ttl_seconds=60,
                                timeout_seconds=2.0)
    yield Subject(RedisWorkflowStates(store.client, prefix, timeout_seconds=2.0), None,
                  store, prefix)
    await store.aclose()


async def test_a_record_is_created_once_and_taken_once(subject: Subject) -> None:
    assert await subject.states.create("wf:a", {"step": "ask"}, 30)
    assert not await subject.states.create("wf:a", {"step": "other"}, 30)
    assert await subject.states.take("wf:a") == {"step": "ask"}
    assert await subject.states.take("wf:a") is None


async def test_a_record_nobody_takes_is_gone_after_its_ttl(subject: Subject) -> None:
    assert await subject.states.create("wf:b", {"step": "ask"}, 30)
    await subject.advance(29)
    await subject.states.create("wf:c", {"step": "kept"}, 30)
    await subject.advance(2)
    assert await subject.states.take("wf:b") is None
    assert await subject.states.take("wf:c") == {"step": "kept"}


async def test_a_ttl_that_is_not_positive_is_refused(subject: Subject) -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        await subject.states.create("wf:d", {}, 0)
