"""Backend classification and the pool of upstream sessions kept for stateless clients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import anyio
import pytest

from vmcp.backend import BackendConnection, BackendRpcError
from vmcp.errors import BackendProtocolError, BackendUnavailable
from vmcp.stateless.pool import BackendKind, BackendKinds, UpstreamPool
from vmcp.upstream.ledger import UpstreamLedger

pytestmark = pytest.mark.anyio

MODERN_DISCOVER = {"supportedVersions": ["2026-07-28"], "capabilities": {}}


class Probes:
    """A probe whose answer per backend the test sets; counts the probes sent."""

    def __init__(self, answers: Mapping[str, object]) -> None:
        self.answers = dict(answers)
        self.count: dict[str, int] = {}
        self.gate: anyio.Event | None = None

    async def __call__(self, name: str) -> Mapping[str, Any] | None:
        self.count[name] = self.count.get(name, 0) + 1
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers[name]
        if isinstance(answer, Exception):
            raise answer
        return cast("Mapping[str, Any] | None", answer)


@pytest.mark.parametrize(("answer", "kind"), [
    (MODERN_DISCOVER, BackendKind.MODERN),
    ({"supportedVersions": ["2026-07-28", "2025-11-25"]}, BackendKind.MODERN),
    ({"supportedVersions": ["2025-11-25"]}, BackendKind.SESSION),
    ({}, BackendKind.SESSION),
    (None, BackendKind.SESSION),  # an SSE backend, never probed
    (BackendRpcError("b", -32601, "Method not found"), BackendKind.SESSION),
    (BackendProtocolError("b", "HTTP 400: Unsupported protocol version"), BackendKind.SESSION),
])
async def test_a_backend_is_modern_only_if_discover_lists_the_stateless_revision(
        answer: object, kind: BackendKind) -> None:
    kinds = BackendKinds(Probes({"b": answer}))
    assert await kinds.kind("b") is kind


async def test_the_classification_is_probed_once_and_kept() -> None:
    probes = Probes({"b": MODERN_DISCOVER})
    kinds = BackendKinds(probes)
    probes.gate = anyio.Event()
    found: list[BackendKind] = []

    async def classify() -> None:
        found.append(await kinds.kind("b"))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(classify)
        await anyio.wait_all_tasks_blocked()
        probes.gate.set()
    assert await kinds.kind("b") is BackendKind.MODERN
    assert found == [BackendKind.MODERN] * 5
    assert probes.count == {"b": 1}


async def test_an_unreachable_backend_is_not_classified_and_is_probed_again() -> None:
    probes = Probes({"b": BackendUnavailable("b", "connection refused")})
    kinds = BackendKinds(probes)
    with pytest.raises(BackendUnavailable):
        await kinds.kind("b")
    assert kinds.known("b") is None
    probes.answers["b"] = MODERN_DISCOVER
    assert await kinds.kind("b") is BackendKind.MODERN
    assert probes.count == {"b": 2}


async def test_a_call_that_shows_the_kind_wrong_corrects_it_without_probing() -> None:
    probes = Probes({"b": MODERN_DISCOVER})
    kinds = BackendKinds(probes)
    assert await kinds.kind("b") is BackendKind.MODERN
    kinds.correct("b", BackendKind.SESSION)
    assert await kinds.kind("b") is BackendKind.SESSION
    kinds.forget("b")
    assert await kinds.kind("b") is BackendKind.MODERN
    assert probes.count == {"b": 2}


# -- the pool -------------------------------------------------------------------------


class FakeUpstream:
    """Stands in for a backend connection; records its ending (the DELETE upstream)."""

    def __init__(self, backend: str, number: int) -> None:
        self.backend = backend
        self.number = number
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


class Backends:
    def __init__(self) -> None:
        self.opened: list[FakeUpstream] = []
        self.gate: anyio.Event | None = None
        self.fail: Exception | None = None

    async def connect(self, backend: str) -> BackendConnection:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        upstream = FakeUpstream(backend, len(self.opened) + 1)
        self.opened.append(upstream)
        return cast(BackendConnection, upstream)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake(connection: BackendConnection) -> FakeUpstream:
    assert isinstance(connection, FakeUpstream)
    return connection


async def test_an_identity_reuses_its_session_and_another_identity_never_shares_it() -> None:
    backends = Backends()
    pool = UpstreamPool(backends.connect, idle_seconds=60)
    async with pool.session("alice", "weather") as first:
        pass
    async with pool.session("alice", "weather") as again:
        pass
    async with pool.session("bob", "weather") as other:
        pass
    async with pool.session("alice", "notes") as notes:
        pass
    assert again is first
    assert other is not first
    assert fake(notes).backend == "notes"
    assert len(backends.opened) == 3
    assert pool.statistics().open == 3


async def test_concurrent_first_calls_of_an_identity_open_one_session() -> None:
    backends = Backends()
    backends.gate = anyio.Event()
    pool = UpstreamPool(backends.connect, idle_seconds=60)
    seen: list[BackendConnection] = []

    async def use() -> None:
        async with pool.session("alice", "weather") as connection:
            seen.append(connection)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(use)
        await anyio.wait_all_tasks_blocked()
        backends.gate.set()
    assert len(backends.opened) == 1
    assert len(seen) == 4
    assert all(c is seen[0] for c in seen)


async def test_a_failed_initialize_is_raised_and_the_next_call_tries_again() -> None:
    backends = Backends()
    backends.fail = BackendUnavailable("weather", "connection refused")
    pool = UpstreamPool(backends.connect, idle_seconds=60)
    with pytest.raises(BackendUnavailable):
        async with pool.session("alice", "weather"):
            pass
    backends.fail = None
    async with pool.session("alice", "weather"):
        pass
    assert len(backends.opened) == 1


async def test_idle_sessions_are_ended_upstream_and_busy_ones_are_kept() -> None:
    backends = Backends()
    clock = Clock()
    ledger = UpstreamLedger()
    pool = UpstreamPool(backends.connect, idle_seconds=30, ledger=ledger, clock=clock)
    async with pool.session("alice", "weather"):
        pass
    async with pool.session("bob", "weather") as busy:
        clock.now += 31
        assert await pool.sweep() == 1
        alice = backends.opened[0]
        assert alice.closed == 1
        assert fake(busy).closed == 0
    # Bob's session was used just now: it stays until it has been idle long enough.
    assert await pool.sweep() == 0
    clock.now += 31
    assert await pool.sweep() == 1
    assert fake(busy).closed == 1
    assert ledger.snapshot()["weather"].open == 0
    # A later call opens a fresh session.
    async with pool.session("alice", "weather") as fresh:
        assert fresh is not alice
    assert ledger.snapshot()["weather"].opened == 3


async def test_a_discarded_session_is_ended_and_replaced() -> None:
    backends = Backends()
    pool = UpstreamPool(backends.connect, idle_seconds=60)
    async with pool.session("alice", "weather") as broken:
        await pool.discard("alice", "weather", broken)
    assert fake(broken).closed == 1
    async with pool.session("alice", "weather") as replacement:
        assert replacement is not broken


async def test_closing_the_pool_ends_every_session_and_refuses_new_ones() -> None:
    backends = Backends()
    pool = UpstreamPool(backends.connect, idle_seconds=60)
    for who in ("alice", "bob"):
        async with pool.session(who, "weather"):
            pass
    await pool.aclose()
    assert [u.closed for u in backends.opened] == [1, 1]
    with pytest.raises(BackendUnavailable):
        async with pool.session("alice", "weather"):
            pass
    assert pool.statistics() == pool.statistics().__class__(open=0, in_use=0, opened=2,
                                                             ended=2)
