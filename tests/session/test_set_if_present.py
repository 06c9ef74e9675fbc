"""Every write after create is set-if-present, tested where each write happens.

Each test holds one of the manager's later writes after its load, ends the session in
that gap (a terminate on another replica, or the record expiring), then lets the write
go on: the write must fail and the session must stay ended. Turned into an upsert
(an unconditional set, or update-else-create), the write would bring the session back,
and the test fails. Runs on the memory store and on real Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import anyio
import pytest

from tests.session.conftest import ALICE, FakeLiveSession, RecordingFactory
from tests.session.pausing_store import PausingStore
from vmcp.errors import SessionNotFound
from vmcp.identity import ANONYMOUS
from vmcp.session import LiveSession, SessionManager
from vmcp.session import metadata as md
from vmcp.store import SessionStore

pytestmark = pytest.mark.anyio
T = TypeVar("T")


@pytest.fixture
def pausing(store: SessionStore) -> PausingStore:
    return PausingStore(store)


@pytest.fixture
async def this(pausing: PausingStore, factory: RecordingFactory
               ) -> AsyncIterator[SessionManager]:
    """The replica whose write is held."""
    manager = SessionManager(pausing, factory)  # type: ignore[arg-type]
    yield manager
    await manager.aclose()


@pytest.fixture
async def other(store: SessionStore) -> AsyncIterator[SessionManager]:
    """Another replica on the same store: it ends sessions while ``this`` writes."""
    manager = SessionManager(store, RecordingFactory())
    yield manager
    await manager.aclose()


async def end_during_write(pausing: PausingStore, session_id: str, write: Awaitable[T],
                           end: Callable[[], Awaitable[object]]) -> asyncio.Task[T]:
    """Start ``write`` with its store write held after its load, run ``end`` in that gap,
    then let the write go on. Returns the write's task."""
    held = pausing.hold_next_update(session_id)
    task = asyncio.create_task(write)  # type: ignore[arg-type]
    with anyio.fail_after(5):
        await held.reached.wait()
    await end()
    held.release.set()
    return task


def terminate_on(replica: SessionManager, session_id: str) -> Callable[[], Awaitable[object]]:
    async def terminate() -> None:
        assert await replica.terminate(session_id, ALICE) is True
    return terminate


def expire(store: SessionStore, session_id: str) -> Callable[[], Awaitable[object]]:
    return lambda: store.delete(session_id)


async def assert_gone(store: SessionStore, session_id: str) -> None:
    with pytest.raises(SessionNotFound):
        await store.load(session_id)


async def test_a_terminate_between_decorate_load_and_write_is_not_undone(
    this: SessionManager, other: SessionManager, pausing: PausingStore, store: SessionStore
) -> None:
    live = await this.initialize(ALICE)
    sid = live.session_id

    async def wrap(inner: LiveSession) -> LiveSession:
        return FakeLiveSession(sid, inner.backend_names(),
                               {**inner.backend_states(), "alpha": "decorated"}, ALICE)

    decorating = await end_during_write(pausing, sid, this.decorate_session(sid, wrap),
                                        terminate_on(other, sid))
    with anyio.fail_after(5), pytest.raises(SessionNotFound):
        await decorating
    await assert_gone(store, sid)
    assert not this.is_cached(sid)


async def test_a_terminate_between_record_backend_state_load_and_write_is_not_undone(
    this: SessionManager, other: SessionManager, pausing: PausingStore, store: SessionStore
) -> None:
    live = await this.initialize(ALICE)
    sid = live.session_id
    recording = await end_during_write(
        pausing, sid, md.record_backend_state(
            pausing, sid, "alpha", "reinitialized"),  # type: ignore[arg-type]
        terminate_on(other, sid))
    with anyio.fail_after(5):
        assert await recording is False
    await assert_gone(store, sid)


