"""SessionManager lifecycle (B16-B30, B33), on the memory store and on real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import anyio
import pytest

from tests.session.conftest import ALICE, FakeLiveSession, RecordingFactory
from vmcp.errors import DecorationError, SessionNotFound, SessionTerminated, StoreError
from vmcp.identity import ANONYMOUS
from vmcp.session import LiveSession, SessionManager
from vmcp.session import metadata as md
from vmcp.store import MemoryStore, RedisStore, SessionStore

pytestmark = pytest.mark.anyio


async def test_b16_generate_stores_a_placeholder_and_unique_ids(
    manager: SessionManager, store: SessionStore
) -> None:
    ids = {await manager.generate() for _ in range(50)}
    assert len(ids) == 50
    for session_id in ids:
        assert await store.load(session_id) == {}


async def test_b16_generate_with_store_down_fails_clearly(factory: RecordingFactory) -> None:
    dead = RedisStore.from_url("redis://127.0.0.1:1/0", key_prefix="p:", ttl_seconds=5,
                               timeout_seconds=0.5)
    manager = SessionManager(dead, factory)
    with pytest.raises(StoreError):
        await manager.generate()
    await dead.aclose()


async def test_create_session_stores_the_full_record(
    manager: SessionManager, store: SessionStore
) -> None:
    live = await manager.initialize(ALICE)
    record = await store.load(live.session_id)
    assert record == {
        md.IDENTITY: "https://idp.example\x00alice",
        md.BACKENDS: "alpha,beta",
        "backend:alpha": "alpha-upstream-1",
        "backend:beta": "beta-upstream-1",
    }
    assert "alice-token-1" not in repr(record)
    assert await manager.get(live.session_id, ALICE) is live


async def test_b17_absent_placeholder_fails_before_any_backend(
    manager: SessionManager, factory: RecordingFactory
) -> None:
    with pytest.raises(SessionNotFound):
        await manager.create_session("never-generated", ALICE)
    assert factory.opened == []
    assert not factory.open_started.is_set()


async def test_b17_terminated_placeholder_fails_before_any_backend(
    manager: SessionManager, factory: RecordingFactory
) -> None:
    session_id = await manager.generate()
    await manager.terminate(session_id, ANONYMOUS)
    with pytest.raises(SessionTerminated):
        await manager.create_session(session_id, ALICE)
    assert not factory.open_started.is_set()


async def test_b18_placeholder_ended_while_connecting_closes_and_writes_nothing(
    manager: SessionManager, factory: RecordingFactory, store: SessionStore
) -> None:
    session_id = await manager.generate()
    factory.open_gate = asyncio.Event()
    creating = asyncio.create_task(manager.create_session(session_id, ALICE))
    await factory.open_started.wait()
    await manager.terminate(session_id, ANONYMOUS)
    factory.open_gate.set()
    with anyio.fail_after(5), pytest.raises(SessionTerminated):
        await creating
    assert factory.opened[0].close_count == 1
    assert await store.load(session_id) == {md.TERMINATED: "true"}
    assert not manager.is_cached(session_id)


async def test_b19_factory_failure_marks_placeholder_terminated(
    manager: SessionManager, factory: RecordingFactory, store: SessionStore
) -> None:
    session_id = await manager.generate()
    factory.open_error = RuntimeError("backends exploded")
    with pytest.raises(RuntimeError):
        await manager.create_session(session_id, ALICE)
    assert await store.load(session_id) == {md.TERMINATED: "true"}


async def test_b20_get_answers_per_state(
    manager: SessionManager, store: SessionStore
) -> None:
    with pytest.raises(SessionNotFound):
        await manager.get("unknown", ALICE)
    placeholder = await manager.generate()
    await manager.terminate(placeholder, ANONYMOUS)
    with pytest.raises(SessionNotFound):
        await manager.get(placeholder, ANONYMOUS)
    live = await manager.initialize(ALICE)
    assert await manager.get(live.session_id, ALICE) is live


async def test_b20_store_error_is_not_a_dead_session(factory: RecordingFactory) -> None:
    dead = RedisStore.from_url("redis://127.0.0.1:1/0", key_prefix="p:", ttl_seconds=5,
                               timeout_seconds=0.5)
    manager = SessionManager(dead, factory)
    with pytest.raises(StoreError) as caught:
        await manager.get("some-id", ALICE)
    assert not isinstance(caught.value, SessionNotFound)
    await dead.aclose()


async def test_b21_terminate_semantics(manager: SessionManager, store: SessionStore) -> None:
    assert await manager.terminate("unknown-id", ALICE) is False
    placeholder = await manager.generate()
    assert await manager.terminate(placeholder, ANONYMOUS) is False  # no client knows it
    assert await store.load(placeholder) == {md.TERMINATED: "true"}
    assert await manager.terminate(placeholder, ANONYMOUS) is False  # twice is fine
    live = await manager.initialize(ALICE)
    assert await manager.terminate(live.session_id, ALICE) is True
    assert await manager.terminate(live.session_id, ALICE) is False  # ended already
    with pytest.raises(SessionNotFound):
        await store.load(live.session_id)
    await manager.wait_closed()
    assert isinstance(live, FakeLiveSession)
    assert live.close_count == 1
    with pytest.raises(SessionNotFound):
        await manager.get(live.session_id, ALICE)


async def test_b23_placeholder_or_unbound_record_is_never_restored(
    manager: SessionManager, factory: RecordingFactory, store: SessionStore
) -> None:
    placeholder = await manager.generate()
    with pytest.raises(SessionNotFound):
        await manager.get(placeholder, ANONYMOUS)
    assert await store.create("unbound", {md.BACKENDS: "alpha"})
    with pytest.raises(SessionNotFound):
        await manager.get("unbound", ANONYMOUS)
    assert factory.restore_calls == []


async def test_b25_restore_writes_refreshed_states_back_with_update(
    store: SessionStore, factory: RecordingFactory
) -> None:
    assert await store.create("s", {md.IDENTITY: "unauthenticated", md.BACKENDS: "alpha",
                                    "backend:alpha": "old"})

    class RefreshingFactory(RecordingFactory):
        async def restore(self, session_id: str, principal: object, backends: object,
                          states: Mapping[str, str]) -> FakeLiveSession:
            live = await super().restore(session_id, ANONYMOUS, ["alpha"], states)
            live._states = {"alpha": "new"}
            return live

    manager = SessionManager(store, RefreshingFactory())
    await manager.get("s", ANONYMOUS)
    assert (await store.load("s"))["backend:alpha"] == "new"
    await manager.aclose()


async def test_b25_key_deleted_during_restore_closes_the_restored_session(
    store: SessionStore, factory: RecordingFactory
) -> None:
    assert await store.create("s", {md.IDENTITY: "unauthenticated", md.BACKENDS: ""})
    manager = SessionManager(store, factory)
    factory.restore_gate = asyncio.Event()
    getter = asyncio.create_task(manager.get("s", ANONYMOUS))
    await factory.restore_started.wait()
    await store.delete("s")
    factory.restore_gate.set()
    with anyio.fail_after(5), pytest.raises(SessionNotFound):
        await getter
    assert factory.restored[0].close_count == 1
    assert not manager.is_cached("s")
    with pytest.raises(SessionNotFound):
        await store.load("s")
    await manager.aclose()


async def test_b26_restore_keeps_caller_identity_but_not_its_cancellation(
    store: SessionStore, factory: RecordingFactory
) -> None:
    manager = SessionManager(store, RecordingFactory())
    live = await manager.initialize(ALICE)
    other = SessionManager(store, factory)
    factory.restore_gate = asyncio.Event()
    caller = asyncio.create_task(other.get(live.session_id, ALICE))
    await factory.restore_started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    factory.restore_gate.set()
    with anyio.fail_after(5):
        restored = await other.get(live.session_id, ALICE)
    assert len(factory.restore_calls) == 1
    assert factory.restore_calls[0][1].token == "alice-token-1"
    assert restored is factory.restored[0]
    await manager.aclose()
    await other.aclose()


async def test_b27_a_session_with_zero_backends_restores_as_valid_and_empty(
    store: SessionStore,
) -> None:
    creator = SessionManager(store, RecordingFactory(backends=[]))
    live = await creator.initialize(ANONYMOUS)
    assert (await store.load(live.session_id))[md.BACKENDS] == ""
    factory = RecordingFactory()
    restorer = SessionManager(store, factory)
    restored = await restorer.get(live.session_id, ANONYMOUS)
    assert restored.backend_names() == []
    assert factory.restore_calls[0][2] == []
    await creator.aclose()
    await restorer.aclose()


async def test_b28_changed_backend_list_expires_but_changed_states_do_not(
    manager: SessionManager, factory: RecordingFactory, store: SessionStore
) -> None:
    live = await manager.initialize(ALICE)
    sid = live.session_id
    record = await store.load(sid)
    assert await store.update(sid, {**record, "backend:alpha": "someone-else-reinitialized"})
    assert await manager.get(sid, ALICE) is live
    assert factory.restore_calls == []
    assert await store.update(sid, {**record, md.BACKENDS: "alpha"})
    rebuilt = await manager.get(sid, ALICE)
    assert rebuilt is not live
    assert factory.restore_calls[0][2] == ["alpha"]
    await manager.wait_closed()
    assert isinstance(live, FakeLiveSession)
    assert live.close_count == 1


async def test_b29_notify_backend_expired(
    manager: SessionManager, store: SessionStore
) -> None:
    await manager.notify_backend_expired("missing", "alpha")
    with pytest.raises(SessionNotFound):
        await store.load("missing")
    placeholder = await manager.generate()
    await manager.terminate(placeholder, ANONYMOUS)
    await manager.notify_backend_expired(placeholder, "alpha")
    assert await store.load(placeholder) == {md.TERMINATED: "true"}
    assert await store.create("nolist", {md.IDENTITY: "unauthenticated"})
    await manager.notify_backend_expired("nolist", "alpha")
    assert await store.load("nolist") == {md.IDENTITY: "unauthenticated"}

    live = await manager.initialize(ALICE)
    before = await store.load(live.session_id)
    snapshot = dict(before)
    await manager.notify_backend_expired(live.session_id, "alpha")
    after = await store.load(live.session_id)
    assert after[md.BACKENDS] == "beta"
    assert "backend:alpha" not in after
    assert after["backend:beta"] == before["backend:beta"]
    assert before == snapshot


async def test_b30_decorate_session(manager: SessionManager, store: SessionStore) -> None:
    async def identity_decorator(live: LiveSession) -> LiveSession:
        return live

    with pytest.raises(SessionNotFound):
        await manager.decorate_session("unknown", identity_decorator)
    live = await manager.initialize(ALICE)

    async def returns_none(live: LiveSession) -> None:
        return None

    async def returns_other(live: LiveSession) -> LiveSession:
        return FakeLiveSession("other", [], {}, ALICE)

    for bad in (returns_none, returns_other):
        with pytest.raises(DecorationError):
            await manager.decorate_session(live.session_id, bad)

    class Wrapped(FakeLiveSession):
        pass

    async def wrap(inner: LiveSession) -> LiveSession:
        return Wrapped(inner.session_id, inner.backend_names(),
                       {**inner.backend_states(), "alpha": "decorated"}, ALICE)

    decorated = await manager.decorate_session(live.session_id, wrap)
    assert await manager.get(live.session_id, ALICE) is decorated
    assert (await store.load(live.session_id))["backend:alpha"] == "decorated"
    await manager.wait_closed()
    assert isinstance(live, FakeLiveSession)
    assert live.close_count == 0  # the wrapper still needs the original open


async def test_race_a_terminate_between_decorate_swap_and_store_write(
    factory: RecordingFactory, store: SessionStore
) -> None:
    """A terminate landing after the swap must not be undone by the decorate's write."""
    manager = SessionManager(store, factory)
    live = await manager.initialize(ALICE)
    sid = live.session_id
    write_reached = asyncio.Event()
    proceed = asyncio.Event()

    class GatedStore:
        """Holds the decorate's first store call: by then the cache swap is done."""

        def __getattr__(self, name: str) -> object:
            return getattr(store, name)

        async def load(self, session_id: str) -> dict[str, str]:
            write_reached.set()
            await proceed.wait()
            return await store.load(session_id)

    manager._store = GatedStore()  # type: ignore[assignment]

    async def wrap(inner: LiveSession) -> LiveSession:
        return FakeLiveSession(sid, inner.backend_names(), inner.backend_states(), ALICE)

    decorating = asyncio.create_task(manager.decorate_session(sid, wrap))
    await write_reached.wait()
    assert manager.is_cached(sid)
    await store.delete(sid)           # terminate, as another replica would
    manager.evict_local(sid)
    proceed.set()
    with anyio.fail_after(5), pytest.raises(SessionNotFound):
        await decorating
    with pytest.raises(SessionNotFound):
        await store.load(sid)
    assert not manager.is_cached(sid)
    await manager.aclose()


