"""What only the memory store has: the background sweep."""

from __future__ import annotations

import anyio
import pytest

from tests.store.conftest import ManualClock
from vmcp.errors import SessionNotFound
from vmcp.store import MemoryStore

pytestmark = pytest.mark.anyio


async def test_expired_records_are_invisible_at_once_and_swept_later() -> None:
    clock = ManualClock()
    async with MemoryStore(ttl_seconds=10, clock=clock) as store:
        await store.create("old", {})
        await store.create("young", {})
        clock.now += 6
        await store.load("young")
        clock.now += 5
        assert len(store) == 2
        with pytest.raises(SessionNotFound):
            await store.load("old")
        assert store.sweep_expired() == 0 or len(store) == 1
        clock.now += 20
        assert store.sweep_expired() == 1
        assert len(store) == 0


async def test_sweeper_task_stops_on_close() -> None:
    store = MemoryStore(ttl_seconds=1, sweep_interval_seconds=0.01)
    async with store:
        assert store._sweeper is not None
    assert store._sweeper is None
    await store.aclose()


def test_invalid_sweep_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        MemoryStore(ttl_seconds=1, sweep_interval_seconds=0)


async def test_entering_the_store_starts_a_sweep_that_drops_expired_records() -> None:
    clock = ManualClock()
    store = MemoryStore(ttl_seconds=10, sweep_interval_seconds=0.01, clock=clock)
    await store.create("old", {})
    clock.now += 11
    assert len(store) == 1                   # nothing sweeps before the store is entered
    async with store:
        sweeper = store._sweeper
        assert await store.__aenter__() is store      # entering again keeps the one sweep
        assert store._sweeper is sweeper
        with anyio.fail_after(5):
            while len(store) > 0:  # noqa: ASYNC110 - the sweep runs on its own schedule
                await anyio.sleep(0.01)


async def test_a_record_is_gone_at_its_deadline_exactly() -> None:
    clock = ManualClock()
    store = MemoryStore(ttl_seconds=10, clock=clock)
    await store.create("s", {})
    clock.now += 10
    assert store.exists("s") is False
    await store.create("t", {})
    clock.now += 10
    assert store.sweep_expired() == 1        # "t", expiring this very instant
    assert len(store) == 0
