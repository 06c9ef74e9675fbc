"""SessionManager lifecycle (B16-B30, B33), on the memory store and on real Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import anyio
import pytest

from tests.session.conftest import ALICE, MALLORY, FakeLiveSession, RecordingFactory
from vmcp.backend.contract import BackendState
from vmcp.errors import (
    DecorationError,
    InvalidSessionId,
    SessionNotFound,
    SessionNotYours,
    SessionTerminated,
    StoreError,
    StoreUnavailable,
)
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
    live = await manager.initialize(ALICE, ["sampling", "elicitation"])
    record = await store.load(live.session_id)
    assert record == {
        md.IDENTITY: "https://idp.example\x00alice",
        md.BACKENDS: "alpha,beta",
        md.CLIENT_CAPABILITIES: "elicitation,sampling",
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
    with anyio.fail_after(5):
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
    with anyio.fail_after(5):
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
    with anyio.fail_after(5):
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
    with anyio.fail_after(5):
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
    with anyio.fail_after(5):
        await update_done.wait()          # the full record is stored; not yet cached
    factory.restore_gate = asyncio.Event()
    restoring = asyncio.create_task(manager.get(session_id, ALICE))
    with anyio.fail_after(5):
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


@pytest.mark.parametrize("bad", ["", "a b", "x" * 129, "\x00"])
async def test_b3_a_malformed_session_id_sends_no_store_command_on_any_request_path(
    redis_store: RedisStore, factory: RecordingFactory, bad: str
) -> None:
    """Counted on the Redis server: the id is refused before the store is asked."""
    manager = SessionManager(redis_store, factory)

    async def sent() -> int:
        stats = await redis_store.client.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")

    async def keep(live: LiveSession) -> LiveSession:
        return live

    await redis_store.ping()
    before = await sent()
    for call in (lambda: manager.get(bad, ALICE), lambda: manager.terminate(bad, ALICE),
                 lambda: manager.create_session(bad, ALICE),
                 lambda: manager.decorate_session(bad, keep)):
        with pytest.raises(InvalidSessionId):
            await call()
    assert await sent() == before
    assert factory.restore_calls == []
    assert not factory.open_started.is_set()
    await manager.aclose()


async def test_a_reload_stores_the_changed_sessions_lists_and_states_and_keeps_the_rest(
    manager: SessionManager, factory: RecordingFactory, store: SessionStore
) -> None:
    unchanged = await manager.initialize(ALICE)     # first in line, and not changed
    changed = await manager.initialize(ALICE)
    sid = changed.session_id
    record = await store.load(sid)
    assert await store.update(sid, {**record, "note": "kept"})
    untouched = await store.load(unchanged.session_id)

    async def drop_beta(live: LiveSession) -> bool:
        if live.session_id != sid:
            return False
        assert isinstance(live, FakeLiveSession)
        live._backends, live._states = ["alpha"], {"alpha": "alpha-after-reload"}
        return True

    assert await manager.reconcile_live_sessions(drop_beta) == 1
    assert await store.load(sid) == {md.IDENTITY: record[md.IDENTITY], md.BACKENDS: "alpha",
                                     md.CLIENT_CAPABILITIES: "",
                                     "backend:alpha": "alpha-after-reload", "note": "kept"}
    assert await store.load(unchanged.session_id) == untouched
    # The cached copy took the new list: the next request is a plain hit, not a rebuild,
    # and the live session was kept open.
    assert await manager.get(sid, ALICE) is changed
    assert factory.restore_calls == []
    await manager.wait_closed()
    assert isinstance(changed, FakeLiveSession)
    assert changed.close_count == 0


async def test_a_reload_goes_on_past_a_session_it_cannot_store(
    store: SessionStore, factory: RecordingFactory
) -> None:
    manager = SessionManager(store, factory)
    failing = await manager.initialize(ALICE)
    other = await manager.initialize(ALICE)
    ended = await manager.initialize(ALICE)
    record = await store.load(ended.session_id)
    assert await store.update(ended.session_id, {**record, md.TERMINATED: "true"})

    class FailingForOne:
        def __getattr__(self, name: str) -> object:
            return getattr(store, name)

        async def load(self, session_id: str) -> dict[str, str]:
            if session_id == failing.session_id:
                raise StoreUnavailable("connection reset")
            return await store.load(session_id)

    manager._store = FailingForOne()  # type: ignore[assignment]

    async def drop_beta(live: LiveSession) -> bool:
        assert isinstance(live, FakeLiveSession)
        live._backends = ["alpha"]
        return True

    assert await manager.reconcile_live_sessions(drop_beta) == 3
    assert (await store.load(other.session_id))[md.BACKENDS] == "alpha"
    assert (await store.load(failing.session_id))[md.BACKENDS] == "alpha,beta"
    assert (await store.load(ended.session_id))[md.BACKENDS] == "alpha,beta"
    await manager.aclose()


async def test_terminate_of_an_expired_session_closes_the_copy_held_here(
    manager: SessionManager, store: SessionStore
) -> None:
    live = await manager.initialize(ALICE)
    await store.delete(live.session_id)          # its record expired
    assert await manager.terminate(live.session_id, ALICE) is False
    assert not manager.is_cached(live.session_id)
    await manager.wait_closed()
    assert isinstance(live, FakeLiveSession)
    assert live.close_count == 1


async def test_a_strangers_attempt_is_logged_as_a_security_event_naming_the_session(
    manager: SessionManager, caplog: pytest.LogCaptureFixture
) -> None:
    live = await manager.initialize(ALICE)
    with caplog.at_level(logging.WARNING, logger="vmcp.session.manager"), \
            pytest.raises(SessionNotYours):
        await manager.terminate(live.session_id, MALLORY)
    events = [r for r in caplog.records if getattr(r, "security_event", False)]
    assert [getattr(r, "session_id", None) for r in events] == [live.session_id]
    assert manager.statistics().security_events == 1
    assert await manager.get(live.session_id, ALICE) is live


async def test_evict_local_says_whether_a_copy_was_held(manager: SessionManager) -> None:
    live = await manager.initialize(ALICE)
    assert manager.evict_local(live.session_id) is True
    assert manager.evict_local(live.session_id) is False
    assert manager.evict_local("never-held") is False
    await manager.wait_closed()
    assert isinstance(live, FakeLiveSession)
    assert live.close_count == 1


async def test_a_backend_without_a_stored_state_is_dropped_all_the_same(
    manager: SessionManager, store: SessionStore
) -> None:
    assert await store.create("s", {md.IDENTITY: "unauthenticated", md.BACKENDS: "alpha,beta",
                                    "backend:beta": "b"})
    await manager.notify_backend_expired("s", "alpha")
    assert await store.load("s") == {md.IDENTITY: "unauthenticated", md.BACKENDS: "beta",
                                     "backend:beta": "b"}


async def test_decorate_errors_name_the_session(manager: SessionManager,
                                                store: SessionStore) -> None:
    async def keep(live: LiveSession) -> LiveSession:
        return live

    async def none(live: LiveSession) -> None:
        return None

    with pytest.raises(SessionNotFound, match="unknown-id"):
        await manager.decorate_session("unknown-id", keep)
    live = await manager.initialize(ALICE)
    with pytest.raises(DecorationError, match=f"must return session '{live.session_id}'"):
        await manager.decorate_session(live.session_id, none)
    await store.delete(live.session_id)
    with pytest.raises(SessionNotFound, match=live.session_id):
        await manager.decorate_session(live.session_id, keep)
    assert manager.statistics().cache.size == 0
    assert manager.statistics().cache.removals == 1


async def test_b38_a_copy_dropped_for_capacity_keeps_its_upstream_sessions(
    store: SessionStore, factory: RecordingFactory
) -> None:
    manager = SessionManager(store, factory, cache_capacity=1)
    first = await manager.initialize(ALICE)
    second = await manager.initialize(ALICE)          # pushes the first out
    await manager.wait_closed()
    assert isinstance(first, FakeLiveSession)
    assert first.ended_upstream == [False]
    assert await manager.terminate(first.session_id, ALICE) is True   # no copy here
    assert factory.ended == [(first.session_id, ["alpha", "beta"],
                              {"alpha": "alpha-upstream-1", "beta": "beta-upstream-1"})]
    assert await manager.terminate(second.session_id, ALICE) is True  # its copy ends them
    await manager.wait_closed()
    assert isinstance(second, FakeLiveSession)
    assert second.ended_upstream == [True]
    assert len(factory.ended) == 1
    await manager.aclose()


async def test_terminate_of_a_bound_record_without_a_backend_list_ends_nothing_upstream(
    manager: SessionManager, factory: RecordingFactory, store: SessionStore
) -> None:
    assert await store.create("odd", {md.IDENTITY: "unauthenticated"})
    assert await manager.terminate("odd", ANONYMOUS) is True
    assert factory.ended == []          # no upstream session recorded: nothing to end


async def test_a_restore_needs_the_caller_it_runs_for(manager: SessionManager) -> None:
    live = await manager.initialize(ALICE)
    manager.evict_local(live.session_id)
    with pytest.raises(RuntimeError, match=r"^a restore runs on behalf of a caller \(see get\)$"):
        await manager._restore(live.session_id)


async def test_decorating_an_ended_session_names_it(manager: SessionManager,
                                                    store: SessionStore) -> None:
    live = await manager.initialize(ALICE)
    record = await store.load(live.session_id)
    assert await store.update(live.session_id, {**record, md.TERMINATED: "true"})

    async def keep(session: LiveSession) -> LiveSession:
        return session

    with pytest.raises(SessionNotFound, match=live.session_id):
        await manager.decorate_session(live.session_id, keep)


async def test_record_backend_state_writes_nothing_where_it_has_no_business(
    manager: SessionManager, store: SessionStore
) -> None:
    assert await md.record_backend_state(store, "missing", "alpha", "s") is False
    placeholder = await manager.generate()
    assert await md.record_backend_state(store, placeholder, "alpha", "s") is False
    assert await store.load(placeholder) == {}
    live = await manager.initialize(ALICE)
    before = await store.load(live.session_id)
    assert await md.record_backend_state(store, live.session_id, "gamma", "s") is False
    assert await store.load(live.session_id) == before


async def test_generate_gives_up_clearly_when_no_fresh_id_can_be_reserved(
    store: SessionStore, factory: RecordingFactory
) -> None:
    class Crowded:
        def __getattr__(self, name: str) -> object:
            return getattr(store, name)

        async def create(self, session_id: str, metadata: Mapping[str, str]) -> bool:
            return False

    manager = SessionManager(Crowded(), factory)  # type: ignore[arg-type]
    with pytest.raises(SessionTerminated, match=r"^could not reserve a unique session id$"):
        await manager.generate()
    placeholder = await SessionManager(store, factory).generate()
    await SessionManager(store, factory).terminate(placeholder, ANONYMOUS)
    with pytest.raises(SessionTerminated, match=placeholder):
        await SessionManager(store, factory).create_session(placeholder, ALICE)
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


async def test_a_re_initialization_is_recorded_only_over_the_upstream_session_it_replaced(
    manager: SessionManager, store: SessionStore
) -> None:
    # A backend came back, and two replicas holding the session re-initialized it, each
    # opening an upstream session of its own in place of "dead". The first records; the
    # second must not write over it (that upstream session would be known to nobody,
    # never ended) and hears False, so that its connection ends its own.
    live = await manager.initialize(ALICE)
    key = md.backend_state_key("alpha")

    def state(upstream: str) -> str:
        return BackendState(upstream, "2025-11-25", {}).to_json()

    sid = live.session_id
    assert await md.record_backend_state(store, sid, "alpha", state("dead"))
    assert await md.record_backend_state(store, sid, "alpha", state("first"), replaces="dead")
    assert not await md.record_backend_state(store, sid, "alpha", state("second"),
                                             replaces="dead")
    assert (await store.load(sid))[key] == state("first")
    # The winner's next re-initialization replaces its own, and is recorded.
    assert await md.record_backend_state(store, sid, "alpha", state("third"), replaces="first")


async def test_a_delete_whose_store_fails_after_the_seal_still_ends_the_upstream_sessions(
    store: SessionStore, factory: RecordingFactory
) -> None:
    # The record was marked ended and the end claimed, then the store failed before the
    # record went: the client gets 503, and a DELETE sent again would find the end
    # claimed already. The upstream sessions must end on this attempt.
    class DeleteFails:
        def __getattr__(self, name: str) -> object:
            return getattr(store, name)

        async def delete(self, session_id: str) -> None:
            raise StoreUnavailable("redis delete: connection reset")

    manager = SessionManager(DeleteFails(), factory, cache_capacity=1)  # type: ignore[arg-type]
    first = await manager.initialize(ALICE)
    await manager.initialize(ALICE)  # pushes the first's copy out: its states are recorded
    await manager.wait_closed()
    with pytest.raises(StoreError):
        await manager.terminate(first.session_id, ALICE)
    assert factory.ended == [(first.session_id, ["alpha", "beta"],
                              {"alpha": "alpha-upstream-1", "beta": "beta-upstream-1"})]
    assert md.is_terminated(await store.load(first.session_id))  # nobody serves it again
    await manager.aclose()
