"""Upstream sessions are opened on first use, once, and recorded for every replica.

Real parts throughout: recording MCP backends over HTTP (which count the ``initialize``
requests and DELETEs they get), real Redis, and in-process replicas (a session manager
and a connector each, with their own Redis client) sharing it. Every count below is
taken after the replica learned the backends' profiles (one short-lived upstream
session per backend, listed and ended), so it counts client sessions' upstream sessions
only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Collection, Iterator, Mapping
from typing import Any

import anyio
import httpx2
import pytest

from tests.support.recording_backend import RecordingBackend
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy
from vmcp.config import VmcpConfig
from vmcp.errors import BackendError
from vmcp.identity import ANONYMOUS
from vmcp.session import SessionManager
from vmcp.session import metadata as md
from vmcp.session.connector import BackendConnector
from vmcp.session.multisession import MultiSession
from vmcp.store import RedisStore
from vmcp.store.base import Merged, SessionStore

pytestmark = pytest.mark.anyio

NAMES = ("a", "b", "c")
ECHO = {"name": "echo", "arguments": {"text": "hi"}}
CONNECT_TIMEOUT = 1.0


@pytest.fixture
def backends() -> Iterator[dict[str, RecordingBackend]]:
    with RecordingBackend() as a, RecordingBackend() as b, RecordingBackend() as c:
        yield {"a": a, "b": b, "c": c}


def config(urls: Mapping[str, str]) -> VmcpConfig:
    return VmcpConfig.model_validate({"backends": [
        {"name": name, "url": url, "connect_timeout_seconds": CONNECT_TIMEOUT}
        for name, url in urls.items()]})


class Replica:
    """One replica: its own Redis client, connector (profiles, ledger) and manager."""

    def __init__(self, store: SessionStore, cfg: VmcpConfig, http: httpx2.AsyncClient
                 ) -> None:
        self.store = store
        self.connector = BackendConnector(cfg, http, store=store)
        self.manager = SessionManager(store, self.connector)

    async def initialize(self) -> MultiSession:
        live = await self.manager.initialize(ANONYMOUS)
        assert isinstance(live, MultiSession)
        return live

    async def get(self, session_id: str) -> MultiSession:
        live = await self.manager.get(session_id, ANONYMOUS)
        assert isinstance(live, MultiSession)
        return live


@pytest.fixture
async def stores(redis_server: RedisServer, key_prefix: str
                 ) -> AsyncIterator[list[RedisStore]]:
    made = [RedisStore.from_url(redis_server.url, key_prefix=key_prefix, ttl_seconds=60,
                                timeout_seconds=2.0) for _ in range(2)]
    yield made
    for store in made:
        await store.aclose()


def initializes(backend: RecordingBackend) -> int:
    return len(backend.calls("initialize"))


def deletes(backend: RecordingBackend) -> int:
    return sum(1 for seen in backend.seen if seen.http_method == "DELETE")


def counts(backends: Mapping[str, RecordingBackend]) -> dict[str, tuple[int, int]]:
    return {name: (initializes(b), deletes(b)) for name, b in backends.items()}


def since(before: Mapping[str, tuple[int, int]], backends: Mapping[str, RecordingBackend]
          ) -> dict[str, tuple[int, int]]:
    """(initializes, DELETEs) per backend since ``before``."""
    now = counts(backends)
    return {name: (now[name][0] - before[name][0], now[name][1] - before[name][1])
            for name in backends}


async def upstream_id(store: SessionStore, session_id: str, backend: str) -> str:
    state = json.loads((await store.load(session_id))[md.backend_state_key(backend)])
    return str(state["session_id"])


async def test_a_client_session_opens_upstream_sessions_only_on_the_backends_it_calls(
    backends: dict[str, RecordingBackend], stores: list[RedisStore],
) -> None:
    async with httpx2.AsyncClient() as http:
        replica = Replica(stores[0], config({n: b.url for n, b in backends.items()}), http)
        warm = await replica.initialize()          # learns the profiles
        assert sorted(t["name"] for t in warm.routing.tools) == sorted(
            f"{n}_{tool}" for n in NAMES for tool in ("echo", "report_then_sleep", "sleep"))
        await replica.manager.terminate(warm.session_id, ANONYMOUS)
        before = counts(backends)

        used = ["a", "a", "b", "a"]
        sessions = [await replica.initialize() for _ in used]
        assert since(before, backends) == {n: (0, 0) for n in NAMES}   # initialize: none
        for live, name in zip(sessions, used, strict=True):
            assert len(live.routing.tools) == 9     # every backend listed all the same
            result = await live.call(name, "tools/call", ECHO, None)
            assert result["content"][0]["text"] == "hi"
            record = await replica.store.load(live.session_id)
            assert record[md.BACKENDS] == "a,b,c"
            assert sorted(md.backend_states(record)) == [name]
        assert since(before, backends) == {"a": (3, 0), "b": (1, 0), "c": (0, 0)}

        for live in sessions:
            assert await replica.manager.terminate(live.session_id, ANONYMOUS) is True
        await replica.manager.wait_closed()
        assert since(before, backends) == {"a": (3, 3), "b": (1, 1), "c": (0, 0)}
        assert all(i == d for i, d in counts(backends).values())   # nothing leaked
        assert {n: c.open for n, c in replica.connector.ledger.snapshot().items()} == {
            n: 0 for n in NAMES}
        await replica.manager.aclose()


async def test_concurrent_first_calls_to_one_backend_open_one_upstream_session(
    backends: dict[str, RecordingBackend], stores: list[RedisStore],
) -> None:
    async with httpx2.AsyncClient() as http:
        replica = Replica(stores[0], config({n: b.url for n, b in backends.items()}), http)
        live = await replica.initialize()
        before = counts(backends)
        results: list[dict[str, Any]] = []

        async def call() -> None:
            results.append(await live.call("a", "tools/call", ECHO, None))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(call)
        assert len(results) == 8
        assert since(before, backends)["a"] == (1, 0)
        upstream = await upstream_id(replica.store, live.session_id, "a")
        assert {seen.header("mcp-session-id") for seen in backends["a"].calls("tools/call")
                } == {upstream}
        await replica.manager.terminate(live.session_id, ANONYMOUS)
        await replica.manager.wait_closed()
        assert since(before, backends)["a"] == (1, 1)
        await replica.manager.aclose()


class MeetingStore:
    """Holds writes that record an upstream session until ``parties`` of them arrived,
    so that two replicas' writes for one session both start from the record as it was
    before either (what a read-then-overwrite would lose)."""

    def __init__(self, inner: RedisStore, meeting: asyncio.Barrier) -> None:
        self.inner = inner
        self.meeting = meeting
        self.met = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def _meet(self, keys: Collection[str]) -> None:
        if any(key.startswith(md.BACKEND_STATE_PREFIX) for key in keys):
            self.met += 1
            with anyio.fail_after(5):
                await self.meeting.wait()

    async def update(self, session_id: str, metadata: Mapping[str, str]) -> bool:
        if md.IDENTITY in metadata:
            await self._meet(metadata)
        return await self.inner.update(session_id, metadata)

    async def merge(self, session_id: str, fields: Mapping[str, str], *,
                    remove: Collection[str] = (),
                    expect: Mapping[str, str | None] | None = None) -> Merged:
        await self._meet(fields)
        return await self.inner.merge(session_id, fields, remove=remove, expect=expect)


async def test_two_replicas_opening_two_backends_of_one_session_at_once_record_both(
    backends: dict[str, RecordingBackend], stores: list[RedisStore],
) -> None:
    """Replica A opens backend a while replica B opens backend b for the same client
    session, their record writes meeting after both read the record: both upstream
    sessions are recorded, and the session's end DELETEs both, once each."""
    cfg = config({n: b.url for n, b in backends.items()})
    async with httpx2.AsyncClient() as http:
        plain_a = Replica(stores[0], cfg, http)
        live = await plain_a.initialize()
        meeting = asyncio.Barrier(2)
        gated = [MeetingStore(store, meeting) for store in stores]
        a = Replica(gated[0], cfg, http)  # type: ignore[arg-type]
        b = Replica(gated[1], cfg, http)  # type: ignore[arg-type]
        on_a, on_b = await a.get(live.session_id), await b.get(live.session_id)
        before = counts(backends)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(on_a.call, "a", "tools/call", ECHO, None)
                tg.start_soon(on_b.call, "b", "tools/call", ECHO, None)
        assert [store.met for store in gated] == [1, 1]      # the writes did meet
        record = await stores[0].load(live.session_id)
        assert sorted(md.backend_states(record)) == ["a", "b"]
        assert since(before, backends) == {"a": (1, 0), "b": (1, 0), "c": (0, 0)}

        upstream_b = await upstream_id(stores[0], live.session_id, "b")
        assert await a.manager.terminate(live.session_id, ANONYMOUS) is True
        await a.manager.wait_closed()
        assert since(before, backends) == {"a": (1, 1), "b": (1, 1), "c": (0, 0)}
        assert [seen.header("mcp-session-id") for seen in backends["b"].seen
                if seen.http_method == "DELETE"][-1] == upstream_b
        for replica in (plain_a, a):
            await replica.manager.aclose()


