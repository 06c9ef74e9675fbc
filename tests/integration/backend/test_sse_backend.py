"""SseBackend against real SDK servers (legacy HTTP+SSE transport)."""

from __future__ import annotations

from typing import Any

import anyio
import httpx2
import pytest

from tests.integration.backend.listening import first_heard
from vmcp.backend import BackendState, BackendTarget, SseBackend, attach
from vmcp.errors import BackendUnavailable, SessionClosed

pytestmark = pytest.mark.anyio

WAIT = 10


async def test_connect_list_and_call(start_backend: Any, open_connection: Any) -> None:
    backend = start_backend("sse")
    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        assert isinstance(connection, SseBackend)
        assert connection.state.session_id is None  # the session is the stream
        assert connection.state.initialize_result["serverInfo"]["name"] == "test-backend"

        tools = await connection.request("tools/list", None)
        assert "echo" in {tool["name"] for tool in tools["tools"]}
        result = await connection.request(
            "tools/call", {"name": "echo", "arguments": {"text": "hi"}}
        )
        assert result["structuredContent"] == {"result": "hi"}

    assert [seen.http_method for seen in backend.seen.seen][:2] == ["GET", "POST"]
    assert [seen.rpc_method for seen in backend.seen.http("POST")] == [
        "initialize",
        "notifications/initialized",
        "tools/list",
        "tools/call",
    ]


async def test_progress_and_sampling_reach_on_message(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend("sse")
    received: list[dict[str, Any]] = []

    async def on_message(message: dict[str, Any]) -> dict[str, Any] | None:
        received.append(message)
        if message["method"] == "sampling/createMessage":
            return {
                "result": {
                    "role": "assistant",
                    "content": {"type": "text", "text": "yes"},
                    "model": "test-model",
                }
            }
        return None

    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        params = {"name": "progress", "arguments": {"steps": 2}, "_meta": {"progressToken": "p"}}
        progress = await connection.request("tools/call", params, on_message=on_message)
        asked = await connection.request(
            "tools/call", {"name": "ask", "arguments": {"question": "ok?"}}, on_message=on_message
        )

    assert progress["structuredContent"] == {"result": "done"}
    assert asked["structuredContent"] == {"result": "the model said: yes"}
    assert [message["method"] for message in received] == [
        "notifications/progress",
        "notifications/progress",
        "sampling/createMessage",
    ]


async def test_attach_opens_a_fresh_session(
    start_backend: Any, open_connection: Any, http: httpx2.AsyncClient
) -> None:
    backend = start_backend("sse")
    with anyio.fail_after(WAIT):
        first = await open_connection(backend)
        stored = BackendState.from_json(first.state.to_json())
        target = BackendTarget("test", backend.url, transport="sse")
        second = await attach(
            target,
            http,
            stored,
            client_info={"name": "x", "version": "1"},
            capabilities={},
            timeout=5,
        )
        try:
            result = await second.request(
                "tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}}
            )
            assert result["structuredContent"] == {"result": 3}
        finally:
            await second.aclose()
    assert backend.seen.count("initialize") == 2
    assert len(backend.seen.http("GET")) == 2


async def test_backend_restart_reinitializes_on_the_next_call(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend("sse")
    hook_calls: list[BackendState] = []

    async def on_reinitialized(replaced: BackendState, state: BackendState) -> bool:
        hook_calls.append(state)
        return True

    with anyio.fail_after(WAIT):
        connection = await open_connection(backend, on_reinitialized=on_reinitialized)
        await backend.restart()

        results: list[dict[str, Any]] = []

        async def call(i: int) -> None:
            params = {"name": "add", "arguments": {"a": i, "b": 1}}
            results.append(await connection.request("tools/call", params))

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(call, i)

    assert sorted(r["structuredContent"]["result"] for r in results) == [1, 2, 3, 4, 5]
    assert backend.seen.count("initialize") == 1
    assert len(hook_calls) == 1
    assert connection.statistics().reinitializations == 1


async def test_listen_receives_session_wide_notifications(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend("sse")
    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        received = await first_heard(
            connection,
            anyio.wait_all_tasks_blocked,  # the listener is registered and waiting
            lambda: connection.request("tools/call", {"name": "announce", "arguments": {}}))

    assert [message["method"] for message in received] == ["notifications/tools/list_changed"]


async def test_listen_reopens_the_session_after_backend_restart(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend("sse")
    reinitialized = anyio.Event()

    async def on_reinitialized(replaced: BackendState, state: BackendState) -> bool:
        reinitialized.set()
        return True

    async def no_call_was_made() -> None:
        assert backend.seen.count("initialize") == 1

    with anyio.fail_after(WAIT):
        connection = await open_connection(backend, on_reinitialized=on_reinitialized)
        received = await first_heard(
            connection,
            anyio.wait_all_tasks_blocked,
            backend.restart,
            reinitialized.wait,  # the listener did it; no call was made
            no_call_was_made,
            lambda: connection.request("tools/call", {"name": "announce", "arguments": {}}))

    assert [message["method"] for message in received] == ["notifications/tools/list_changed"]
    assert connection.statistics().reinitializations == 1


async def test_aclose_ends_the_stream_and_refuses_calls(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend("sse")
    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        await connection.aclose()
        await connection.aclose()
        with pytest.raises(SessionClosed):
            await connection.request("tools/list", None)


async def test_unreachable_backend_raises_unavailable(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend("sse")
    await anyio.to_thread.run_sync(backend.stop)
    with anyio.fail_after(WAIT), pytest.raises(BackendUnavailable):
        await open_connection(backend)
