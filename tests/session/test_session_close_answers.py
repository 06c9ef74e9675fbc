"""A live session's close answers every request still open on it, however far it got.

The request's work runs as a task of the session (a client may drop its connection and
resume the stream); closing the session cancels those tasks. A task cancelled before it
started runs no code at all, so the answer cannot come from the work: the close itself
must finish the request's stream with ``-32001``, and a stream copied to the event log
(for a client resuming on another replica) must carry that end too.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import pytest

from tests.support.redis_server import RedisServer
from vmcp.aggregate import BackendCatalog, RoutingTable, build_routing_table
from vmcp.backend import BackendConnection
from vmcp.config import AggregationConfig
from vmcp.session.multisession import MultiSession
from vmcp.session.streams import Outbound
from vmcp.store import RedisStore
from vmcp.store.event_log import RedisEventLog

pytestmark = pytest.mark.anyio

SESSION_ID = "close-answers-" + "0" * 18


def _routing(catalogs: Mapping[str, BackendCatalog]) -> RoutingTable:
    return build_routing_table(catalogs, AggregationConfig())


async def _no_discovery(name: str, connection: BackendConnection) -> BackendCatalog:
    raise AssertionError("no backend to discover")


def session_without_backends(event_log: RedisEventLog | None = None,
                             replica_id: str = "r1") -> MultiSession:
    return MultiSession(SESSION_ID, {}, {}, rebuild=_routing, discover=_no_discovery,
                        event_log=event_log, replica_id=replica_id)


def session_not_found(request_id: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id,
            "error": {"code": -32001, "message": "Session not found"}}


async def test_a_request_whose_task_never_started_is_answered_session_not_found() -> None:
    session = session_without_backends()
    stream = session.streams.open(41)
    ran: list[bool] = []

    async def work() -> None:
        ran.append(True)
        stream.append(Outbound({"jsonrpc": "2.0", "id": 41, "result": {}}, final=True))

    session.work.spawn(work())
    await session.aclose()  # before the event loop ever ran the task

    with anyio.fail_after(5):
        (position, answer), *rest = await stream.after(0)
    assert (position, rest, ran) == (1, [], [])
    assert (answer.final, answer.session_ended) == (True, True)
    assert answer.message == session_not_found(41)


async def test_a_request_cancelled_mid_work_is_answered_once() -> None:
    session = session_without_backends()
    stream = session.streams.open("call-7")
    started = anyio.Event()

    async def work() -> None:
        started.set()
        await anyio.sleep_forever()

    session.work.spawn(work())
    with anyio.fail_after(5):
        await started.wait()
    await session.aclose()
    await session.aclose()  # a second close adds nothing

    with anyio.fail_after(5):
        events = await stream.after(0)
    assert [item.message for _, item in events] == [session_not_found("call-7")]


@pytest.mark.redis
async def test_a_resumable_stream_records_the_session_end_for_other_replicas(
        redis_server: RedisServer) -> None:
    prefix = f"close:{uuid.uuid4().hex[:12]}:"
    store = RedisStore.from_url(redis_server.url, key_prefix=prefix, ttl_seconds=60,
                                timeout_seconds=2.0)
    log = RedisEventLog(store.client, prefix + "events:", ttl_seconds=60, max_events=100,
                        timeout_seconds=2.0)
    try:
        running = session_without_backends(log, replica_id="r1")
        stream = running.streams.open(9)
        progress = {"jsonrpc": "2.0", "method": "notifications/progress",
                    "params": {"progressToken": 9, "progress": 1}}
        stream.append(Outbound(progress))
        running.work.persist(stream)  # its client went away: resumable anywhere

        # This replica is draining, or evicted the session: it lives on elsewhere.
        await running.aclose(end_upstream=False)

        # Another replica resumes the stream from the log.
        read: list[tuple[int, dict[str, Any]]] = []
        with anyio.fail_after(5):
            async for position, record in log.read(SESSION_ID, stream.id, 0):
                read.append((position, record))
                if record.get("final"):
                    break
    finally:
        await store.aclose()
    assert read == [(1, {"m": progress, "final": False}),
                    (2, {"m": session_not_found(9), "final": True})]


@pytest.mark.redis
async def test_a_resumed_stream_whose_writer_is_gone_ends_when_its_log_expires(
        redis_server: RedisServer) -> None:
    """The replica running the call was killed: no end will ever be written. Following
    the log must stop once it expires, not hold the resumed request forever."""
    prefix = f"close:{uuid.uuid4().hex[:12]}:"
    store = RedisStore.from_url(redis_server.url, key_prefix=prefix, ttl_seconds=60,
                                timeout_seconds=2.0)
    log = RedisEventLog(store.client, prefix + "events:", ttl_seconds=0.2, max_events=100,
                        timeout_seconds=2.0)
    try:
        await log.append(SESSION_ID, "r1-1", [(1, {"m": None, "final": False})])
        read = []
        with anyio.fail_after(10):
            async for position, _ in log.read(SESSION_ID, "r1-1", 0):
                read.append(position)
    finally:
        await store.aclose()
    assert read == [1]


@pytest.fixture
async def log(redis_server: RedisServer) -> AsyncIterator[RedisEventLog]:
    """An event log on the test Redis, under a prefix of its own."""
    prefix = f"close:{uuid.uuid4().hex[:12]}:"
    store = RedisStore.from_url(redis_server.url, key_prefix=prefix, ttl_seconds=60,
                                timeout_seconds=2.0)
    yield RedisEventLog(store.client, prefix + "events:", ttl_seconds=60, max_events=100,
                        timeout_seconds=2.0)
    await store.aclose()


@pytest.mark.redis
async def test_a_stream_whose_run_goes_on_elsewhere_is_paused_not_ended(
        log: RedisEventLog) -> None:
    """A composite run waiting for the user is kept in the store: when this replica
    closes the session (draining, eviction), the answer lets another replica go on, so
    the stream must tell its client to come back, not that the session is gone."""
    running = session_without_backends(log, replica_id="r1")
    stream = running.streams.open(5)
    channel = running.channel(stream, 5)

    async def work() -> None:
        await channel.request("elicitation/create", {"message": "?"},
                              request_id="vmcp-wf.test", resumable=True,
                              answers_elsewhere=contextlib.nullcontext())

    running.work.spawn(work())
    with anyio.fail_after(5):
        [(_, question)] = await stream.after(0)
        async for _ in log.read(SESSION_ID, stream.id, 0):  # the question is copied
            break
    await running.aclose(end_upstream=False)  # a drain or an eviction: the session lives on
    with anyio.fail_after(5):
        [(_, paused)] = await stream.after(1)
    recorded = []
    with anyio.fail_after(5):
        async for position, record in log.read(SESSION_ID, stream.id, 0):
            recorded.append((position, record))
            if position == await log.last_seq(SESSION_ID, stream.id):
                break
    assert question.message is not None
    assert question.message["id"] == "vmcp-wf.test"
    assert (paused.final, paused.message, paused.pause_ms) == (False, None, 1000)
    assert [r.get("final") for _, r in recorded] == [False, False], recorded
