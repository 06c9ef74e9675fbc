"""The transport-independent rules of BaseBackend, driven through an in-memory transport.

The transport below is a subclass with a dict of live sessions instead of a network, so
the interleavings that matter (a leader and its followers in the shared
re-initialization, a close during a call) can be set up exactly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import httpx2
import pytest

from vmcp.backend import BackendState, BackendTarget
from vmcp.backend.base import BaseBackend, Call, _SessionGone
from vmcp.errors import (
    BackendSessionExpired,
    BackendTimeout,
    BackendUnavailable,
    SessionClosed,
    StoreUnavailable,
)

pytestmark = pytest.mark.anyio


class MemoryBackend(BaseBackend):
    """A backend whose sessions are a set of ids; forgetting them mimics a restart."""

    def __init__(self, http: httpx2.AsyncClient) -> None:
        self.hook_calls: list[BackendState] = []

        async def on_reinitialized(replaced: BackendState, state: BackendState) -> bool:
            self.hook_calls.append(state)
            return True

        super().__init__(
            BackendTarget("memory", "http://memory.invalid/mcp"),
            http,
            client_info={"name": "t", "version": "1"},
            capabilities={},
            timeout=5,
            on_reinitialized=on_reinitialized,
            state=BackendState("s0", "2025-11-25", {}),
        )
        self.sessions = {"s0"}
        self.handshakes = 0
        self.handshake_gate: anyio.Event | None = None
        self.handshake_error: Exception | None = None
        self.call_gate: anyio.Event | None = None
        self.sent: list[bytes] = []
        self.something_sent = anyio.Event()
        self.terminated = 0
        self.calls: list[Call] = []

    async def _call(self, call: Call) -> dict[str, Any]:
        self.calls.append(call)
        session = self._state.session_id
        await anyio.lowlevel.checkpoint()
        if session not in self.sessions:
            raise _SessionGone
        if self.call_gate is not None:
            await self.call_gate.wait()
        return {"session": session}

    async def _send(self, body: bytes, headers: Mapping[str, str]) -> None:
        self.sent.append(body)
        self.something_sent.set()

    async def _handshake(self, protocol_version: str, headers: Mapping[str, str]) -> BackendState:
        self.handshakes += 1
        number = self.handshakes
        if self.handshake_gate is not None:
            await self.handshake_gate.wait()
        if self.handshake_error is not None:
            raise self.handshake_error
        session = f"s{number}"
        self.sessions.add(session)
        return BackendState(session, protocol_version, {})

    async def _terminate(self) -> None:
        self.terminated += 1


@pytest.fixture
async def backend() -> AsyncIterator[MemoryBackend]:
    async with httpx2.AsyncClient() as http:
        yield MemoryBackend(http)


async def test_concurrent_callers_share_one_reinitialization(backend: MemoryBackend) -> None:
    backend.sessions.clear()  # the backend restarted
    results: list[dict[str, Any]] = []

    async def call() -> None:
        results.append(await backend.request("tools/list", None))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(call)

    assert backend.handshakes == 1
    assert results == [{"session": "s1"}] * 20
    assert backend.hook_calls == [backend.state]
    assert backend.statistics().reinitializations == 1
    assert backend.statistics().errors == 0


async def test_caller_arriving_after_the_reinitialization_just_retries(
    backend: MemoryBackend,
) -> None:
    backend.sessions.clear()
    with anyio.fail_after(5):
        await backend.request("tools/list", None)
        # A caller that still holds the old generation finds it already replaced.
        await backend._recover(0)
    assert backend.handshakes == 1


async def test_a_failed_reinitialization_fails_every_waiting_caller(backend: MemoryBackend) -> None:
    backend.sessions.clear()
    backend.handshake_gate = anyio.Event()
    backend.handshake_error = BackendUnavailable("memory", "still down")
    failures: list[Exception] = []

    async def call() -> None:
        try:
            await backend.request("tools/list", None)
        except BackendUnavailable as exc:
            failures.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()  # the leader is in its handshake
            backend.handshake_gate.set()

    assert len(failures) == 5
    assert backend.handshakes == 1
    assert backend.statistics().errors == 5


async def test_a_follower_takes_over_when_the_leader_is_cancelled(backend: MemoryBackend) -> None:
    backend.sessions.clear()
    backend.handshake_gate = anyio.Event()
    results: list[dict[str, Any]] = []

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as leader_scope:
                async with anyio.create_task_group() as leader_group:
                    leader_group.start_soon(backend.request, "tools/list", None)
                    await anyio.wait_all_tasks_blocked()  # the leader is in its handshake

                    async def follower() -> None:
                        results.append(await backend.request("tools/list", None))

                    tg.start_soon(follower)
                    await anyio.wait_all_tasks_blocked()  # the follower waits for it
                    leader_scope.cancel()
            backend.handshake_gate.set()

    assert results == [{"session": "s2"}]
    assert backend.handshakes == 2


async def test_a_second_unknown_session_is_final(backend: MemoryBackend) -> None:
    backend.sessions.clear()
    backend.handshake_error = None

    async def forgetful_handshake(protocol_version: str,
                                  headers: Mapping[str, str]) -> BackendState:
        backend.handshakes += 1
        return BackendState("never-known", protocol_version, {})

    backend._handshake = forgetful_handshake  # type: ignore[method-assign]
    with anyio.fail_after(5), pytest.raises(BackendSessionExpired):
        await backend.request("tools/list", None)
    assert backend.handshakes == 1


async def test_deadline_sends_a_cancellation_notice(backend: MemoryBackend) -> None:
    backend.call_gate = anyio.Event()  # never set: the call hangs
    with anyio.fail_after(5), pytest.raises(BackendTimeout):
        await backend.request("tools/call", {"name": "x"}, timeout=0.05)
    with anyio.fail_after(5):  # the notice follows the answer, in the background
        await backend.something_sent.wait()
    assert len(backend.sent) == 1
    assert b'"notifications/cancelled"' in backend.sent[0]
    assert backend.statistics().errors == 1


async def test_aclose_refuses_new_calls_and_terminates_once(backend: MemoryBackend) -> None:
    with anyio.fail_after(5):
        await backend.aclose()
        await backend.aclose()
        with pytest.raises(SessionClosed):
            await backend.request("tools/list", None)
        with pytest.raises(SessionClosed):
            await backend.respond({"id": 1, "result": {}})
    assert backend.terminated == 1
    assert backend.statistics().requests == 0


async def test_concurrent_aclose_waits_for_the_first(backend: MemoryBackend) -> None:
    backend.call_gate = anyio.Event()
    order: list[str] = []

    async def close(name: str) -> None:
        await backend.aclose(timeout=5)
        order.append(name)

    async def call() -> None:
        await backend.request("tools/list", None)
        order.append("call")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(close, "first")
            tg.start_soon(close, "second")
            await anyio.wait_all_tasks_blocked()
            assert order == []  # both wait while the call is in flight
            backend.call_gate.set()

    assert order[0] == "call"
    assert sorted(order[1:]) == ["first", "second"]
    assert backend.terminated == 1


async def test_an_upstream_session_the_store_never_recorded_is_ended_by_its_connection(
        backend: MemoryBackend) -> None:
    """A re-initialize whose new state could not be recorded (the store was down): no
    other replica can end that upstream session, so this connection does, even when it
    closes only for this replica."""
    async def store_down(replaced: BackendState, state: BackendState) -> bool:
        raise StoreUnavailable("redis: down")

    backend._on_reinitialized = store_down
    backend.sessions.clear()  # the backend restarted: the call re-initializes
    with anyio.fail_after(5):
        await backend.request("tools/list", None)
        await backend.aclose(end_session=False)
    assert backend.terminated == 1


@pytest.mark.parametrize("outcome", ["session ended", "cancelled"])
async def test_an_upstream_session_the_store_did_not_take_is_ended_by_its_connection(
        backend: MemoryBackend, outcome: str) -> None:
    """The re-initialized state was not recorded: the session ended (or changed) before
    the write, or the write was cancelled with its request. The replica that ends the
    session ends only what the store knows, so this connection ends the new one."""
    writing = anyio.Event()

    async def not_recorded(replaced: BackendState, state: BackendState) -> bool:
        if outcome == "cancelled":
            writing.set()
            await anyio.sleep_forever()  # a store that does not answer
        return False

    backend._on_reinitialized = not_recorded
    backend.sessions.clear()  # the backend restarted: the call re-initializes
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as request:
                async def cancel_while_writing() -> None:
                    await writing.wait()
                    request.cancel()

                tg.start_soon(cancel_while_writing)
                await backend.request("tools/list", None)
            tg.cancel_scope.cancel()
        assert request.cancelled_caught is (outcome == "cancelled")
        await backend.aclose(end_session=False)
    assert backend.terminated == 1


async def test_a_recorded_upstream_session_outlives_a_copy_closed_for_this_replica(
        backend: MemoryBackend) -> None:
    backend.sessions.clear()
    with anyio.fail_after(5):
        await backend.request("tools/list", None)
        await backend.aclose(end_session=False)
    assert backend.hook_calls
    assert backend.terminated == 0


@pytest.mark.parametrize(("method", "replayable"), [
    ("tools/list", True), ("resources/read", True), ("prompts/get", True), ("ping", True),
    ("tools/call", False), ("initialize", False), ("tasks/cancel", False),
    ("sampling/whatever", False),
])
async def test_only_reads_may_be_sent_twice(
    backend: MemoryBackend, method: str, replayable: bool
) -> None:
    # A transport may resend a replayable call when its connection died under it; a tool
    # call never, whatever its name says: the backend may already have run it.
    await backend.request(method, {})
    (call,) = backend.calls
    assert call.replayable is replayable
