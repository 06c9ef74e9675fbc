"""Identity binding (B39-B45): who may use a session, on every replica."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from tests.session.conftest import (
    ALICE,
    ALICE_OTHER_ISSUER,
    ALICE_REFRESHED,
    MALLORY,
    RecordingFactory,
)
from vmcp.errors import InvalidIdentity, SessionError, SessionNotYours
from vmcp.identity import ANONYMOUS, Principal, binding_for, check_binding
from vmcp.session import SessionManager
from vmcp.session import metadata as md
from vmcp.store import SessionStore

pytestmark = pytest.mark.anyio


def test_b39_binding_is_issuer_nul_subject_or_unauthenticated() -> None:
    assert binding_for(ALICE) == "https://idp.example\x00alice"
    assert binding_for(ANONYMOUS) == "unauthenticated"


@pytest.mark.parametrize("principal", [
    Principal("", "alice", token="t"),
    Principal("iss", "", token="t"),
    Principal(None, "alice", token="t"),
    Principal("iss", None, token="t"),
    Principal("is\x00s", "alice", token="t"),
    Principal("iss", "al\x00ice", token="t"),
    Principal(None, None, token="t"),
])
def test_b39_empty_parts_or_nul_are_rejected(principal: Principal) -> None:
    with pytest.raises(InvalidIdentity):
        binding_for(principal)


def test_tokens_never_appear_in_repr() -> None:
    assert "alice-token-1" not in repr(ALICE)


@pytest.mark.parametrize("principal", [Principal("", "x", token="t"), Principal(None, None, "t")])
async def test_b40_unusable_identity_fails_creation_and_stores_nothing(
    store: SessionStore, principal: Principal
) -> None:
    factory = RecordingFactory()
    manager = SessionManager(store, factory)
    generated: list[str] = []
    original = manager.generate

    async def spy() -> str:
        generated.append(await original())
        return generated[-1]

    manager.generate = spy  # type: ignore[method-assign]
    with pytest.raises(InvalidIdentity):
        await manager.initialize(principal)
    assert generated == []
    assert factory.opened == []
    await manager.aclose()


async def test_b41_refreshed_token_is_accepted_even_concurrently(
    manager: SessionManager,
) -> None:
    live = await manager.initialize(ALICE)
    results = await asyncio.gather(
        *(manager.get(live.session_id, p) for p in [ALICE, ALICE_REFRESHED] * 10)
    )
    assert all(r is live for r in results)


@pytest.mark.parametrize("stranger", [MALLORY, ALICE_OTHER_ISSUER, ANONYMOUS])
async def test_b41_other_principals_are_refused_and_the_owner_keeps_working(
    manager: SessionManager, store: SessionStore, stranger: Principal
) -> None:
    live = await manager.initialize(ALICE)
    record = await store.load(live.session_id)
    with pytest.raises(SessionNotYours) as caught:
        await manager.get(live.session_id, stranger)
    assert isinstance(caught.value, SessionError)  # answered like an unknown session
    assert caught.value.http_status == 404
    assert caught.value.jsonrpc_code == -32001
    with pytest.raises(SessionNotYours):
        await manager.terminate(live.session_id, stranger)
    assert await manager.get(live.session_id, ALICE) is live
    assert await store.load(live.session_id) == record


async def test_b42_anonymous_session_refuses_a_caller_with_a_token(
    manager: SessionManager,
) -> None:
    live = await manager.initialize(ANONYMOUS)
    with pytest.raises(SessionNotYours):
        await manager.get(live.session_id, ALICE)
    with pytest.raises(SessionNotYours):
        await manager.get(live.session_id, Principal(token="opaque"))
    assert await manager.get(live.session_id, ANONYMOUS) is live


@pytest.mark.parametrize("corrupt", ["", "just-one-part", "a\x00b\x00c", "\x00sub", "iss\x00"])
async def test_b43_corrupt_stored_binding_fails_closed(
    store: SessionStore, factory: RecordingFactory, corrupt: str
) -> None:
    assert await store.create("s", {md.IDENTITY: corrupt, md.BACKENDS: ""})
    manager = SessionManager(store, factory)
    for caller in (ANONYMOUS, ALICE, Principal("a", "b", token="t")):
        with pytest.raises(SessionNotYours):
            await manager.get("s", caller)
    assert factory.restore_calls == []
    with pytest.raises(SessionNotYours):
        check_binding(corrupt, ANONYMOUS)
    await manager.aclose()


async def test_b45_concurrent_requests_with_different_principals_each_see_their_own(
    store: SessionStore,
) -> None:
    creator = SessionManager(store, RecordingFactory())
    live = await creator.initialize(ALICE)
    factory = RecordingFactory()
    factory.restore_gate = asyncio.Event()
    other = SessionManager(store, factory)
    outcomes: dict[str, object] = {}

    async def call(name: str, principal: Principal) -> None:
        try:
            outcomes[name] = await other.get(live.session_id, principal)
        except SessionNotYours as exc:
            outcomes[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "alice", ALICE)
        await factory.restore_started.wait()
        tg.start_soon(call, "mallory", MALLORY)
        tg.start_soon(call, "alice2", ALICE_REFRESHED)
        await anyio.wait_all_tasks_blocked()
        factory.restore_gate.set()
    assert isinstance(outcomes["mallory"], SessionNotYours)
    assert outcomes["alice"] is outcomes["alice2"] is factory.restored[0]
    assert len(factory.restore_calls) == 1
    assert factory.restore_calls[0][1] == ALICE
    await creator.aclose()
    await other.aclose()
