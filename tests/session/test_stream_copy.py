"""The copy of an interrupted stream to the event log: batched, bounded, and stopped at
once when its session ends, even while a Redis call of it is in flight."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from tests.session.test_session_close_answers import session_without_backends
from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy
from vmcp.session import detached
from vmcp.session.streams import Outbound, StreamBounds
from vmcp.store.event_log import RedisEventLog

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

TRIALS = 10
STOP_BOUND_SECONDS = detached.STOP_COPY_SECONDS + 0.5


def note(n: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/message", "params": {"n": n}}


async def xadd_calls(client: aioredis.Redis) -> int:
    """XADDs the server has run (all clients): a shared server, so compare before/after."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_xadd", {}).get("calls", 0))


async def test_an_ended_session_stops_its_copy_while_a_write_is_in_flight(
        redis_server: RedisServer) -> None:
    """Every trial: the copy's pipeline is held at a proxy (in flight at Redis), the session
    ends, and the copy task must be gone within the bound."""
    prefix = f"copy:{uuid.uuid4().hex[:12]}:"
    async with TcpProxy(redis_server.port) as proxy:
        client = aioredis.Redis.from_url(proxy.url, socket_timeout=30)
        try:
            await client.ping()  # the pooled connection exists: the delay hits the XADDs
            log = RedisEventLog(client, prefix + "events:", ttl_seconds=60, max_events=100,
                                timeout_seconds=20)
            for trial in range(TRIALS):
                session = session_without_backends(log)
                stream = session.streams.open(trial)
                stream.append(Outbound(note(trial)))
                proxy.delay_once(20)
                session.work.persist(stream)
                with anyio.fail_after(5):
                    # The proxy tells no one when a chunk takes the delay: look.
                    while proxy.pending_delays:  # noqa: ASYNC110
                        await anyio.sleep(0.005)
                began = time.monotonic()
                copies = set(session.work._copies)
                assert copies
                with anyio.fail_after(STOP_BOUND_SECONDS):
                    await session.aclose()
                    await asyncio.wait(copies)
                assert time.monotonic() - began < STOP_BOUND_SECONDS, f"trial {trial}"
                proxy.cut()  # drop the held connection; the next trial opens another
                await client.connection_pool.disconnect()
                await client.ping()
        finally:
            await client.aclose()


async def test_a_copy_writes_in_batches_and_stops_at_its_bound(
        redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that never comes back: the copy writes at most ``COPY_MAX_EVENTS`` (in
    batches: far fewer round trips than events), then only the stream's end."""
    monkeypatch.setattr(detached, "COPY_MAX_EVENTS", 300)
    prefix = f"copy:{uuid.uuid4().hex[:12]}:"
    client = aioredis.Redis.from_url(redis_server.url)
    log = RedisEventLog(client, prefix + "events:", ttl_seconds=60, max_events=100_000,
                        timeout_seconds=5)
    try:
        session = session_without_backends(log)
        stream = session.streams.open(1)
        stream.bounds = StreamBounds(max_events=50, stall_seconds=0.5)
        session.work.persist(stream)
        before = await xadd_calls(client)
        sent = 0
        with anyio.fail_after(10):
            while await stream.put(Outbound(note(sent))):
                sent += 1
                if sent > 5000:
                    break
        copies = set(session.work._copies)
        if copies:
            with anyio.fail_after(5):
                await asyncio.wait(copies)
        key = prefix + "events:" + session.session_id + ":" + stream.id
        logged = await client.xlen(key)
        last = await client.xrevrange(key, count=1)
        xadds = await xadd_calls(client) - before
    finally:
        await session.aclose()
        await client.aclose()
    assert stream.overflowed, "nothing took the stream's events past the copy's bound"
    assert sent < 5000
    assert 300 <= logged <= 300 + detached.COPY_BATCH_EVENTS + 1
    assert b'"final":true' in last[0][1][b"e"]
    assert xadds >= logged  # other tests may share the server; none runs concurrently here
    assert xadds < logged + 50