async def test_race_b_restore_finishing_after_create_keeps_the_created_session(
    store: SessionStore, factory: RecordingFactory
) -> None:
    """A restore that lands after a create stored its live session is closed, not cached."""
    manager = SessionManager(store, factory)
    update_done = asyncio.Event()
    let_create_finish = asyncio.Event()

    class PausingStore:
        def __getattr__(self, name: str) -> object:
            return getattr(store, name)

        async def update(self, session_id: str, metadata: Mapping[str, str]) -> bool:
            ok = await store.update(session_id, metadata)
            if md.IDENTITY in metadata and not update_done.is_set():
                update_done.set()
                await let_create_finish.wait()
            return ok

    manager._store = PausingStore()  # type: ignore[assignment]
    session_id = await manager.generate()
    creating = asyncio.create_task(manager.create_session(session_id, ALICE))
    await update_done.wait()          # the full record is stored; not yet cached
    factory.restore_gate = asyncio.Event()
    restoring = asyncio.create_task(manager.get(session_id, ALICE))
    await factory.restore_started.wait()
    let_create_finish.set()
    created = await creating
    factory.restore_gate.set()
    with anyio.fail_after(5):
        served = await restoring
    assert served is created
    await manager.wait_closed()
    assert factory.restored[0].close_count == 1
    assert isinstance(created, FakeLiveSession)
    assert created.close_count == 0
    await manager.aclose()


