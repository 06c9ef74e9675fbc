"""ValidatingCache (B7-B15): LRU, checked hits, single flights, and its three races."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import anyio
import pytest

from vmcp.cache import CacheStatistics, EvictedWhileLoading, ValidatingCache

pytestmark = pytest.mark.anyio


class Value:
    def __init__(self, key: str, generation: int) -> None:
        self.key = key
        self.generation = generation


class Harness:
    """Load/check/evict callbacks that record calls and can be held at a gate."""

    def __init__(self, capacity: int = 3) -> None:
        self.loads: list[str] = []
        self.checks: list[str] = []
        self.evicted: list[Value] = []
        self.evicted_keys: list[str] = []
        self.alive: dict[str, bool] = {}
        self.load_error: Exception | None = None
        self.check_error: Exception | None = None
        self.load_gate: asyncio.Event | None = None
        self.check_gate: asyncio.Event | None = None
        self.load_started = asyncio.Event()
        self.check_started = asyncio.Event()
        self.evict_event = asyncio.Event()
        self.cache: ValidatingCache[str, Value] = ValidatingCache(
            capacity=capacity, load=self.load, check=self.check, on_evict=self.on_evict
        )

    async def load(self, key: str) -> Value:
        self.loads.append(key)
        self.load_started.set()
        if self.load_gate is not None:
            await self.load_gate.wait()
        if self.load_error is not None:
            raise self.load_error
        return Value(key, len(self.loads))

    async def check(self, key: str, value: Value) -> bool:
        self.checks.append(key)
        self.check_started.set()
        if self.check_gate is not None:
            await self.check_gate.wait()
        if self.check_error is not None:
            raise self.check_error
        return self.alive.get(key, True)

    async def on_evict(self, key: str, value: Value) -> None:
        self.evicted.append(value)
        self.evicted_keys.append(key)
        self.evict_event.set()


async def noop_load(key: str) -> Value:
    return Value(key, 0)


async def noop_check(key: str, value: Value) -> bool:
    return True


@pytest.mark.parametrize("capacity", [0, -1, 1.5])
def test_b7_capacity_below_one_is_rejected(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        ValidatingCache(capacity=capacity, load=noop_load, check=noop_check)


@pytest.mark.parametrize(("load", "check"), [(None, noop_check), (noop_load, None)])
def test_b7_load_and_check_are_required(
    load: Callable[[str], Awaitable[Value]] | None,
    check: Callable[[str, Value], Awaitable[bool]] | None,
) -> None:
    with pytest.raises(ValueError, match="load and check"):
        ValidatingCache(capacity=1, load=load, check=check)  # type: ignore[arg-type]


async def test_b8_miss_loads_and_caches() -> None:
    h = Harness()
    value = await h.cache.get("a")
    assert h.loads == ["a"]
    assert h.cache.peek("a") is value
    assert h.checks == []


async def test_b8_load_error_propagates_and_caches_nothing() -> None:
    h = Harness()
    h.load_error = KeyError("gone")
    with pytest.raises(KeyError):
        await h.cache.get("a")
    assert "a" not in h.cache
    assert h.cache.statistics().load_failures == 1


async def test_b9_live_hit_returns_cached_value_without_load() -> None:
    h = Harness()
    first = await h.cache.get("a")
    second = await h.cache.get("a")
    assert second is first
    assert h.loads == ["a"]
    assert h.checks == ["a"]
    assert h.cache.statistics().hits == 1


async def test_b10_expired_hit_evicts_once_and_reloads_in_the_same_call() -> None:
    h = Harness()
    first = await h.cache.get("a")
    h.alive["a"] = False
    second = await h.cache.get("a")
    assert second is not first
    assert h.loads == ["a", "a"]
    await h.cache.wait_released()
    assert h.evicted == [first]
    assert h.cache.peek("a") is second


async def test_b11_transient_check_error_serves_the_cached_value() -> None:
    h = Harness()
    first = await h.cache.get("a")
    h.check_error = ConnectionError("store down")
    assert await h.cache.get("a") is first
    await h.cache.wait_released()
    assert h.evicted == []
    assert h.cache.statistics().check_failures == 1


async def test_b12_set_overwrites_without_load_and_releases_the_old_value() -> None:
    h = Harness()
    old = await h.cache.get("a")
    new = Value("a", 99)
    h.cache.set("a", new)
    assert h.cache.peek("a") is new
    assert h.loads == ["a"]
    await h.cache.wait_released()
    assert h.evicted == [old]


async def test_b12_lru_evicts_least_recently_used_and_get_set_refresh_recency() -> None:
    h = Harness(capacity=3)
    a = await h.cache.get("a")
    await h.cache.get("b")
    await h.cache.get("c")
    await h.cache.get("a")            # a is now most recent; b is the oldest
    h.cache.set("d", Value("d", 0))   # evicts b
    await h.cache.wait_released()
    assert [v.key for v in h.evicted] == ["b"]
    h.cache.set("c", Value("c", 5))   # refresh c; a becomes the oldest
    await h.cache.get("e")            # evicts a
    await h.cache.wait_released()
    assert h.evicted[-1] is a
    assert len(h.cache) == 3
    assert h.cache.statistics().evictions == 2


async def test_b13_concurrent_gets_on_a_miss_share_one_load() -> None:
    h = Harness()
    h.load_gate = asyncio.Event()
    async with anyio.create_task_group() as tg:
        results: list[Value] = []

        async def getter() -> None:
            results.append(await h.cache.get("a"))

        for _ in range(20):
            tg.start_soon(getter)
        with anyio.fail_after(5):
            await h.load_started.wait()
        h.load_gate.set()
    assert h.loads == ["a"]
    assert len({id(r) for r in results}) == 1


async def test_b13_concurrent_gets_on_a_hit_share_one_check() -> None:
    h = Harness()
    await h.cache.get("a")
    h.check_gate = asyncio.Event()
    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(h.cache.get, "a")
        with anyio.fail_after(5):
            await h.check_started.wait()
        h.check_gate.set()
    assert h.checks == ["a"]


async def test_a_cancelled_waiter_does_not_cancel_the_shared_load() -> None:
    h = Harness()
    h.load_gate = asyncio.Event()
    first = asyncio.create_task(h.cache.get("a"))
    second = asyncio.create_task(h.cache.get("a"))
    with anyio.fail_after(5):
        await h.load_started.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    h.load_gate.set()
    with anyio.fail_after(5):
        value = await second
    assert h.cache.peek("a") is value
    assert h.loads == ["a"]


async def test_b14_a_set_during_an_in_flight_load_wins_and_the_load_is_released() -> None:
    h = Harness()
    h.load_gate = asyncio.Event()
    getter = asyncio.create_task(h.cache.get("a"))
    with anyio.fail_after(5):
        await h.load_started.wait()
    winner = Value("a", 100)
    h.cache.set("a", winner)
    h.load_gate.set()
    with anyio.fail_after(5):
        assert await getter is winner
    await h.cache.wait_released()
    assert h.cache.peek("a") is winner
    assert [v.generation for v in h.evicted] == [1]


async def test_evict_during_load_drops_the_loaded_value() -> None:
    h = Harness()
    h.load_gate = asyncio.Event()
    getter = asyncio.create_task(h.cache.get("a"))
    with anyio.fail_after(5):
        await h.load_started.wait()
    h.cache.evict("a")
    h.load_gate.set()
    with anyio.fail_after(5), pytest.raises(EvictedWhileLoading, match=r"^a$"):
        await getter
    await h.cache.wait_released()
    assert "a" not in h.cache
    assert h.evicted_keys == ["a"]
    assert (h.cache._flights, h.cache._mutations) == ({}, {})   # the flight left nothing
    assert len(h.evicted) == 1


async def test_b15_expiry_never_evicts_a_value_a_concurrent_set_wrote() -> None:
    h = Harness()
    await h.cache.get("a")
    h.alive["a"] = False
    h.check_gate = asyncio.Event()
    getter = asyncio.create_task(h.cache.get("a"))
    with anyio.fail_after(5):
        await h.check_started.wait()
    fresh = Value("a", 50)
    h.cache.set("a", fresh)        # lands while the old value is being found expired
    h.check_gate.set()
    with anyio.fail_after(5):
        assert await getter is fresh
    assert h.cache.peek("a") is fresh
    assert h.loads == ["a"]


async def test_a_hit_evicted_during_its_check_is_rebuilt_not_served() -> None:
    h = Harness()
    old = await h.cache.get("a")
    h.check_gate = asyncio.Event()
    getter = asyncio.create_task(h.cache.get("a"))
    with anyio.fail_after(5):
        await h.check_started.wait()
    h.cache.evict("a")
    h.check_gate.set()
    with anyio.fail_after(5):
        value = await getter
    assert value is not old
    assert h.loads == ["a", "a"]


async def test_release_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def failing_evict(key: str, value: Value) -> None:
        raise RuntimeError("close failed")

    cache: ValidatingCache[str, Value] = ValidatingCache(
        capacity=1, load=noop_load, check=noop_check, on_evict=failing_evict
    )
    await cache.get("a")
    await cache.get("b")
    await cache.wait_released()
    assert "releasing a cached value failed" in caplog.text


async def test_aclose_releases_everything() -> None:
    h = Harness()
    await h.cache.get("a")
    await h.cache.get("b")
    await h.cache.aclose()
    assert sorted(v.key for v in h.evicted) == ["a", "b"]
    assert len(h.cache) == 0


async def test_statistics_count_every_outcome() -> None:
    h = Harness(capacity=2)
    assert h.cache.statistics() == CacheStatistics(
        size=0, capacity=2, hits=0, misses=0, loads=0, load_failures=0, expirations=0,
        evictions=0, removals=0, check_failures=0)
    await h.cache.get("a")                     # miss, load
    await h.cache.get("a")                     # hit
    h.check_error = RuntimeError("store down")
    await h.cache.get("a")                     # hits served despite a failed check
    await h.cache.get("a")
    h.check_error = None
    h.alive["a"] = False
    await h.cache.get("a")                     # expired: miss, load
    await h.cache.get("a")                     # expired again: miss, load
    h.load_error = KeyError("gone")
    for key in ("b", "b"):
        with pytest.raises(KeyError):
            await h.cache.get(key)             # miss, failed load
    h.load_error = None
    h.alive["a"] = True
    for key in ("c", "d", "e"):
        h.cache.set(key, Value(key, 0))        # two pushed out for capacity
    assert h.cache.evict("e") is True
    assert h.cache.evict("d") is True
    assert h.cache.evict("d") is False
    assert h.cache.statistics() == CacheStatistics(
        size=0, capacity=2, hits=3, misses=5, loads=3, load_failures=2, expirations=2,
        evictions=2, removals=2, check_failures=2)
    await h.cache.wait_released()
    assert sorted(v.key for v in h.evicted) == ["a", "a", "a", "c", "d", "e"]
    assert sorted(h.evicted_keys) == ["a", "a", "a", "c", "d", "e"]
    assert h.cache._flights == {}
    assert h.cache._mutations == {}            # nothing kept once no flight is under way


async def test_cached_keys_are_listed_least_recently_used_first() -> None:
    h = Harness(capacity=3)
    for key in ("a", "b", "c"):
        h.cache.set(key, Value(key, 0))
    await h.cache.get("a")
    assert h.cache.cached_keys() == ["b", "c", "a"]
    assert len(h.cache) == 3


async def test_a_value_set_during_a_load_is_served_as_the_most_recent() -> None:
    h = Harness(capacity=2)
    h.load_gate = asyncio.Event()
    getting = asyncio.create_task(h.cache.get("k"))
    with anyio.fail_after(5):
        await h.load_started.wait()
    h.cache.set("k", Value("k", 99))
    h.cache.set("other", Value("other", 0))
    h.load_gate.set()
    with anyio.fail_after(5):
        assert (await getting).generation == 99
    assert h.cache.cached_keys() == ["other", "k"]   # served: now the most recent


async def test_closing_the_cache_during_a_load_reports_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    h.load_gate = asyncio.Event()
    getting = asyncio.create_task(h.cache.get("k"))
    with anyio.fail_after(5):
        await h.load_started.wait()
    with caplog.at_level(logging.ERROR):
        await h.cache.aclose()
        with pytest.raises(asyncio.CancelledError):
            await getting
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_aclose_releases_every_value_under_its_key_least_recent_first() -> None:
    h = Harness(capacity=3)
    for key in ("a", "b", "c"):
        h.cache.set(key, Value(key, 0))
    await h.cache.get("a")
    await h.cache.aclose()
    assert h.evicted_keys == ["b", "c", "a"]
    assert [v.key for v in h.evicted] == ["b", "c", "a"]


async def test_a_set_during_a_load_wins_even_after_an_eviction_during_the_check() -> None:
    """Two changes to one key in one flight: the second must count as much as the first."""
    h = Harness()
    await h.cache.get("a")
    h.load_started.clear()
    h.check_gate, h.load_gate = asyncio.Event(), asyncio.Event()
    getting = asyncio.create_task(h.cache.get("a"))
    with anyio.fail_after(5):
        await h.check_started.wait()
    h.cache.evict("a")                         # while its check runs
    h.check_gate.set()
    with anyio.fail_after(5):
        await h.load_started.wait()
    winner = Value("a", 99)
    h.cache.set("a", winner)                   # while it reloads
    h.load_gate.set()
    with anyio.fail_after(5):
        assert await getting is winner
    assert h.cache.peek("a") is winner


def test_a_cache_without_load_or_check_says_what_it_needs() -> None:
    with pytest.raises(ValueError, match=r"^a ValidatingCache needs both load and check$"):
        ValidatingCache(capacity=1, load=noop_load, check=None)  # type: ignore[arg-type]
