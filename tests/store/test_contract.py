"""The store contract (B1-B6), against MemoryStore and a real redis-server alike."""

from __future__ import annotations

import asyncio

import pytest

from tests.store.conftest import TTL, StoreUnderTest
from vmcp.errors import InvalidMetadata, InvalidSessionId, SessionNotFound

pytestmark = pytest.mark.anyio


async def test_b1_concurrent_creates_of_one_id_let_exactly_one_win(subject: StoreUnderTest) -> None:
    results = await asyncio.gather(*(subject.store.create("s1", {"n": str(i)}) for i in range(50)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert await subject.store.load("s1") == {"n": str(winner)}


async def test_b2_update_of_absent_id_writes_nothing(subject: StoreUnderTest) -> None:
    assert await subject.store.update("ghost", {"a": "1"}) is False
    with pytest.raises(SessionNotFound):
        await subject.store.load("ghost")


async def test_b2_update_right_after_delete_does_not_resurrect(subject: StoreUnderTest) -> None:
    assert await subject.store.create("s", {"a": "1"})
    await subject.store.delete("s")
    assert await subject.store.update("s", {"a": "2"}) is False
    with pytest.raises(SessionNotFound):
        await subject.store.load("s")


async def test_update_of_present_id_replaces_the_record(subject: StoreUnderTest) -> None:
    await subject.store.create("s", {"a": "1", "b": "2"})
    assert await subject.store.update("s", {"c": "3"}) is True
    assert await subject.store.load("s") == {"c": "3"}


async def test_b3_load_returns_a_copy(subject: StoreUnderTest) -> None:
    await subject.store.create("s", {"a": "1"})
    first = await subject.store.load("s")
    first["a"] = "mutated"
    assert await subject.store.load("s") == {"a": "1"}


async def test_b3_load_of_absent_id_raises_not_found(subject: StoreUnderTest) -> None:
    with pytest.raises(SessionNotFound):
        await subject.store.load("nope")


@pytest.mark.parametrize("bad", ["", "a b", "é", "x" * 129, "tab\there", 5, None])
async def test_b3_invalid_session_ids_are_rejected_before_any_io(
    subject: StoreUnderTest, bad: object
) -> None:
    """Counted on the server: a malformed or empty id sends not a single command.

    The server is shared with other replicas of the suite, whose heartbeats land now and
    then; a store that sent commands for a bad id would add them on every try, so one try
    with nothing added out of three shows that it sends none."""
    await subject.store.ping()

    async def commands_for_bad_ids() -> int:
        before = await subject.commands_sent()
        for call in (
            lambda: subject.store.load(bad),  # type: ignore[arg-type]
            lambda: subject.store.create(bad, {}),  # type: ignore[arg-type]
            lambda: subject.store.update(bad, {}),  # type: ignore[arg-type]
            lambda: subject.store.delete(bad),  # type: ignore[arg-type]
        ):
            with pytest.raises(InvalidSessionId):
                await call()
        return await subject.commands_sent() - before

    assert min([await commands_for_bad_ids() for _ in range(3)]) == 0
    counted: list[int] = []
    for _ in range(3):
        before = await subject.commands_sent()
        with pytest.raises(SessionNotFound):
            await subject.store.load("well-formed")  # the count does see a real call
        counted.append(await subject.commands_sent() - before)
    assert min(counted) == subject.counts_commands


async def test_longest_visible_ascii_id_is_accepted(subject: StoreUnderTest) -> None:
    session_id = "".join(chr(c) for c in range(0x21, 0x7F))[:128]
    assert await subject.store.create(session_id, {"k": "v"})
    assert await subject.store.load(session_id) == {"k": "v"}


async def test_an_id_of_exactly_128_characters_is_accepted(subject: StoreUnderTest) -> None:
    session_id = "".join(chr(0x21 + i % 94) for i in range(128))
    assert await subject.store.create(session_id, {"k": "v"})
    assert await subject.store.load(session_id) == {"k": "v"}


@pytest.mark.parametrize("bad", [{"a": 1}, {1: "a"}, {"a": None}, ["a"], "a", {"a": {"b": "c"}}])
async def test_non_string_metadata_is_refused(subject: StoreUnderTest, bad: object) -> None:
    with pytest.raises(InvalidMetadata):
        await subject.store.create("s", bad)  # type: ignore[arg-type]
    with pytest.raises(SessionNotFound):
        await subject.store.load("s")


async def test_b4_delete_is_idempotent(subject: StoreUnderTest) -> None:
    await subject.store.delete("never-was")
    await subject.store.create("s", {})
    await subject.store.delete("s")
    await subject.store.delete("s")
    with pytest.raises(SessionNotFound):
        await subject.store.load("s")


async def test_b5_untouched_record_expires_after_ttl(subject: StoreUnderTest) -> None:
    await subject.store.create("s", {"a": "1"})
    await subject.advance(TTL - 1)
    assert await subject.store.update("other", {}) is False  # unrelated call, no refresh of s
    await subject.advance(2)
    with pytest.raises(SessionNotFound):
        await subject.store.load("s")
    assert await subject.store.update("s", {"a": "2"}) is False


@pytest.mark.parametrize("operation", ["load", "update"])
async def test_b5_each_touch_restarts_the_ttl_window(
    subject: StoreUnderTest, operation: str
) -> None:
    await subject.store.create("s", {"a": "1"})
    for _ in range(3):
        await subject.advance(TTL * 0.75)
        if operation == "load":
            await subject.store.load("s")
        else:
            assert await subject.store.update("s", {"a": "1"})
        assert await subject.remaining_ttl("s") > TTL * 0.9
    assert await subject.store.load("s") == {"a": "1"}


async def test_b5_create_sets_a_full_window(subject: StoreUnderTest) -> None:
    await subject.store.create("s", {})
    assert TTL * 0.9 < await subject.remaining_ttl("s") <= TTL


async def test_expired_record_can_be_created_again(subject: StoreUnderTest) -> None:
    await subject.store.create("s", {"gen": "1"})
    await subject.advance(TTL + 1)
    assert await subject.store.create("s", {"gen": "2"}) is True
    assert await subject.store.load("s") == {"gen": "2"}


async def test_ping_answers_when_the_store_is_up(subject: StoreUnderTest) -> None:
    await subject.store.ping()