async def test_a_restore_re_attaches_the_opened_backends_and_opens_the_others_on_use(
    backends: dict[str, RecordingBackend], stores: list[RedisStore],
) -> None:
    cfg = config({n: b.url for n, b in backends.items()})
    async with httpx2.AsyncClient() as http:
        a, b = Replica(stores[0], cfg, http), Replica(stores[1], cfg, http)
        live = await a.initialize()
        await live.call("a", "tools/call", ECHO, None)
        opened_on_a = await upstream_id(stores[0], live.session_id, "a")
        before = counts(backends)

        restored = await b.get(live.session_id)
        assert restored is not live
        assert sorted(restored.backend_states()) == ["a"]      # re-attached, not opened
        await restored.call("a", "tools/call", ECHO, None)
        assert backends["a"].calls("tools/call")[-1].header("mcp-session-id") == opened_on_a
        await restored.call("b", "tools/call", ECHO, None)     # opened on first use
        assert since(before, backends) == {"a": (0, 0), "b": (1, 0), "c": (0, 0)}

        # Back on A, b's upstream session (opened on B) is re-attached, not opened again.
        await live.call("b", "tools/call", ECHO, None)
        assert since(before, backends) == {"a": (0, 0), "b": (1, 0), "c": (0, 0)}
        opened_on_b = await upstream_id(stores[0], live.session_id, "b")
        assert backends["b"].calls("tools/call")[-1].header("mcp-session-id") == opened_on_b

        assert await a.manager.terminate(live.session_id, ANONYMOUS) is True
        await a.manager.wait_closed()
        assert since(before, backends) == {"a": (0, 1), "b": (1, 1), "c": (0, 0)}
        await a.manager.aclose()


