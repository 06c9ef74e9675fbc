"""A session that expires in the memory store has its upstream sessions ended once, by
the sweep, whether or not this replica still holds a copy of it; DELETE and the sweep
never both end one."""

from __future__ import annotations

import pytest

from tests.session.conftest import FakeLiveSession, RecordingFactory
from tests.store.conftest import ManualClock
from vmcp.identity import ANONYMOUS
from vmcp.session import SessionManager
from vmcp.session.expiry import TrackedStore, sweep_once
from vmcp.store import MemoryStore
from vmcp.store.expiry_index import MemoryExpiryIndex

pytestmark = pytest.mark.anyio

TTL = 60.0


def parts(factory: RecordingFactory, capacity: int = 10
          ) -> tuple[SessionManager, MemoryExpiryIndex, ManualClock]:
    clock = ManualClock()
    store = MemoryStore(ttl_seconds=TTL, clock=clock)
    index = MemoryExpiryIndex(store.expires_at, ttl_seconds=TTL, clock=clock)
    manager = SessionManager(TrackedStore(store, index), factory, expiry=index,
                             cache_capacity=capacity)
    return manager, index, clock


@pytest.mark.parametrize("copy_held", [True, False])
async def test_an_expired_session_is_ended_upstream_once_by_the_sweep(copy_held: bool) -> None:
    factory = RecordingFactory()
    manager, index, clock = parts(factory, capacity=1)
    live = await manager.initialize(ANONYMOUS)
    assert isinstance(live, FakeLiveSession)
    if not copy_held:
        other = await manager.initialize(ANONYMOUS)  # drops the first copy (capacity 1)
        await manager.wait_closed()
        assert live.ended_upstream == [False], "dropping a copy ends nothing upstream"
        assert await manager.terminate(other.session_id, ANONYMOUS)
    assert await sweep_once(index, manager.end_expired) == 0  # not expired yet

    clock.now += TTL + 1
    assert await sweep_once(index, manager.end_expired) == 1
    await manager.wait_closed()
    assert await sweep_once(index, manager.end_expired) == 0
    ended_by_copy = live.ended_upstream.count(True)
    ended_from_record = [e for e in factory.ended if e[0] == live.session_id]
    assert ended_by_copy + len(ended_from_record) == 1
    await manager.aclose()


async def test_a_deleted_session_is_not_ended_again_by_the_sweep() -> None:
    factory = RecordingFactory()
    manager, index, clock = parts(factory)
    live = await manager.initialize(ANONYMOUS)
    assert isinstance(live, FakeLiveSession)
    assert await manager.terminate(live.session_id, ANONYMOUS)
    await manager.wait_closed()
    clock.now += TTL + 1
    assert await sweep_once(index, manager.end_expired) == 0
    assert live.ended_upstream == [True]
    assert factory.ended == []
    await manager.aclose()
