"""Between replicas over a real Redis: the session relay, the ended-session broadcast and
the event log of resumable streams.

Each "replica" here is its own client on the one server, as separate processes would be.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import TcpProxy
from vmcp.errors import InvalidSessionId, StoreError, StoreTimeout
from vmcp.store import RedisStore, pubsub
from vmcp.store.event_log import RedisEventLog
from vmcp.store.identity_index import RedisIdentityIndex
from vmcp.store.pubsub import RECONNECT_DELAYS, RedisEndedSessionBus, RedisSessionRelay

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

SID = "relay-session"
OTHER = "other-session"


@pytest.fixture
async def clients(redis_server: RedisServer) -> AsyncIterator[Callable[[], aioredis.Redis]]:
    made: list[aioredis.Redis] = []

    def client() -> aioredis.Redis:
        made.append(aioredis.Redis.from_url(redis_server.url))
        return made[-1]

    yield client
    for each in made:
        await each.aclose()


async def subscribers(client: aioredis.Redis, channel: str) -> int:
    return int((await client.pubsub_numsub(channel))[0][1])


async def wait_for_subscribers(client: aioredis.Redis, channel: str, count: int) -> None:
    with anyio.fail_after(5):
        while await subscribers(client, channel) != count:  # noqa: ASYNC110 - server state, no event to await
            await anyio.sleep(0.01)


class Inbox:
    """A relay handler that keeps what it got and says when something came."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self._arrived = anyio.Event()

    def __call__(self, payload: dict[str, Any]) -> None:
        self.got.append(payload)
        self._arrived.set()

    async def next(self) -> dict[str, Any]:
        with anyio.fail_after(5):
            await self._arrived.wait()
        self._arrived = anyio.Event()
        return self.got[-1]


async def test_a_payload_published_on_one_replica_reaches_the_listener_on_another(
    clients: Callable[[], aioredis.Redis], key_prefix: str,
) -> None:
    here = RedisSessionRelay(clients(), key_prefix, timeout_seconds=2.0)
    there = RedisSessionRelay(clients(), key_prefix, timeout_seconds=2.0)
    inbox, elsewhere = Inbox(), Inbox()
    async with anyio.create_task_group() as tg:
        tg.start_soon(here.run)
        async with here.listen(SID, inbox), here.listen(OTHER, elsewhere):
            await there.publish(SID, {"n": 1})   # no wait: listen returns once subscribed
            assert await inbox.next() == {"n": 1}
            await there.publish(OTHER, {"n": 2})
            assert await elsewhere.next() == {"n": 2}
        assert inbox.got == [{"n": 1}]
        assert (there.published, here.published) == (2, 0)
        assert (here.delivered, there.delivered) == (2, 0)
        tg.cancel_scope.cancel()
    await here.aclose()
    await here.aclose()
    await there.aclose()


async def test_every_local_listener_gets_a_payload_and_the_last_one_out_unsubscribes(
    clients: Callable[[], aioredis.Redis], key_prefix: str,
) -> None:
    relay = RedisSessionRelay(clients(), key_prefix, timeout_seconds=2.0)
    observer = clients()
    channel = key_prefix + SID
    first, second = Inbox(), Inbox()
    async with anyio.create_task_group() as tg:
        tg.start_soon(relay.run)
        async with relay.listen(SID, first):
            async with relay.listen(SID, second):
                assert await subscribers(observer, channel) == 1   # one channel, shared
                await relay.publish(SID, {"to": "both"})
                assert await first.next() == {"to": "both"}
                assert await second.next() == {"to": "both"}
            await relay.publish(SID, {"to": "first"})
            assert await first.next() == {"to": "first"}
            assert second.got == [{"to": "both"}]
            assert await subscribers(observer, channel) == 1
        await wait_for_subscribers(observer, channel, 0)
        async with relay.listen(SID, second):                       # subscribes again
            await relay.publish(SID, {"to": "second"})
            assert await second.next() == {"to": "second"}
        tg.cancel_scope.cancel()
    assert relay.delivered == 4
    await relay.aclose()