async def test_b33_steady_traffic_keeps_a_session_for_many_ttls() -> None:
    now = [0.0]
    store = MemoryStore(ttl_seconds=10, clock=lambda: now[0])
    manager = SessionManager(store, RecordingFactory())
    live = await manager.initialize(ANONYMOUS)
    for _ in range(20):
        now[0] += 7
        assert await manager.get(live.session_id, ANONYMOUS) is live
    now[0] += 11
    with pytest.raises(SessionNotFound):
        await manager.get(live.session_id, ANONYMOUS)
    await manager.aclose()


async def test_liveness_interval_trades_store_round_trips_for_staleness(
    store: SessionStore, factory: RecordingFactory
) -> None:
    """Opt-in: within the interval a cached session is served without a store check."""
    loads: list[str] = []

    class CountingStore:
        def __getattr__(self, name: str) -> object:
            return getattr(store, name)

        async def load(self, session_id: str) -> dict[str, str]:
            loads.append(session_id)
            return await store.load(session_id)

    relaxed = SessionManager(CountingStore(), factory,  # type: ignore[arg-type]
                             liveness_interval=3600)
    strict = SessionManager(store, RecordingFactory())
    live = await relaxed.initialize(ALICE)
    before = len(loads)
    for _ in range(5):
        assert await relaxed.get(live.session_id, ALICE) is live
    assert len(loads) == before            # no store round trip within the interval
    await strict.terminate(live.session_id, ALICE)
    assert await relaxed.get(live.session_id, ALICE) is live   # the documented staleness
    await strict.aclose()
    await relaxed.aclose()


