"""Two replicas, one real Redis: restore, termination, faults (B22, B24, B31, B44)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.session.conftest import (
    ALICE,
    ALICE_REFRESHED,
    MALLORY,
    FakeLiveSession,
    RecordingFactory,
    Replica,
)
from tests.support.redis_server import RedisServer
from vmcp.errors import SessionNotFound, SessionNotYours, StoreError
from vmcp.session import SessionManager
from vmcp.session import metadata as md
from vmcp.store import MemoryStore, RedisStore
from vmcp.store.pubsub import RedisEndedSessionBus

pytestmark = pytest.mark.anyio


async def test_b24_a_replica_with_an_empty_cache_serves_another_replicas_session(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    live = await a.manager.initialize(ALICE)
    restored = await b.manager.get(live.session_id, ALICE)
    assert restored.backend_names() == ["alpha", "beta"]
    assert b.factory.restore_calls == [(
        live.session_id, ALICE, ["alpha", "beta"],
        {"alpha": "alpha-upstream-1", "beta": "beta-upstream-1"},
    )]
    assert b.factory.opened == []
    assert await b.manager.get(live.session_id, ALICE) is restored
    assert len(b.factory.restore_calls) == 1


async def test_b22_terminate_on_a_makes_b_answer_not_found_and_close_once(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    live = await a.manager.initialize(ALICE)
    on_b = await b.manager.get(live.session_id, ALICE)
    await a.manager.terminate(live.session_id, ALICE)
    for _ in range(3):
        with pytest.raises(SessionNotFound):
            await b.manager.get(live.session_id, ALICE)
    await b.manager.wait_closed()
    assert isinstance(on_b, FakeLiveSession)
    assert on_b.close_count == 1
    assert len(b.factory.restore_calls) == 1
    await a.manager.wait_closed()
    assert isinstance(live, FakeLiveSession)
    assert live.close_count == 1


async def test_b44_a_restored_session_enforces_the_same_binding(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    live = await a.manager.initialize(ALICE)
    with pytest.raises(SessionNotYours):
        await b.manager.get(live.session_id, MALLORY)
    assert b.factory.restore_calls == []      # a stranger never triggers a restore
    assert await b.manager.get(live.session_id, ALICE_REFRESHED)
    with pytest.raises(SessionNotYours):
        await b.manager.get(live.session_id, MALLORY)
    assert b.manager.statistics().security_events == 2


async def test_a_stranger_cannot_terminate_on_another_replica(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    live = await a.manager.initialize(ALICE)
    with pytest.raises(SessionNotYours):
        await b.manager.terminate(live.session_id, MALLORY)
    assert await a.manager.get(live.session_id, ALICE) is live


async def test_b31_memory_stores_are_per_replica() -> None:
    async with MemoryStore(ttl_seconds=60) as store_a, MemoryStore(ttl_seconds=60) as store_b:
        a = SessionManager(store_a, RecordingFactory())
        b = SessionManager(store_b, RecordingFactory())
        live = await a.initialize(ALICE)
        with pytest.raises(SessionNotFound):
            await b.get(live.session_id, ALICE)
        assert await a.get(live.session_id, ALICE) is live
        await a.aclose()
        await b.aclose()


async def test_store_outage_keeps_cached_sessions_and_reports_unavailable_for_others(
    tmp_path: Path, key_prefix: str
) -> None:
    """Redis stopped: no session is reported gone; back up, everything resumes."""
    server = RedisServer(tmp_path / "r", appendonly=True)
    server.start()

    def store() -> RedisStore:
        return RedisStore.from_url(server.url, key_prefix=key_prefix, ttl_seconds=60,
                                   timeout_seconds=0.5)

    a = SessionManager(store(), RecordingFactory())
    b = SessionManager(store(), RecordingFactory())
    try:
        live = await a.initialize(ALICE)
        server.stop()
        assert await a.get(live.session_id, ALICE) is live   # cached: keeps serving
        with pytest.raises(StoreError) as caught:
            await b.get(live.session_id, ALICE)             # not cached: 503, not 404
        assert not isinstance(caught.value, SessionNotFound)
        with pytest.raises(StoreError):
            await a.initialize(ALICE)
        with pytest.raises(StoreError):
            await a.terminate(live.session_id, ALICE)
        server.start()
        with anyio.fail_after(10):
            assert await b.get(live.session_id, ALICE)
        assert await a.get(live.session_id, ALICE) is live
        record = await a._store.load(live.session_id)
        assert md.TERMINATED not in record
        assert record[md.IDENTITY] == "https://idp.example\x00alice"
    finally:
        await a.aclose()
        await b.aclose()
        await a._store.aclose()  # type: ignore[attr-defined]
        await b._store.aclose()  # type: ignore[attr-defined]
        server.stop()


async def test_terminate_is_broadcast_and_other_replicas_close_their_copies_at_once(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """No request needed on B: the ended-session broadcast closes B's copy promptly."""
    def replica() -> SessionManager:
        store = RedisStore.from_url(redis_server.url, key_prefix=key_prefix, ttl_seconds=60,
                                    timeout_seconds=2.0)
        bus = RedisEndedSessionBus(store.client, key_prefix + "ended", timeout_seconds=2.0)
        return SessionManager(store, RecordingFactory(), ended_sessions=bus)

    a, b = replica(), replica()
    channel = key_prefix + "ended"
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.follow_ended_sessions)
            live = await a.initialize(ALICE)
            on_b = await b.get(live.session_id, ALICE)
            assert isinstance(on_b, FakeLiveSession)
            client = a._store.client  # type: ignore[attr-defined]
            with anyio.fail_after(5):  # pub/sub drops what is sent before B subscribes
                while (await client.pubsub_numsub(channel))[0][1] < 1:  # noqa: ASYNC110 - server state, no event to await
                    await anyio.sleep(0.01)
            await a.terminate(live.session_id, ALICE)
            with anyio.fail_after(5):
                await on_b.closed.wait()
            assert on_b.close_count == 1
            assert not b.is_cached(live.session_id)
            tg.cancel_scope.cancel()
    finally:
        for manager in (a, b):
            await manager.aclose()
            await manager._store.aclose()  # type: ignore[attr-defined]
