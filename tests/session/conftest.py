"""A recording session factory and managers over each store kind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from tests.support.redis_server import RedisServer
from vmcp.identity import Principal
from vmcp.session import SessionManager
from vmcp.store import MemoryStore, RedisStore, SessionStore

ALICE = Principal("https://idp.example", "alice", token="alice-token-1")
ALICE_REFRESHED = Principal("https://idp.example", "alice", token="alice-token-2")
MALLORY = Principal("https://idp.example", "mallory", token="mallory-token")
ALICE_OTHER_ISSUER = Principal("https://evil.example", "alice", token="t")


class FakeLiveSession:
    """Stands in for a session with backend connections; counts its closes."""

    def __init__(self, session_id: str, backends: Sequence[str], states: dict[str, str],
                 principal: Principal) -> None:
        self._session_id = session_id
        self._backends = list(backends)
        self._states = dict(states)
        self.principal = principal
        self.close_count = 0
        self.closed = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def session_id(self) -> str:
        return self._session_id

    def backend_names(self) -> list[str]:
        return list(self._backends)

    def backend_states(self) -> dict[str, str]:
        return dict(self._states)

    async def wait_calls(self) -> None:
        await self.idle.wait()

    async def aclose(self) -> None:
        self.close_count += 1
        self.closed.set()


@dataclass
class RecordingFactory:
    """Records every open and restore; gates and failures are set by the test."""

    backends: list[str] = field(default_factory=lambda: ["alpha", "beta"])
    opened: list[FakeLiveSession] = field(default_factory=list)
    restored: list[FakeLiveSession] = field(default_factory=list)
    restore_calls: list[tuple[str, Principal, list[str], dict[str, str]]] = field(
        default_factory=list)
    open_error: Exception | None = None
    open_gate: asyncio.Event | None = None
    open_started: asyncio.Event = field(default_factory=asyncio.Event)
    restore_gate: asyncio.Event | None = None
    restore_started: asyncio.Event = field(default_factory=asyncio.Event)
    generation: int = 0

    async def open(self, session_id: str, principal: Principal) -> FakeLiveSession:
        self.open_started.set()
        if self.open_gate is not None:
            await self.open_gate.wait()
        if self.open_error is not None:
            raise self.open_error
        self.generation += 1
        live = FakeLiveSession(session_id, self.backends,
                               {b: f"{b}-upstream-{self.generation}" for b in self.backends},
                               principal)
        self.opened.append(live)
        return live

    async def restore(self, session_id: str, principal: Principal, backends: Sequence[str],
                      states: Mapping[str, str]) -> FakeLiveSession:
        self.restore_calls.append((session_id, principal, list(backends), dict(states)))
        self.restore_started.set()
        if self.restore_gate is not None:
            await self.restore_gate.wait()
        live = FakeLiveSession(session_id, backends, dict(states), principal)
        self.restored.append(live)
        return live


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        async with MemoryStore(ttl_seconds=60) as memory:
            yield memory
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    redis_store = RedisStore.from_url(server.url, key_prefix=key_prefix, ttl_seconds=60,
                                      timeout_seconds=2.0)
    yield redis_store
    await redis_store.aclose()


@pytest.fixture
def factory() -> RecordingFactory:
    return RecordingFactory()


@pytest.fixture
async def manager(store: SessionStore, factory: RecordingFactory
                  ) -> AsyncIterator[SessionManager]:
    mgr = SessionManager(store, factory, cache_capacity=10)
    yield mgr
    await mgr.aclose()


class Replica:
    """One replica's manager on a shared Redis, with its own factory and cache."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.factory = RecordingFactory()
        self.manager = SessionManager(store, self.factory, cache_capacity=10)

    async def aclose(self) -> None:
        await self.manager.aclose()
        await self.store.aclose()


@pytest.fixture
async def replicas(redis_server: RedisServer, key_prefix: str
                   ) -> AsyncIterator[tuple[Replica, Replica]]:
    pair = tuple(
        Replica(RedisStore.from_url(redis_server.url, key_prefix=key_prefix, ttl_seconds=60,
                                    timeout_seconds=2.0))
        for _ in range(2)
    )
    yield pair[0], pair[1]
    for replica in pair:
        await replica.aclose()
