"""Live sessions over real MCP backends: how they connect (B35) and how they close (B36).

The backends are real MCP servers over HTTP (``RecordingBackend``, which writes down
every request it gets). A backend that is down is one that accepts connections and never
answers: a stalled ``TcpProxy`` in front of a recording backend, which also counts how
many connections the gateway had open to it at once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx2
import pytest

from tests.support.recording_backend import RecordingBackend
from tests.support.tcp_proxy import TcpProxy
from vmcp.config import VmcpConfig
from vmcp.errors import SessionClosed
from vmcp.identity import ANONYMOUS
from vmcp.session import SessionManager
from vmcp.session import metadata as md
from vmcp.session.connector import BackendConnector
from vmcp.session.multisession import MultiSession
from vmcp.store import MemoryStore

pytestmark = pytest.mark.anyio

CONNECT_TIMEOUT = 0.5
BOUND = 2
HUNG = ["hung1", "hung2", "hung3", "hung4"]
ECHO = {"name": "echo", "arguments": {"text": "hi"}}


@pytest.fixture
def live_backends() -> Iterator[dict[str, RecordingBackend]]:
    with RecordingBackend() as up, RecordingBackend() as other:
        yield {"up": up, "other": other}


@pytest.fixture
async def hung(live_backends: dict[str, RecordingBackend]) -> AsyncIterator[TcpProxy]:
    """Accepts connections and answers nothing: a backend that hangs."""
    async with TcpProxy(live_backends["other"].port) as proxy:
        proxy.stall()
        yield proxy


def config(backends: dict[str, str], **limits: Any) -> VmcpConfig:
    return VmcpConfig.model_validate({
        "backends": [{"name": name, "url": url, "connect_timeout_seconds": CONNECT_TIMEOUT}
                     for name, url in backends.items()],
        "limits": limits})


def left_out(caplog: pytest.LogCaptureFixture) -> list[str]:
    return sorted(getattr(r, "backend", "?") for r in caplog.records
                  if "left out of session" in r.getMessage())


async def initialize(cfg: VmcpConfig, http: httpx2.AsyncClient, store: MemoryStore
                     ) -> tuple[MultiSession, float]:
    manager = SessionManager(store, BackendConnector(cfg, http))
    started = time.monotonic()
    live = await manager.initialize(ANONYMOUS)
    assert isinstance(live, MultiSession)
    return live, time.monotonic() - started


async def test_b35_backends_connect_in_parallel_under_the_bound_each_with_its_own_timeout(
    live_backends: dict[str, RecordingBackend], hung: TcpProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Four hung backends and a bound of two: they are tried two at a time (the third
    waits for a slot, which frees when one connect timeout has passed), and the working
    backend, last in line, still joins."""
    backends = {**{name: f"http://127.0.0.1:{hung.port}/mcp" for name in HUNG},
                "up": live_backends["up"].url}
    async with httpx2.AsyncClient() as http, MemoryStore(ttl_seconds=60) as store:
        with caplog.at_level(logging.WARNING, logger="vmcp.session.connector"):
            live, took = await initialize(
                config(backends, max_concurrent_backend_connects=BOUND), http, store)
        arrivals = [t - hung.accepted_at[0] for t in hung.accepted_at]
        assert len(arrivals) == len(HUNG)                     # every backend was tried
        assert arrivals[BOUND - 1] < CONNECT_TIMEOUT / 2      # two at once: in parallel
        assert arrivals[BOUND] >= CONNECT_TIMEOUT * 0.9       # the third waited: bounded
        assert took >= CONNECT_TIMEOUT * len(HUNG) / BOUND
        assert left_out(caplog) == HUNG
        assert live.backend_names() == ["up"]
        assert (await store.load(live.session_id))[md.BACKENDS] == "up"
        result = await live.call("up", "tools/call", ECHO, None)
        assert result["content"][0]["text"] == "hi"
        await live.aclose()


