"""A request's response stream is bounded: a slow reader gets backpressure, then an end.

The stream keeps what no reader has taken yet; beyond its bound the next event waits
(the backend's response is not read meanwhile), and a stream that stays full for
``stall_seconds`` is ended with a ``-32000`` error as the request's final answer.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from vmcp.errors import SlowReader
from vmcp.session.channel import ClientChannel, PendingClientRequests
from vmcp.session.streams import Outbound, ResponseStream, StreamBounds

pytestmark = pytest.mark.anyio


def note(n: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/message", "params": {"n": n}}


async def test_a_full_stream_makes_the_writer_wait_until_a_reader_takes_events() -> None:
    stream = ResponseStream("s", 7, StreamBounds(max_events=3, stall_seconds=5))
    for n in range(3):
        assert await stream.put(Outbound(note(n)))
    put_done = anyio.Event()

    async def writer() -> None:
        await stream.put(Outbound(note(3)))
        put_done.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            await anyio.wait_all_tasks_blocked()
            assert not put_done.is_set(), "a full stream took another event"
            taken = await stream.after(0)
            assert [n for n, _ in taken] == [1, 2, 3]
            await stream.after(3)  # the reader has handled 1-3: room for one more
            await put_done.wait()
    assert len(stream) == 4


async def test_a_stream_that_stays_full_ends_with_a_slow_reader_error() -> None:
    stream = ResponseStream("s", 7, StreamBounds(max_events=2, stall_seconds=0.05))
    assert await stream.put(Outbound(note(0)))
    assert await stream.put(Outbound(note(1)))
    with anyio.fail_after(5):
        assert not await stream.put(Outbound(note(2)))
    events = await stream.after(0)
    final = events[-1][1]
    assert final.final
    assert stream.overflowed
    assert final.message == {"jsonrpc": "2.0", "id": 7, "error": {
        "code": -32000, "message": SlowReader.public_message}}
    assert [n for n, _ in events] == [3], "the unread backlog is dropped for the end"
    assert len(stream._events) == 1


async def test_a_byte_bound_holds_like_the_event_bound() -> None:
    stream = ResponseStream("s", 1, StreamBounds(max_events=1000, max_bytes=2048,
                                                 stall_seconds=0.05))
    big = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"x": "z" * 1500}}
    assert await stream.put(Outbound(big))
    assert await stream.put(Outbound(big))  # one event past the bound is let in...
    assert not await stream.put(Outbound(big))  # ...but no more


async def test_events_a_reader_took_are_dropped_so_memory_stays_bounded() -> None:
    stream = ResponseStream("s", 1, StreamBounds(max_events=10, stall_seconds=5))
    position = 0
    with anyio.fail_after(5):
        for n in range(1000):
            assert await stream.put(Outbound(note(n)))
            position = (await stream.after(position))[-1][0]
    assert len(stream) == 1000
    assert len(stream._events) <= 10
    assert not stream.can_replay(0)
    assert stream.can_replay(995)


async def test_a_channel_stops_its_request_when_the_stream_overflows() -> None:
    stream = ResponseStream("s", 3, StreamBounds(max_events=1, stall_seconds=0.05))
    stopped: list[bool] = []
    channel = ClientChannel(PendingClientRequests("p"), stream, request_id=3,
                            stop=lambda: stopped.append(True))
    with anyio.fail_after(5):
        await channel.notify(note(0))
        assert not stopped
        await channel.notify(note(1))
    assert stopped == [True]
    assert stream.overflowed