async def test_a_terminate_between_notify_backend_expired_load_and_write_is_not_undone(
    this: SessionManager, other: SessionManager, pausing: PausingStore, store: SessionStore
) -> None:
    live = await this.initialize(ALICE)
    sid = live.session_id
    notifying = await end_during_write(pausing, sid, this.notify_backend_expired(sid, "alpha"),
                                       terminate_on(other, sid))
    with anyio.fail_after(5):
        await notifying
    await assert_gone(store, sid)


async def test_a_terminate_between_restore_load_and_write_back_closes_the_restored_copy(
    this: SessionManager, other: SessionManager, pausing: PausingStore, store: SessionStore,
    factory: RecordingFactory,
) -> None:
    """``this`` has an empty cache: the request restores ``other``'s session, and the
    owner's DELETE lands between the restore's load and its write-back."""
    live = await other.initialize(ALICE)
    sid = live.session_id
    restoring = await end_during_write(pausing, sid, this.get(sid, ALICE),
                                       terminate_on(other, sid))
    with anyio.fail_after(5), pytest.raises(SessionNotFound, match=sid):
        await restoring
    await assert_gone(store, sid)
    assert not this.is_cached(sid)
    assert factory.restored[0].close_count == 1


async def test_a_terminate_between_reconcile_load_and_write_is_not_undone(
    this: SessionManager, other: SessionManager, pausing: PausingStore, store: SessionStore
) -> None:
    live = await this.initialize(ALICE)
    sid = live.session_id

    async def drop_beta(session: LiveSession) -> bool:
        assert isinstance(session, FakeLiveSession)
        session._backends = ["alpha"]
        return True

    reconciling = await end_during_write(pausing, sid, this.reconcile_live_sessions(drop_beta),
                                         terminate_on(other, sid))
    with anyio.fail_after(5):
        await reconciling
    await assert_gone(store, sid)


async def test_a_placeholder_gone_before_the_full_write_is_not_created(
    this: SessionManager, pausing: PausingStore, store: SessionStore, factory: RecordingFactory
) -> None:
    """The placeholder-to-full transition: backends connected and the placeholder
    re-checked, then the record vanishes (its TTL ran out) before the full record is
    written. The write must not create it; the new live session is closed."""
    sid = await this.generate()
    creating = await end_during_write(pausing, sid, this.create_session(sid, ALICE),
                                      expire(store, sid))
    with anyio.fail_after(5), pytest.raises(SessionNotFound):
        await creating
    await assert_gone(store, sid)
    assert not this.is_cached(sid)
    assert factory.opened[0].close_count == 1


async def test_a_placeholder_gone_before_terminate_marks_it_is_not_created(
    this: SessionManager, pausing: PausingStore, store: SessionStore
) -> None:
    placeholder = await this.generate()
    terminating = await end_during_write(pausing, placeholder,
                                         this.terminate(placeholder, ANONYMOUS),
                                         expire(store, placeholder))
    with anyio.fail_after(5):
        assert await terminating is False
    await assert_gone(store, placeholder)


async def test_a_placeholder_gone_while_backends_fail_is_not_marked_into_existence(
    this: SessionManager, store: SessionStore, factory: RecordingFactory
) -> None:
    """B19's marking is set-if-present too: a failed creation of an expired placeholder
    leaves no record behind."""
    sid = await this.generate()
    factory.open_gate = asyncio.Event()
    factory.open_error = RuntimeError("no backend answered")
    creating = asyncio.create_task(this.create_session(sid, ALICE))
    with anyio.fail_after(5):
        await factory.open_started.wait()
    await store.delete(sid)
    factory.open_gate.set()
    with anyio.fail_after(5), pytest.raises(RuntimeError):
        await creating
    await assert_gone(store, sid)


async def test_writes_on_a_live_session_still_land(
    this: SessionManager, store: SessionStore
) -> None:
    """The same writes with nobody ending the session: each one is stored."""
    live = await this.initialize(ALICE)
    sid = live.session_id
    assert await md.record_backend_state(store, sid, "alpha", "reinitialized") is True
    assert (await store.load(sid))[md.backend_state_key("alpha")] == "reinitialized"
    await this.notify_backend_expired(sid, "beta")
    assert (await store.load(sid))[md.BACKENDS] == "alpha"