async def test_a_malformed_relay_message_is_dropped_and_the_next_one_delivered(
    clients: Callable[[], aioredis.Redis], key_prefix: str, caplog: pytest.LogCaptureFixture,
) -> None:
    relay = RedisSessionRelay(clients(), key_prefix, timeout_seconds=2.0)
    raw = clients()
    inbox = Inbox()
    async with anyio.create_task_group() as tg:
        tg.start_soon(relay.run)
        async with relay.listen(SID, inbox):
            with caplog.at_level(logging.WARNING, logger="vmcp.store.pubsub"):
                await raw.publish(key_prefix + SID, b"{not json")
                await relay.publish(SID, {"ok": True})
                assert await inbox.next() == {"ok": True}
        tg.cancel_scope.cancel()
    assert inbox.got == [{"ok": True}]
    assert relay.delivered == 1
    assert [r.getMessage() for r in caplog.records] == ["ignored a malformed relay message"]
    await relay.aclose()


async def test_a_handler_that_fails_does_not_end_the_relay(
    clients: Callable[[], aioredis.Redis], key_prefix: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """One session's handler raising (its session closing meanwhile) must not end the relay
    every session of the replica shares: the next message is still delivered."""
    relay = RedisSessionRelay(clients(), key_prefix, timeout_seconds=2.0)
    inbox = Inbox()

    def failing(payload: dict[str, Any]) -> None:
        if payload.get("fail"):
            raise RuntimeError("the session is closing")
        inbox(payload)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(relay.run)
            async with relay.listen(SID, failing):
                with caplog.at_level(logging.ERROR, logger="vmcp.store.pubsub"):
                    await relay.publish(SID, {"fail": True})
                    await relay.publish(SID, {"ok": True})
                    assert await inbox.next() == {"ok": True}
            tg.cancel_scope.cancel()
    assert [r.getMessage() for r in caplog.records] == ["a relay message's handler failed"]
    await relay.aclose()


async def test_relay_refuses_a_bad_session_id_and_reports_an_unreachable_store(
    key_prefix: str,
) -> None:
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    relay = RedisSessionRelay(dead, key_prefix, timeout_seconds=0.5)
    with pytest.raises(InvalidSessionId):
        await relay.publish("bad id", {})
    with pytest.raises(StoreError):
        await relay.publish(SID, {})
    assert relay.published == 0
    with pytest.raises(StoreError):
        async with relay.listen(SID, Inbox()):
            raise AssertionError("listening without a store")
    await relay.aclose()
    await dead.aclose()


async def next_id(ids: AsyncIterator[str]) -> str:
    with anyio.fail_after(5):
        return await ids.__anext__()


async def test_ended_sessions_are_announced_skipping_malformed_ids_and_surviving_a_lost_link(
    clients: Callable[[], aioredis.Redis], key_prefix: str, caplog: pytest.LogCaptureFixture,
) -> None:
    channel = key_prefix + "ended"
    listener = clients()
    sender = RedisEndedSessionBus(clients(), channel, timeout_seconds=2.0)
    observer = clients()
    ids = RedisEndedSessionBus(listener, channel, timeout_seconds=2.0).subscribe()
    with caplog.at_level(logging.WARNING, logger="vmcp.store.pubsub"):
        waiting = anyio.create_task_group()
        async with waiting:
            received: list[str] = []

            async def first() -> None:
                received.append(await next_id(ids))

            waiting.start_soon(first)
            await wait_for_subscribers(observer, channel, 1)
            await observer.publish(channel, b"\xff\xfe")        # not even UTF-8: skipped
            await observer.publish(channel, "not a valid id")   # skipped
            await sender.publish("s-1")
        assert received == ["s-1"]

        # The subscription's connection dies: the bus subscribes again after the first,
        # shortest delay (see the log below) and goes on delivering.
        await observer.client_kill_filter(_type="pubsub")
        async with anyio.create_task_group() as again:
            async def second() -> None:
                received.append(await next_id(ids))

            again.start_soon(second)
            await wait_for_subscribers(observer, channel, 0)
            await wait_for_subscribers(observer, channel, 1)
            await sender.publish("s-2")
        assert received == ["s-1", "s-2"]
    await ids.aclose()  # type: ignore[attr-defined]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:2] == ["ignored a malformed id on the ended-session channel"] * 2
    assert messages[2].startswith("ended-session channel lost (")
    assert messages[2].endswith(f"); again in {RECONNECT_DELAYS[0]:.1f}s")
    with pytest.raises(InvalidSessionId):
        await sender.publish("")


async def test_the_event_log_keeps_a_streams_events_in_order_and_says_which_streams_exist(
    redis_server: RedisServer, clients: Callable[[], aioredis.Redis], key_prefix: str,
) -> None:
    client = clients()
    log = RedisEventLog(client, key_prefix, ttl_seconds=30, max_events=100,
                        timeout_seconds=2.0)
    assert await log.exists(SID, "r1-1") is False
    for seq in (1, 2, 3):
        await log.append(SID, "r1-1", [(seq, {"m": {"n": seq}, "final": seq == 3})])
    assert await log.exists(SID, "r1-1") is True
    assert await log.exists(SID, "r1-2") is False
    assert await log.exists(OTHER, "r1-1") is False
    key = f"{key_prefix}{SID}:r1-1"
    assert 25_000 < await client.pttl(key) <= 30_000
    events = []
    with anyio.fail_after(5):
        async for seq, event in log.read(SID, "r1-1", 1):
            events.append((seq, event))
            if event["final"]:
                break
    assert events == [(2, {"m": {"n": 2}, "final": False}), (3, {"m": {"n": 3}, "final": True})]
    assert (await client.xrange(key))[0][1][b"e"] == b'{"m":{"n":1},"final":false}'
    bounded = RedisEventLog(client, key_prefix, ttl_seconds=30, max_events=10,
                            timeout_seconds=2.0)
    for seq in range(1, 501):
        await bounded.append(OTHER, "r1-1", [(seq, {"n": seq})])
    assert await client.xlen(f"{key_prefix}{OTHER}:r1-1") < 250      # trimmed as it grows
    with pytest.raises(InvalidSessionId):
        await log.exists("bad id", "r1-1")


async def test_the_broadcast_backs_off_step_by_step_while_redis_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Each failed subscription waits the next delay, and the last one repeats."""
    monkeypatch.setattr(pubsub, "RECONNECT_DELAYS", (0.1, 0.2, 0.3, 0.4, 0.5))
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    ids = RedisEndedSessionBus(dead, "ended", timeout_seconds=0.5).subscribe()

    def delays() -> list[str]:
        return [r.getMessage().rsplit("again in ", 1)[-1] for r in caplog.records
                if r.getMessage().startswith("ended-session channel lost")]

    with caplog.at_level(logging.WARNING, logger="vmcp.store.pubsub"):
        with anyio.move_on_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ids.__anext__)
                while len(delays()) < 6:  # noqa: ASYNC110 - the log is the observable
                    await anyio.sleep(0.02)
                tg.cancel_scope.cancel()
    assert delays()[:6] == ["0.1s", "0.2s", "0.3s", "0.4s", "0.5s", "0.5s"]
    await ids.aclose()  # type: ignore[attr-defined]
    await dead.aclose()


async def test_every_store_call_names_its_operation_in_its_error(key_prefix: str) -> None:
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    log = RedisEventLog(dead, key_prefix, ttl_seconds=5, max_events=10, timeout_seconds=1)
    bus = RedisEndedSessionBus(dead, "ended", timeout_seconds=1)
    relay = RedisSessionRelay(dead, key_prefix, timeout_seconds=1)
    store = RedisStore(dead, key_prefix=key_prefix, ttl_seconds=5, timeout_seconds=1)
    index = RedisIdentityIndex(store, key_prefix=key_prefix, ttl_seconds=5, timeout_seconds=1)

    async def read_one() -> None:
        async for _ in log.read(SID, "r1-1", 0):
            break

    for operation, call in (("xadd", lambda: log.append(SID, "r1-1", [(1, {})])),
                            ("exists", lambda: log.exists(SID, "r1-1")),
                            ("xread", read_one),
                            ("publish", lambda: bus.publish(SID)),
                            ("publish", lambda: relay.publish(SID, {})),
                            ("ping", store.ping),
                            ("delete", lambda: store.delete(SID)),
                            ("identity index", lambda: index.admit("b", SID, 1)),
                            ("identity index", lambda: index.remove("b", SID))):
        with anyio.fail_after(5), pytest.raises(StoreError, match=f"^redis {operation}: "):
            await call()
    await dead.aclose()


async def test_each_call_on_a_stalled_redis_ends_at_its_own_deadline(
    redis_server: RedisServer, key_prefix: str,
) -> None:
    """A client without socket timeouts: only each call's own deadline ends the wait."""
    async with TcpProxy(redis_server.port) as proxy:
        client = aioredis.Redis.from_url(proxy.url)
        log = RedisEventLog(client, key_prefix, ttl_seconds=5, max_events=10,
                            timeout_seconds=0.3)
        bus = RedisEndedSessionBus(client, "ended", timeout_seconds=0.3)
        relay = RedisSessionRelay(client, key_prefix, timeout_seconds=0.3)
        store = RedisStore(client, key_prefix=key_prefix, ttl_seconds=5, timeout_seconds=0.3)
        index = RedisIdentityIndex(store, key_prefix=key_prefix, ttl_seconds=5,
                                   timeout_seconds=0.3)
        await client.ping()
        proxy.stall()

        async def read_one() -> None:
            async for _ in log.read(SID, "r1-1", 0):
                break

        for call in (lambda: log.append(SID, "r1-1", [(1, {})]), lambda: log.exists(SID, "r1-1"),
                     lambda: bus.publish(SID), lambda: relay.publish(SID, {}), store.ping,
                     lambda: store.delete(SID),
                     lambda: index.admit("b", SID, 1), lambda: index.remove("b", SID),
                     read_one):
            started = time.monotonic()
            with anyio.fail_after(6), pytest.raises(StoreTimeout):
                await call()
            assert time.monotonic() - started < 3
        proxy.resume()
        await client.aclose()


async def test_a_read_waiting_for_new_events_blocks_on_the_server_instead_of_polling(
    redis_server: RedisServer, clients: Callable[[], aioredis.Redis], key_prefix: str,
) -> None:
    client = clients()
    log = RedisEventLog(client, key_prefix, ttl_seconds=30, max_events=100,
                        timeout_seconds=2.0)
    await log.append(SID, "r1-1", [(1, {"m": None, "final": False})])

    async def reads() -> int:
        stats = await client.info("commandstats")
        return int(stats.get("cmdstat_xread", {}).get("calls", 0))

    before = await reads()
    with anyio.move_on_after(0.5):
        async for _ in log.read(SID, "r1-1", 1):   # nothing after event 1 yet
            raise AssertionError("no event was appended")
    assert await reads() - before == 1             # one XREAD BLOCK, not a loop of them


async def test_relay_payloads_travel_as_compact_json(
    clients: Callable[[], aioredis.Redis], key_prefix: str,
) -> None:
    relay = RedisSessionRelay(clients(), key_prefix, timeout_seconds=2.0)
    raw = clients().pubsub()
    await raw.subscribe(key_prefix + SID)
    await relay.publish(SID, {"a": 1, "b": [2, 3]})
    with anyio.fail_after(5):
        while (message := await raw.get_message(ignore_subscribe_messages=True,
                                                timeout=1.0)) is None:
            pass
    assert message["data"] == b'{"a":1,"b":[2,3]}'
    await raw.aclose()


def test_a_message_for_a_channel_nobody_here_listens_to_is_dropped(key_prefix: str) -> None:
    """E.g. published while the last local listener was leaving."""
    relay = RedisSessionRelay(aioredis.Redis(), key_prefix, timeout_seconds=1)
    relay._dispatch({"type": "message", "channel": (key_prefix + SID).encode(),
                     "data": b"{}"})
    relay._dispatch({"type": "subscribe", "channel": key_prefix + SID, "data": 1})
    assert relay.delivered == 0


async def test_the_relay_goes_on_delivering_after_its_connection_is_killed(
    clients: Callable[[], aioredis.Redis], key_prefix: str,
) -> None:
    relay = RedisSessionRelay(clients(), key_prefix, timeout_seconds=2.0)
    sender = RedisSessionRelay(clients(), key_prefix, timeout_seconds=2.0)
    observer = clients()
    inbox = Inbox()
    async with anyio.create_task_group() as tg:
        tg.start_soon(relay.run)
        async with relay.listen(SID, inbox):
            await sender.publish(SID, {"n": 1})
            assert await inbox.next() == {"n": 1}
            await observer.client_kill_filter(_type="pubsub")
            with anyio.fail_after(10):
                while not inbox.got[1:]:   # resubscribed: a later payload gets through
                    await sender.publish(SID, {"n": 2})
                    with anyio.move_on_after(0.2):
                        await inbox.next()
        tg.cancel_scope.cancel()
    assert inbox.got[-1] == {"n": 2}
    await relay.aclose()