async def test_b35_a_session_with_a_backend_down_is_created_with_the_rest_and_says_so(
    live_backends: dict[str, RecordingBackend], hung: TcpProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backends = {"up": live_backends["up"].url, "down": f"http://127.0.0.1:{hung.port}/mcp"}
    async with httpx2.AsyncClient() as http, MemoryStore(ttl_seconds=60) as store:
        with caplog.at_level(logging.WARNING, logger="vmcp.session.connector"):
            live, took = await initialize(config(backends), http, store)
        assert took < CONNECT_TIMEOUT * 4       # one timeout, not the default 10 s
        assert left_out(caplog) == ["down"]     # the log names the missing backend
        assert live.backend_names() == ["up"]   # ... and so does the stored record
        assert (await store.load(live.session_id))[md.BACKENDS] == "up"
        assert sorted(tool["name"] for tool in live.routing.tools) == [
            "up_echo", "up_report_then_sleep", "up_sleep"]
        with pytest.raises(KeyError):
            live.connection("down")
        await live.aclose()


async def test_b35_all_backends_down_gives_an_empty_valid_session(
    hung: TcpProxy, caplog: pytest.LogCaptureFixture,
) -> None:
    """The design's answer for all backends failing: a valid session with nothing in it
    (the client lists no tools and can retry later), not an error."""
    backends = {"down1": f"http://127.0.0.1:{hung.port}/mcp",
                "down2": f"http://127.0.0.1:{hung.port}/mcp"}
    async with httpx2.AsyncClient() as http, MemoryStore(ttl_seconds=60) as store:
        with caplog.at_level(logging.WARNING, logger="vmcp.session.connector"):
            live, _ = await initialize(config(backends), http, store)
        assert left_out(caplog) == ["down1", "down2"]
        assert live.backend_names() == []
        assert live.routing.tools == []
        record = await store.load(live.session_id)
        assert record[md.BACKENDS] == ""
        assert md.is_full_session(record)
        await live.aclose()


def deletes(backend: RecordingBackend) -> int:
    return sum(1 for seen in backend.seen if seen.http_method == "DELETE")


async def test_b36_a_closed_session_refuses_calls_and_a_second_close_is_harmless(
    live_backends: dict[str, RecordingBackend],
) -> None:
    urls = {name: backend.url for name, backend in live_backends.items()}
    async with httpx2.AsyncClient() as http:
        live = await BackendConnector(config(urls), http).open("b36-session", ANONYMOUS)
        assert (await live.call("up", "tools/call", ECHO, None))["content"][0]["text"] == "hi"
        in_flight: list[dict[str, Any]] = []

        async def slow_call() -> None:
            in_flight.append(await live.call(
                "up", "tools/call", {"name": "sleep", "arguments": {"seconds": 0.3}}, None))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(slow_call)
                while not live_backends["up"].calls("tools/call")[1:]:  # noqa: ASYNC110 - the backend's own record, no event to await
                    await anyio.sleep(0.01)
                await live.aclose()         # waits for the call in flight, then ends
        assert in_flight[0]["content"][0]["text"] == "slept 0.3"
        assert [deletes(b) for b in live_backends.values()] == [1, 1]

        with pytest.raises(SessionClosed):
            await live.call("up", "tools/call", ECHO, None)

        async def never_runs() -> None:
            raise AssertionError("a closed session ran new work")

        work = never_runs()
        with pytest.raises(SessionClosed):
            live.work.spawn(work)
        work.close()
        with anyio.fail_after(5):
            await live.aclose()
        assert [deletes(b) for b in live_backends.values()] == [1, 1]
        assert len(live_backends["up"].calls("tools/call")) == 2


async def test_b36_close_ends_every_backend_even_when_one_cannot_be_reached(
    live_backends: dict[str, RecordingBackend],
) -> None:
    urls = {name: backend.url for name, backend in live_backends.items()}
    async with httpx2.AsyncClient() as http:
        live = await BackendConnector(config(urls), http).open("b36-partial", ANONYMOUS)
        live_backends["other"].stop()
        with anyio.fail_after(10):
            await live.aclose()                  # one DELETE fails: logged, not raised
        assert deletes(live_backends["up"]) == 1
        with pytest.raises(SessionClosed):
            await live.call("up", "tools/call", ECHO, None)


def deleted_ids(backend: RecordingBackend) -> list[str | None]:
    return sorted(seen.header("mcp-session-id") or "" for seen in backend.seen
                  if seen.http_method == "DELETE")


async def upstream_id(store: MemoryStore, session_id: str, backend: str = "up") -> str:
    state = json.loads((await store.load(session_id))[md.backend_state_key(backend)])
    return str(state["session_id"])


async def test_b38_a_session_dropped_for_capacity_keeps_its_upstream_session(
    live_backends: dict[str, RecordingBackend],
) -> None:
    """Counted by the backend itself: LRU pressure sends no DELETE, the dropped session's
    next request re-attaches to the same upstream session (no new initialize), and the
    session's end sends exactly one DELETE per upstream session, also for a session that
    has no copy left on the replica that ends it."""
    backend = live_backends["up"]
    async with httpx2.AsyncClient() as http, MemoryStore(ttl_seconds=60) as store:
        manager = SessionManager(store, BackendConnector(config({"up": backend.url}), http),
                                 cache_capacity=1)
        first = await manager.initialize(ANONYMOUS)
        first_upstream = await upstream_id(store, first.session_id)
        second = await manager.initialize(ANONYMOUS)            # pushes the first out
        second_upstream = await upstream_id(store, second.session_id)
        await manager.wait_closed()
        assert not manager.is_cached(first.session_id)
        assert deleted_ids(backend) == []
        initializes = len(backend.calls("initialize"))

        again = await manager.get(first.session_id, ANONYMOUS)  # pushes the second out
        assert again is not first
        result = await again.call("up", "tools/call", ECHO, None)
        assert result["content"][0]["text"] == "hi"
        assert backend.calls("tools/call")[-1].header("mcp-session-id") == first_upstream
        assert len(backend.calls("initialize")) == initializes
        await manager.wait_closed()
        assert deleted_ids(backend) == []

        assert await manager.terminate(first.session_id, ANONYMOUS) is True
        await manager.wait_closed()
        assert deleted_ids(backend) == [first_upstream]
        assert await manager.terminate(second.session_id, ANONYMOUS) is True   # no copy here
        assert deleted_ids(backend) == sorted([first_upstream, second_upstream])
        await manager.aclose()
        assert deleted_ids(backend) == sorted([first_upstream, second_upstream])
