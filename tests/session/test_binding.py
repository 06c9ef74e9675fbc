"""Identity binding (B39-B45): who may use a session, on every replica."""

from __future__ import annotations

import asyncio
import logging

import anyio
import pytest
from starlette.datastructures import Headers

from tests.session.conftest import (
    ALICE,
    ALICE_OTHER_ISSUER,
    ALICE_REFRESHED,
    MALLORY,
    RecordingFactory,
)
from vmcp.errors import InvalidIdentity, SessionError, SessionNotFound, SessionNotYours
from vmcp.identity import (
    ANONYMOUS,
    Principal,
    act_for,
    binding_for,
    check_binding,
    current_caller,
    is_well_formed,
    request_scope,
)
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
        with anyio.fail_after(5):
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


@pytest.mark.parametrize(("binding", "well_formed"), [
    ("unauthenticated", True), ("iss\x00sub", True), ("a\x00b\x00c", False),
    ("\x00sub", False), ("iss\x00", False), ("no-separator", False), ("", False),
])
def test_b43_a_well_formed_binding_has_exactly_two_non_empty_parts(
    binding: str, well_formed: bool
) -> None:
    assert is_well_formed(binding) is well_formed


@pytest.mark.parametrize(("stored", "caller", "reason"), [
    (None, ANONYMOUS, "stored binding missing or corrupt"),
    ("a\x00b\x00c", Principal("a", "b\x00c", token="t"), "stored binding missing or corrupt"),
    ("iss\x00alice", Principal("iss", "", token="t"), "caller identity unusable"),
    ("iss\x00alice", Principal("iss", "bob", token="t"), "caller is not the session's identity"),
    ("unauthenticated", Principal("iss", "alice", token="t"),
     "caller is not the session's identity"),
])
def test_every_refusal_says_why(stored: str | None, caller: Principal, reason: str) -> None:
    with pytest.raises(SessionNotYours) as refused:
        check_binding(stored, caller)
    assert str(refused.value) == reason
    check_binding("iss\x00alice", Principal("iss", "alice", token="t"))   # the owner passes


async def test_a_strangers_request_is_a_security_event_naming_the_session_on_every_path(
    store: SessionStore, factory: RecordingFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Cached here, or only in the store: both refusals are logged with the session id."""
    creator = SessionManager(store, factory)
    other = SessionManager(store, RecordingFactory())
    live = await creator.initialize(ALICE)
    with caplog.at_level(logging.WARNING, logger="vmcp.session.manager"):
        for manager in (creator, other):
            with pytest.raises(SessionNotYours):
                await manager.get(live.session_id, MALLORY)
    events = [r for r in caplog.records if getattr(r, "security_event", False)]
    assert [getattr(r, "session_id", None) for r in events] == [live.session_id] * 2
    with pytest.raises(SessionNotFound, match="never-created"):
        await other.get("never-created", ALICE)
    placeholder = await creator.generate()
    with pytest.raises(SessionNotFound, match=placeholder):
        await other.get(placeholder, ALICE)
    await creator.aclose()
    await other.aclose()


def test_the_caller_acted_for_is_seen_with_its_headers_within_its_request_only() -> None:
    assert current_caller() is None
    with request_scope():
        act_for(ALICE, Headers({"x-tenant": "t1"}))
        caller = current_caller()
        assert caller is not None
        assert caller.principal == ALICE
        assert caller.headers["x-tenant"] == "t1"
        assert "alice-token" not in repr(caller)
    assert current_caller() is None


@pytest.mark.parametrize(("principal", "reason"), [
    (Principal("iss", None, token="t"), "credentials without issuer and subject"),
    (Principal("iss\x00x", "sub", token="t"), "issuer or subject contains NUL"),
])
def test_b40_an_unusable_identity_says_why(principal: Principal, reason: str) -> None:
    with pytest.raises(InvalidIdentity) as refused:
        binding_for(principal)
    assert str(refused.value) == reason