async def test_a_copy_rebuilt_while_a_reconcile_runs_is_the_one_kept(
    manager: SessionManager, factory: RecordingFactory, store: SessionStore
) -> None:
    """A recovered backend joins the live sessions (a slow connect); meanwhile a request
    sees that another replica changed the stored backend list and rebuilds this copy,
    closing the old one. The reconcile must not put the closed copy back in the cache
    (every later request would be refused as if the session were gone) nor write the
    old backend list over the newer one."""
    live = await manager.initialize(ALICE)
    sid = live.session_id
    reconciling = asyncio.Event()
    go_on = asyncio.Event()

    async def slow_reconcile(session: LiveSession) -> bool:
        reconciling.set()
        await go_on.wait()
        return True

    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.reconcile_live_sessions, slow_reconcile)
        await reconciling.wait()
        record = await store.load(sid)
        assert await store.update(sid, {**record, md.BACKENDS: "alpha,beta,gamma"})
        rebuilt = await manager.get(sid, ALICE)
        assert rebuilt is not live
        go_on.set()
    assert await manager.get(sid, ALICE) is rebuilt
    assert (await store.load(sid))[md.BACKENDS] == "alpha,beta,gamma"


async def test_calls_on_a_copy_outdated_by_another_replica_finish_before_it_closes(
    manager: SessionManager, factory: RecordingFactory, store: SessionStore
) -> None:
    """Another replica changed the stored backend list (a backend rejoined there): this
    replica rebuilds its copy for new requests. The session lives on, so a call already
    running on the old copy must finish there, not be answered "session not found" (seen
    in a chaos run: a sampling call answered -32001 while its session was live)."""
    live = await manager.initialize(ALICE)
    assert isinstance(live, FakeLiveSession)
    sid = live.session_id
    live.idle.clear()  # a call is running on it
    record = await store.load(sid)
    assert await store.update(sid, {**record, md.BACKENDS: "alpha,beta,gamma"})
    rebuilt = await manager.get(sid, ALICE)
    assert rebuilt is not live
    await anyio.wait_all_tasks_blocked()
    assert live.close_count == 0
    live.idle.set()  # the call is done
    with anyio.fail_after(5):
        await manager.wait_closed()
    assert live.close_count == 1


async def test_an_outdated_copy_does_not_hold_shutdown_up(
    manager: SessionManager, factory: RecordingFactory, store: SessionStore
) -> None:
    live = await manager.initialize(ALICE)
    assert isinstance(live, FakeLiveSession)
    live.idle.clear()
    record = await store.load(live.session_id)
    assert await store.update(live.session_id, {**record, md.BACKENDS: "alpha"})
    await manager.get(live.session_id, ALICE)
    with anyio.fail_after(5):
        await manager.aclose()
    assert live.close_count == 1
