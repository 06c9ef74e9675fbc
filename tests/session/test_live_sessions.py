"""Live sessions over real MCP backends: how they start (B35) and how they close (B36).

A new session opens no upstream session: it learns what each backend offers from the
replica's profiles (fetched when this replica knows none yet, in parallel under a bound,
each within its own timeout), and opens a backend's upstream session at its first use.

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
from vmcp.errors import BackendError, SessionClosed
from vmcp.identity import ANONYMOUS
from vmcp.session import SessionManager
from vmcp.session import metadata as md
from vmcp.session.connector import BackendConnector
from vmcp.session.multisession import MultiSession
from vmcp.store import MemoryStore

pytestmark = [pytest.mark.anyio, pytest.mark.timing]

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


def not_listed(caplog: pytest.LogCaptureFixture) -> list[str]:
    return sorted(getattr(r, "backend", "?") for r in caplog.records
                  if r.getMessage().startswith("listing backend"))


async def initialize(cfg: VmcpConfig, http: httpx2.AsyncClient, store: MemoryStore
                     ) -> tuple[MultiSession, float]:
    manager = SessionManager(store, BackendConnector(cfg, http, store=store))
    started = time.monotonic()
    live = await manager.initialize(ANONYMOUS)
    assert isinstance(live, MultiSession)
    return live, time.monotonic() - started


async def test_b35_backends_are_listed_in_parallel_under_the_bound_each_with_its_own_timeout(
    live_backends: dict[str, RecordingBackend], hung: TcpProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Four hung backends and a bound of two, on a replica that knows no backend yet:
    they are tried two at a time (the third waits for a slot, which frees when one
    connect timeout has passed), and the working backend, last in line, is listed. The
    hung ones stay the session's backends (their first use tries them again)."""
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
        assert not_listed(caplog) == HUNG
        assert live.backend_names() == sorted([*HUNG, "up"])
        assert (await store.load(live.session_id))[md.BACKENDS] == ",".join(sorted([*HUNG, "up"]))
        assert sorted(tool["name"] for tool in live.routing.tools) == [
            "up_echo", "up_report_then_sleep", "up_sleep"]
        result = await live.call("up", "tools/call", ECHO, None)
        assert result["content"][0]["text"] == "hi"
        await live.aclose()