async def test_a_backend_down_at_initialize_fails_its_first_call_not_the_initialize(
    backends: dict[str, RecordingBackend], stores: list[RedisStore],
) -> None:
    """The replica knows the backends (an earlier session listed them); then backend c
    hangs. A new session is created without waiting for it, a call to c fails naming
    it, and a call to a works."""
    async with TcpProxy(backends["c"].port) as proxy, httpx2.AsyncClient() as http:
        urls = {"a": backends["a"].url, "b": backends["b"].url, "c": f"http://127.0.0.1:{proxy.port}/mcp"}
        replica = Replica(stores[0], config(urls), http)
        await replica.initialize()
        proxy.stall()
        started = time.monotonic()
        live = await replica.initialize()
        assert time.monotonic() - started < CONNECT_TIMEOUT / 2
        assert "c_echo" in {tool["name"] for tool in live.routing.tools}
        with anyio.fail_after(CONNECT_TIMEOUT * 5), pytest.raises(BackendError) as failed:
            await live.call("c", "tools/call", ECHO, None)
        assert failed.value.backend == "c"
        assert "initialize not answered in time" in str(failed.value)
        assert (await live.call("a", "tools/call", ECHO, None))["content"][0]["text"] == "hi"
        assert sorted(md.backend_states(await replica.store.load(live.session_id))) == ["a"]
        proxy.resume()
        await replica.manager.aclose()
