"""``merge``: some fields of a present record changed in one atomic step, on every store.

What replicas rely on when they record upstream sessions of one client session: a merge
never creates a record, keeps the fields it was not given, refuses (writing nothing)
when an expectation fails and says what the record holds instead, and concurrent merges
of different fields all land.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.store.conftest import TTL, StoreUnderTest
from tests.store.test_redis import proxied_store
from tests.support.redis_server import RedisServer
from vmcp.errors import InvalidMetadata, SessionNotFound

pytestmark = pytest.mark.anyio


async def test_a_merge_never_creates_a_record(subject: StoreUnderTest) -> None:
    merged = await subject.store.merge("ghost", {"a": "1"})
    assert (merged.applied, merged.record) == (False, None)
    with pytest.raises(SessionNotFound):
        await subject.store.load("ghost")


async def test_a_merge_sets_and_drops_fields_and_keeps_the_others(
    subject: StoreUnderTest,
) -> None:
    await subject.store.create("s", {"keep": "1", "drop": "2", "change": "3"})
    merged = await subject.store.merge("s", {"change": "é/ü", "new": "x"}, remove=["drop"])
    expected = {"keep": "1", "change": "é/ü", "new": "x"}
    assert (merged.applied, merged.record) == (True, expected)
    assert await subject.store.load("s") == expected
    emptied = await subject.store.merge("s", {}, remove=["keep", "change", "new"])
    assert (emptied.applied, emptied.record) == (True, {})
    assert await subject.store.load("s") == {}


async def test_a_merge_restarts_the_ttl_window(subject: StoreUnderTest) -> None:
    await subject.store.create("s", {})
    await subject.advance(TTL * 0.75)
    assert (await subject.store.merge("s", {"a": "1"})).applied
    assert await subject.remaining_ttl("s") > TTL * 0.9


async def test_a_failed_expectation_writes_nothing_and_shows_the_record(
    subject: StoreUnderTest,
) -> None:
    await subject.store.create("s", {"owner": "x", "slot": "taken"})
    for expect in ({"slot": None}, {"owner": "y"}, {"missing": "z"}):
        merged = await subject.store.merge("s", {"slot": "mine"}, expect=expect)
        assert (merged.applied, merged.record) == (False, {"owner": "x", "slot": "taken"})
    assert await subject.store.load("s") == {"owner": "x", "slot": "taken"}
    held = await subject.store.merge("s", {"other": "v"},
                                     expect={"owner": "x", "slot": "taken", "other": None})
    assert held.applied
    assert await subject.store.load("s") == {"owner": "x", "slot": "taken", "other": "v"}


async def test_concurrent_merges_of_different_fields_all_land(subject: StoreUnderTest) -> None:
    await subject.store.create("s", {"base": "1"})
    results = await asyncio.gather(*(subject.store.merge("s", {f"k{i}": str(i)})
                                     for i in range(30)))
    assert all(r.applied for r in results)
    assert await subject.store.load("s") == {"base": "1", **{f"k{i}": str(i) for i in range(30)}}


async def test_concurrent_claims_of_one_field_let_exactly_one_win(
    subject: StoreUnderTest,
) -> None:
    await subject.store.create("s", {})
    results = await asyncio.gather(*(subject.store.merge("s", {"slot": str(i)},
                                                         expect={"slot": None})
                                     for i in range(30)))
    winners = [i for i, r in enumerate(results) if r.applied]
    assert len(winners) == 1
    assert all(r.record == {"slot": str(winners[0])} for r in results)


async def test_a_merge_of_non_string_values_is_refused(subject: StoreUnderTest) -> None:
    await subject.store.create("s", {})
    with pytest.raises(InvalidMetadata):
        await subject.store.merge("s", {"a": 1})  # type: ignore[dict-item]


async def test_a_claim_whose_reply_was_lost_counts_as_applied(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """The script ran, its answer did not come back: the retry finds its own value in
    place (the expectation "absent" now fails) and reports the claim as won."""
    async with proxied_store(redis_server, key_prefix, deadline=2.0) as (proxy, store):
        await store.create("s", {})
        assert (await store.merge("s", {})).applied    # the script is loaded: one EVALSHA
        proxy.lose_next_reply()
        merged = await store.merge("s", {"slot": "mine"}, expect={"slot": None})
        assert proxy.replies_lost == 1
        assert (merged.applied, merged.record) == (True, {"slot": "mine"})
        rival = await store.merge("s", {"slot": "theirs"}, expect={"slot": None})
        assert (rival.applied, rival.record) == (False, {"slot": "mine"})