async def test_b35_a_session_with_a_backend_down_is_created_with_the_rest_and_says_so(
    live_backends: dict[str, RecordingBackend], hung: TcpProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backends = {"up": live_backends["up"].url, "down": f"http://127.0.0.1:{hung.port}/mcp"}
    async with httpx2.AsyncClient() as http, MemoryStore(ttl_seconds=60) as store:
        with caplog.at_level(logging.WARNING, logger="vmcp.upstream.profiles"):
            live, took = await initialize(config(backends), http, store)
        assert took < CONNECT_TIMEOUT * 4       # one timeout, not the default 10 s
        assert not_listed(caplog) == ["down"]   # the log names the backend it could not list
        assert sorted(tool["name"] for tool in live.routing.tools) == [
            "up_echo", "up_report_then_sleep", "up_sleep"]
        assert live.backend_states() == {}      # no upstream session opened yet
        with pytest.raises(BackendError) as failed:
            await live.call("down", "tools/call", ECHO, None)
        assert failed.value.backend == "down"
        assert live.backend_states().keys() == set()
        await live.call("up", "tools/call", ECHO, None)
        assert live.backend_states().keys() == {"up"}
        await live.aclose()


async def test_b35_all_backends_down_gives_an_empty_valid_session(
    hung: TcpProxy, caplog: pytest.LogCaptureFixture,
) -> None:
    """The design's answer for all backends failing: a valid session with nothing in it
    (the client lists no tools and can retry later), not an error."""
    backends = {"down1": f"http://127.0.0.1:{hung.port}/mcp",
                "down2": f"http://127.0.0.1:{hung.port}/mcp"}
    async with httpx2.AsyncClient() as http, MemoryStore(ttl_seconds=60) as store:
        with caplog.at_level(logging.WARNING, logger="vmcp.upstream.profiles"):
            live, _ = await initialize(config(backends), http, store)
        assert not_listed(caplog) == ["down1", "down2"]
        assert live.routing.tools == []
        record = await store.load(live.session_id)
        assert record[md.BACKENDS] == "down1,down2"
        assert md.backend_states(record) == {}
        assert md.is_full_session(record)
        await live.aclose()


def deletes(backend: RecordingBackend) -> int:
    return sum(1 for seen in backend.seen if seen.http_method == "DELETE")


def ended_here(backends: dict[str, RecordingBackend], before: list[int]) -> list[int]:
    """DELETEs per backend since ``before`` was counted."""
    return [deletes(b) - n for b, n in zip(backends.values(), before, strict=True)]


async def test_b36_a_closed_session_refuses_calls_and_a_second_close_is_harmless(
    live_backends: dict[str, RecordingBackend],
) -> None:
    urls = {name: backend.url for name, backend in live_backends.items()}
    async with httpx2.AsyncClient() as http:
        live = await BackendConnector(config(urls), http).open("b36-session", ANONYMOUS)
        listed = [deletes(b) for b in live_backends.values()]   # the profiles' own sessions
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
        # Only the backend it used had an upstream session to end.
        assert ended_here(live_backends, listed) == [1, 0]

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
        assert ended_here(live_backends, listed) == [1, 0]
        assert len(live_backends["up"].calls("tools/call")) == 2


async def test_b36_close_ends_every_backend_even_when_one_cannot_be_reached(
    live_backends: dict[str, RecordingBackend],
) -> None:
    urls = {name: backend.url for name, backend in live_backends.items()}
    async with httpx2.AsyncClient() as http:
        live = await BackendConnector(config(urls), http).open("b36-partial", ANONYMOUS)
        for name in urls:
            await live.call(name, "tools/call", ECHO, None)
        up_deletes = deletes(live_backends["up"])
        live_backends["other"].stop()
        with anyio.fail_after(10):
            await live.aclose()                  # one DELETE fails: logged, not raised
        assert deletes(live_backends["up"]) == up_deletes + 1
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
        manager = SessionManager(
            store, BackendConnector(config({"up": backend.url}), http, store=store),
            cache_capacity=1)
        first = await manager.initialize(ANONYMOUS)
        await first_call(first)
        first_upstream = await upstream_id(store, first.session_id)
        listed = deleted_ids(backend)           # the replica's profile of the backend
        second = await manager.initialize(ANONYMOUS)            # pushes the first out
        await first_call(second)
        second_upstream = await upstream_id(store, second.session_id)
        await manager.wait_closed()
        assert not manager.is_cached(first.session_id)
        assert deleted_ids(backend) == listed
        initializes = len(backend.calls("initialize"))

        again = await manager.get(first.session_id, ANONYMOUS)  # pushes the second out
        assert again is not first
        result = await again.call("up", "tools/call", ECHO, None)
        assert result["content"][0]["text"] == "hi"
        assert backend.calls("tools/call")[-1].header("mcp-session-id") == first_upstream
        assert len(backend.calls("initialize")) == initializes
        await manager.wait_closed()
        assert deleted_ids(backend) == listed

        assert await manager.terminate(first.session_id, ANONYMOUS) is True
        await manager.wait_closed()
        assert deleted_ids(backend) == sorted([*listed, first_upstream])
        assert await manager.terminate(second.session_id, ANONYMOUS) is True   # no copy here
        ended = sorted([*listed, first_upstream, second_upstream])
        assert deleted_ids(backend) == ended
        await manager.aclose()
        assert deleted_ids(backend) == ended


async def first_call(live: object) -> None:
    assert isinstance(live, MultiSession)
    await live.call("up", "tools/call", ECHO, None)
