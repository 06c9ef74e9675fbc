"""The cache never mistakes a stored value for "nothing cached".

A value that is None, falsy, or equal to everything is cached, checked, replaced and
released exactly like any other value: a cache that used such a value as its marker for
absence would reload it on every hit, forget to release it, or let a racing load win.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest

from vmcp.cache import ValidatingCache

pytestmark = pytest.mark.anyio


class EqualToEverything:
    """Equal to any object and falsy: the worst value a marker comparison can meet."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "EqualToEverything()"


TRICKY: list[object] = [None, 0, "", False, (), EqualToEverything()]
IDS = ["none", "zero", "empty-str", "false", "empty-tuple", "equal-to-everything"]


class Loaded:
    """What the harness loads when told to load something ordinary."""


class Harness:
    def __init__(self, value: object, capacity: int = 2) -> None:
        self.value = value
        self.loads = 0
        self.checks = 0
        self.alive = True
        self.released: list[object] = []
        self.released_keys: list[str] = []
        self.load_gate: asyncio.Event | None = None
        self.load_started = asyncio.Event()
        self.cache: ValidatingCache[str, object] = ValidatingCache(
            capacity=capacity, load=self.load, check=self.check, on_evict=self.on_evict)

    async def load(self, key: str) -> object:
        self.loads += 1
        self.load_started.set()
        if self.load_gate is not None:
            await self.load_gate.wait()
        return self.value

    async def check(self, key: str, value: object) -> bool:
        self.checks += 1
        return self.alive

    async def on_evict(self, key: str, value: object) -> None:
        self.released.append(value)
        self.released_keys.append(key)


def released_is(harness: Harness, *expected: object) -> bool:
    return len(harness.released) == len(expected) and all(
        got is want for got, want in zip(harness.released, expected, strict=True))


@pytest.mark.parametrize("value", TRICKY, ids=IDS)
async def test_a_loaded_value_is_cached_and_its_hits_are_checked_not_reloaded(
    value: object,
) -> None:
    h = Harness(value)
    assert await h.cache.get("k") is value
    assert "k" in h.cache
    for _ in range(3):
        assert await h.cache.get("k") is value
    assert (h.loads, h.checks) == (1, 3)
    stats = h.cache.statistics()
    assert (stats.misses, stats.hits, stats.size) == (1, 3, 1)


@pytest.mark.parametrize("value", TRICKY, ids=IDS)
async def test_an_expired_value_is_released_once_and_reloaded_in_the_same_call(
    value: object,
) -> None:
    h = Harness(value)
    await h.cache.get("k")
    h.alive = False
    assert await h.cache.get("k") is value
    await h.cache.wait_released()
    assert released_is(h, value)
    assert h.loads == 2
    assert h.cache.statistics().expirations == 1


@pytest.mark.parametrize("value", TRICKY, ids=IDS)
async def test_a_replaced_or_evicted_value_is_released(value: object) -> None:
    h = Harness(Loaded())
    h.cache.set("k", value)
    assert await h.cache.get("k") is value
    assert h.loads == 0
    newer = Loaded()
    h.cache.set("k", newer)
    await h.cache.wait_released()
    assert released_is(h, value)
    h.cache.set("k", value)
    assert h.cache.evict("k") is True
    assert h.cache.evict("k") is False
    await h.cache.wait_released()
    assert released_is(h, value, newer, value)
    assert h.released_keys == ["k", "k", "k"]
    assert h.cache.statistics().removals == 1


@pytest.mark.parametrize("value", TRICKY, ids=IDS)
async def test_a_value_pushed_out_by_capacity_is_released(value: object) -> None:
    h = Harness(Loaded(), capacity=1)
    h.cache.set("old", value)
    h.cache.set("new", Loaded())
    await h.cache.wait_released()
    assert released_is(h, value)
    assert h.released_keys == ["old"]
    assert "old" not in h.cache
    assert h.cache.statistics().evictions == 1


@pytest.mark.parametrize("value", TRICKY, ids=IDS)
async def test_a_value_set_during_a_load_wins_over_the_load(value: object) -> None:
    loaded = Loaded()
    h = Harness(loaded)
    h.load_gate = asyncio.Event()
    getting = asyncio.create_task(h.cache.get("k"))
    await h.load_started.wait()
    h.cache.set("k", value)
    h.load_gate.set()
    with anyio.fail_after(5):
        assert await getting is value
    await h.cache.wait_released()
    assert released_is(h, loaded)
    assert await h.cache.get("k") is value
    assert h.loads == 1
