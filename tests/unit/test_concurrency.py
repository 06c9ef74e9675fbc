"""SingleFlight and LRU: the two primitives every cache and shared load is built on."""

from __future__ import annotations

import anyio
import pytest

from vmcp.concurrency import SingleFlight
from vmcp.lru import LRU

pytestmark = pytest.mark.anyio


async def test_concurrent_runs_of_one_key_share_one_work() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    release = anyio.Event()
    runs = 0
    results: list[int] = []

    async def work() -> int:
        nonlocal runs
        runs += 1
        await release.wait()
        return 42

    async def caller() -> None:
        results.append(await flight.run("k", work))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
            assert "k" in flight
            release.set()
    assert runs == 1
    assert results == [42] * 5
    assert "k" not in flight


async def test_a_result_of_none_is_shared_as_a_result() -> None:
    flight: SingleFlight[str, None] = SingleFlight()
    release = anyio.Event()
    runs = 0

    async def work() -> None:
        nonlocal runs
        runs += 1
        await release.wait()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(flight.run, "k", work)
            await anyio.wait_all_tasks_blocked()
            release.set()
    assert runs == 1


@pytest.mark.parametrize("share_errors", [True, False])
async def test_a_failure_is_shared_or_retried_by_each_waiter(share_errors: bool) -> None:
    flight: SingleFlight[str, str] = SingleFlight(share_errors=share_errors)
    release, release_retry = anyio.Event(), anyio.Event()
    runs = 0
    outcomes: list[str] = []

    async def work() -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            await release.wait()
            raise ValueError("first run fails")
        await release_retry.wait()
        return "second run"

    async def caller() -> None:
        try:
            outcomes.append(await flight.run("k", work))
        except ValueError:
            outcomes.append("error")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(caller)
            await anyio.wait_all_tasks_blocked()
            release.set()
            await anyio.wait_all_tasks_blocked()
            release_retry.set()
    if share_errors:
        assert (runs, sorted(outcomes)) == (1, ["error"] * 3)
    else:
        assert (runs, sorted(outcomes)) == (2, ["error", "second run", "second run"])


async def test_a_cancelled_leader_does_not_cancel_the_waiters() -> None:
    flight: SingleFlight[str, str] = SingleFlight(share_errors=True)
    runs = 0
    got: list[str] = []

    async def work() -> str:
        nonlocal runs
        runs += 1
        if runs == 1:
            await anyio.sleep_forever()
        return "the waiter's own run"

    async def leader(scope: anyio.CancelScope) -> None:
        with scope:
            await flight.run("k", work)

    async def waiter() -> None:
        got.append(await flight.run("k", work))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()
            tg.start_soon(leader, scope)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
    assert got == ["the waiter's own run"]
    assert runs == 2


def test_lru_evicts_the_least_recently_used_and_reports_it() -> None:
    cache: LRU[str, int] = LRU(2)
    assert cache.put("a", 1) == []
    assert cache.put("b", 2) == []
    assert cache.get("a") == 1          # a is now the most recent
    assert cache.put("c", 3) == [("b", 2)]
    assert list(cache) == ["a", "c"]
    assert cache.peek("a") == 1
    assert cache.put("d", 4) == [("a", 1)]  # peek did not refresh a
    assert cache.pop("c") == 3
    assert cache.pop("c") is None
    assert len(cache) == 1
    assert "d" in cache


def test_lru_refuses_a_capacity_below_one() -> None:
    with pytest.raises(ValueError, match="capacity"):
        LRU(0)
