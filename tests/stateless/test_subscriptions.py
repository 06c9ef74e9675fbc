"""The change hub behind listen streams: coalescing, bounds, drain, and the stream's frames."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from mcp.shared.subscriptions import PromptsListChanged, ResourceUpdated, ToolsListChanged
from mcp_types import SubscriptionFilter
from starlette.types import Message

from tests.support.redis_server import RedisServer
from vmcp.server.listen import PING, Listening
from vmcp.stateless.subscriptions import (
    ChangeHub,
    ListenerEnd,
    SubscriptionLimit,
    SubscriptionsClosed,
)
from vmcp.store import RedisStore
from vmcp.store.pubsub import RedisChangeChannel

pytestmark = pytest.mark.anyio

TOOLS = SubscriptionFilter(tools_list_changed=True)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def hub_with(clock: Clock, **overrides: Any) -> ChangeHub:
    settings: dict[str, Any] = {"max_listeners": 4, "buffer": 8, "coalesce_seconds": 10.0,
                                "replica": "r1", "clock": clock}
    return ChangeHub(**{**settings, **overrides})


async def test_a_burst_of_one_kind_is_one_change_now_and_one_at_the_end_of_the_window(
) -> None:
    clock = Clock()
    hub = hub_with(clock)
    listener = hub.open(TOOLS)
    async with anyio.create_task_group() as tg:
        tg.start_soon(hub.run)
        for _ in range(10):
            hub.changed(["tools"])
        assert listener.events.receive_nowait() == ToolsListChanged()
        with pytest.raises(anyio.WouldBlock):
            listener.events.receive_nowait()
        clock.now = 10.5  # the window is over before the flush looks at the clock
        with anyio.fail_after(5):
            assert await listener.events.receive() == ToolsListChanged()
        assert hub.delivered == 2
        tg.cancel_scope.cancel()
    hub.close(listener)


async def test_a_listener_gets_only_the_kinds_it_asked_for() -> None:
    hub = hub_with(Clock(), coalesce_seconds=0.0)
    tools = hub.open(TOOLS)
    prompts = hub.open(SubscriptionFilter(prompts_list_changed=True))
    hub.changed(["tools", "prompts"])
    assert tools.events.receive_nowait() == ToolsListChanged()
    assert prompts.events.receive_nowait() == PromptsListChanged()
    for listener in (tools, prompts):
        with pytest.raises(anyio.WouldBlock):
            listener.events.receive_nowait()
        hub.close(listener)


async def test_resource_subscriptions_are_counted_per_uri_and_updates_go_to_their_listeners(
        ) -> None:
    hub = hub_with(Clock())
    told: list[str] = []
    hub.on_resources = told.append
    a = hub.open(SubscriptionFilter(), {"x://a": "one", "x://b": "two"})
    b = hub.open(SubscriptionFilter(), {"x://a": "one"})
    # The upstream follows only the first listener of a URI in, and the last one out.
    assert told == ["one", "two"]
    assert hub.subscribed("one") == {"x://a"}
    assert hub.subscribed("two") == {"x://b"}
    hub.resource_updated("two", "x://b")
    hub.resource_updated("two", "x://a")  # not the backend x://a was subscribed at
    assert a.events.receive_nowait() == ResourceUpdated(uri="x://b")
    with pytest.raises(anyio.WouldBlock):
        b.events.receive_nowait()
    hub.close(a)
    assert told == ["one", "two", "two"]
    assert hub.subscribed("one") == {"x://a"}
    assert hub.subscribed("two") == frozenset()
    hub.close(b)
    assert told[-1] == "one"
    assert hub.subscribed("one") == frozenset()


async def test_a_listener_that_stops_reading_is_ended_at_its_buffer() -> None:
    hub = hub_with(Clock(), buffer=2, coalesce_seconds=0.0)
    slow = hub.open(TOOLS)
    for _ in range(3):
        hub.changed(["tools"])
    assert slow.end is ListenerEnd.SLOW
    received = [slow.events.receive_nowait(), slow.events.receive_nowait()]
    assert received == [ToolsListChanged()] * 2
    with pytest.raises(anyio.EndOfStream):
        slow.events.receive_nowait()
    hub.close(slow)
    assert hub.ended_slow == 1


async def test_listeners_are_bounded_and_slots_come_back() -> None:
    hub = hub_with(Clock(), max_listeners=1)
    first = hub.open(TOOLS)
    with pytest.raises(SubscriptionLimit):
        hub.open(TOOLS)
    hub.close(first)
    hub.close(hub.open(TOOLS))
    assert hub.listeners == 0


async def test_draining_ends_every_listener_gracefully_and_opens_none() -> None:
    hub = hub_with(Clock())
    listener = hub.open(TOOLS)
    hub.drain()
    assert listener.end is ListenerEnd.DRAINED
    with pytest.raises(anyio.EndOfStream):
        listener.events.receive_nowait()
    with pytest.raises(SubscriptionsClosed):
        hub.open(TOOLS)
    hub.close(listener)


async def test_the_stream_acknowledges_first_then_keeps_alive_with_comments() -> None:
    hub = hub_with(Clock(), coalesce_seconds=0.0)
    listening = Listening(hub, ping_seconds=0.01)
    sent: list[Message] = []
    hang_up = anyio.Event()
    pinged = anyio.Event()
    changed = anyio.Event()

    async def receive() -> Message:
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if b"list_changed" in message.get("body", b""):
            changed.set()
        if sum(1 for m in sent if m.get("body") == PING) >= 2:
            pinged.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listening.serve, receive, send, 5, {"notifications": {
            "toolsListChanged": True}})
        with anyio.fail_after(5):
            await pinged.wait()
        hub.changed(["tools"])
        with anyio.fail_after(5):
            await changed.wait()
        hang_up.set()
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 200
    ack = json.loads(sent[1]["body"].split(b"data: ", 1)[1])
    assert ack["method"] == "notifications/subscriptions/acknowledged"
    assert ack["params"]["_meta"] == {"io.modelcontextprotocol/subscriptionId": 5}
    change = next(m for m in sent if b"list_changed" in m.get("body", b""))
    assert json.loads(change["body"].split(b"data: ", 1)[1])["params"]["_meta"] == {
        "io.modelcontextprotocol/subscriptionId": 5}
    assert hub.listeners == 0  # the hang-up gave its slot back


async def test_closing_releases_every_stream_and_later_changes_are_dropped() -> None:
    hub = hub_with(Clock())
    listener = hub.open(TOOLS)
    hub.close_all()
    assert hub.listeners == 0
    assert listener.end is ListenerEnd.DRAINED
    hub.changed(["tools"])  # nothing left to deliver to: no error either


async def test_a_change_on_one_hub_reaches_the_listeners_of_another_over_redis(
        redis_server: RedisServer) -> None:
    prefix = "vmcp:changes-test:"
    store = RedisStore.from_url(redis_server.url, key_prefix=prefix, ttl_seconds=60,
                                timeout_seconds=2.0)
    forgotten: list[str | None] = []

    def hub(replica: str) -> ChangeHub:
        channel = RedisChangeChannel(store.client, prefix + "changes", timeout_seconds=2.0)
        return ChangeHub(max_listeners=2, buffer=4, coalesce_seconds=0.0, replica=replica,
                         channel=channel, on_change=forgotten.append)

    first, second = hub("r1"), hub("r2")
    listener = second.open(SubscriptionFilter(prompts_list_changed=True))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.run)
            tg.start_soon(second.run)
            with anyio.fail_after(10):
                while True:  # until the second hub's subscription is in place
                    first.changed(["prompts"], backend="notes")
                    with anyio.move_on_after(0.2):
                        assert await listener.events.receive() == PromptsListChanged()
                        break
            assert "notes" in forgotten  # its cached listings were dropped there too
            tg.cancel_scope.cancel()
    finally:
        first.close_all()
        second.close_all()
        await store.aclose()


class _SlowChannel:
    """A change channel whose publish waits until released (a slow store)."""

    def __init__(self) -> None:
        self.publishing = anyio.Event()
        self.release = anyio.Event()

    async def publish(self, payload: dict[str, Any]) -> None:
        self.publishing.set()
        await self.release.wait()

    async def subscribe(self) -> Any:
        await anyio.sleep_forever()
        yield {}  # pragma: no cover - never reached


async def test_closing_while_a_change_is_being_published_ends_the_hub_quietly() -> None:
    # Shutdown closes the outbox while the publisher is inside a publish: the publisher
    # then finds its stream closed, which must end it, not fail the replica's lifespan.
    channel = _SlowChannel()
    hub = ChangeHub(max_listeners=2, buffer=4, coalesce_seconds=0.0, replica="r1",
                    channel=channel)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.run)
            hub.changed(["tools"])
            hub.changed(["prompts"])  # a second change waits behind the first
            await channel.publishing.wait()
            hub.close_all()
            channel.release.set()
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
