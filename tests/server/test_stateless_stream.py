"""How a 2026-07-28 request's answer is written (``answer_stream``): JSON when
the work only answers, SSE once it notifies, and nothing, with the work cancelled, when the
client hangs up first."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from vmcp.server.stateless_answer import answer_stream

pytestmark = pytest.mark.anyio

Work = Callable[[Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[dict[str, Any]]]


async def _answer(request_id: Any, work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": await work}


async def stream(work: Work, hang_up: anyio.Event | None = None) -> list[dict[str, Any]]:
    """Run ``_stream`` for request 7; what it sent. ``hang_up``: set, the client leaves."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if hang_up is None:
            await anyio.sleep_forever()
        else:
            await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with anyio.fail_after(5):
        await answer_stream(receive, send, 7, _answer, lambda message: 200, work)
    return sent


async def test_an_answer_alone_is_one_json_response() -> None:
    async def work(notify: Any) -> dict[str, Any]:
        return {"content": []}

    start, body = await stream(work)
    assert start["status"] == 200
    assert json.loads(body["body"]) == {"jsonrpc": "2.0", "id": 7, "result": {"content": []}}


async def test_a_notification_turns_the_answer_into_an_event_stream() -> None:
    async def work(notify: Any) -> dict[str, Any]:
        await notify({"method": "notifications/progress", "params": {"progress": 1}})
        return {"content": []}

    sent = await stream(work)
    assert dict(sent[0]["headers"])[b"content-type"] == b"text/event-stream"
    assert b"notifications/progress" in sent[1]["body"]
    assert b'"id":7' in sent[-1]["body"].replace(b" ", b"")
    assert sent[-1]["more_body"] is False


async def test_a_client_that_hangs_up_cancels_the_work_and_gets_nothing() -> None:
    hang_up = anyio.Event()
    started, cancelled = anyio.Event(), anyio.Event()

    async def work(notify: Any) -> dict[str, Any]:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    async def leave_once_started() -> None:
        await started.wait()
        hang_up.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(leave_once_started)
        sent = await stream(work, hang_up)
    assert cancelled.is_set()
    assert sent == []


async def test_a_failing_work_is_raised_not_swallowed() -> None:
    async def work(notify: Any) -> dict[str, Any]:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        await stream(work)
