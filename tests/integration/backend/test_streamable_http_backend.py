"""StreamableHttpBackend against real SDK servers (Streamable HTTP transport)."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import anyio
import httpx2
import pytest

from tests.integration.backend.listening import first_heard
from vmcp.backend import (
    STREAM_PAUSED,
    BackendConnection,
    BackendRpcError,
    BackendState,
    BackendTarget,
    StreamableHttpBackend,
    attach,
)
from vmcp.errors import (
    BackendSessionExpired,
    BackendTimeout,
    BackendUnavailable,
    SessionClosed,
)

pytestmark = pytest.mark.anyio

CLIENT = {"name": "vmcp-test", "version": "0.0.1"}
WAIT = 10  # upper bound on any single wait in these tests, in seconds


async def wait_for(event: Any) -> None:
    """Wait for a threading.Event that the backend's thread sets."""
    assert await anyio.to_thread.run_sync(event.wait, WAIT), "the backend never got there"


def add(a: int, b: int) -> dict[str, Any]:
    return {"name": "add", "arguments": {"a": a, "b": b}}


@pytest.mark.parametrize("json_response", [False, True], ids=["sse-responses", "json-responses"])
async def test_connect_list_and_call(
    start_backend: Any, open_connection: Any, json_response: bool
) -> None:
    backend = start_backend(json_response=json_response)
    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)

        state = connection.state
        assert state.session_id
        assert state.protocol_version == "2025-11-25"
        assert state.initialize_result["serverInfo"] == {"name": "test-backend", "version": "1.2.3"}
        assert state.initialize_result["instructions"] == "Test backend for vmcp."

        tools = await connection.request("tools/list", None)
        assert {"echo", "add", "slow", "progress", "ask"} <= {
            tool["name"] for tool in tools["tools"]
        }
        result = await connection.request("tools/call", add(2, 3))
        assert result["structuredContent"] == {"result": 5}
        assert result["isError"] is False

    assert [seen.rpc_method for seen in backend.seen.seen] == [
        "initialize",
        "notifications/initialized",
        "tools/list",
        "tools/call",
    ]
    # Everything after initialize names the session and the negotiated version.
    assert {seen.session_id for seen in backend.seen.seen[1:]} == {state.session_id}
    assert connection.statistics().requests == 2


@pytest.mark.parametrize("json_response", [False, True], ids=["sse-responses", "json-responses"])
async def test_calls_reuse_one_http_connection(
    start_backend: Any, open_connection: Any, json_response: bool
) -> None:
    backend = start_backend(json_response=json_response)
    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        for i in range(5):
            await connection.request("tools/call", add(i, i))
    # A response stream read to its end returns the connection to the pool; one
    # closed early would cost a new TCP connection per call.
    calls = [seen for seen in backend.seen.seen if seen.rpc_method == "tools/call"]
    assert len({seen.client_port for seen in calls}) == 1


async def test_stateless_backend_has_no_session(start_backend: Any, open_connection: Any) -> None:
    backend = start_backend(stateless=True, json_response=True)
    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        assert connection.state.session_id is None
        result = await connection.request("tools/call", add(1, 1))
        assert result["structuredContent"] == {"result": 2}
        async with aclosing(connection.listen()) as messages:
            assert [message async for message in messages] == []
        await connection.aclose()
    assert backend.seen.http("DELETE") == []


async def test_progress_notifications_reach_on_message(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend()
    received: list[dict[str, Any]] = []

    async def on_message(message: dict[str, Any]) -> dict[str, Any] | None:
        received.append(message)
        return None

    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        params = {"name": "progress", "arguments": {"steps": 3}, "_meta": {"progressToken": "tok"}}
        result = await connection.request("tools/call", params, on_message=on_message)

    assert result["structuredContent"] == {"result": "done"}
    assert [message["method"] for message in received] == ["notifications/progress"] * 3
    assert [message["params"]["progress"] for message in received] == [1, 2, 3]
    assert {message["params"]["progressToken"] for message in received} == {"tok"}


async def test_sampling_request_is_answered_through_on_message(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend()
    asked: list[dict[str, Any]] = []

    async def on_message(message: dict[str, Any]) -> dict[str, Any] | None:
        asked.append(message)
        # A relaying handler may come back with its own id; the connection restores
        # the backend's.
        return {
            "jsonrpc": "2.0",
            "id": "not-the-backends-id",
            "result": {
                "role": "assistant",
                "content": {"type": "text", "text": "forty-two"},
                "model": "test-model",
            },
        }

    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        params = {"name": "ask", "arguments": {"question": "meaning of life?"}}
        result = await connection.request("tools/call", params, on_message=on_message)

    assert result["structuredContent"] == {"result": "the model said: forty-two"}
    assert [message["method"] for message in asked] == ["sampling/createMessage"]
    assert asked[0]["params"]["messages"][0]["content"]["text"] == "meaning of life?"
    assert backend.seen.count(None) == 1  # the POSTed answer has no method


async def test_server_request_without_handler_is_refused(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend()
    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        with pytest.raises(BackendRpcError) as caught:
            await connection.request("tools/call", {"name": "ask", "arguments": {"question": "?"}})
    # The backend got method-not-found for its sampling request, and its tool passed
    # that error on as the answer to the call.
    assert caught.value.code == -32601
    assert backend.seen.count(None) == 1  # our refusal, POSTed back


async def test_backend_rpc_error_is_relayed_with_its_code(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend()
    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        with pytest.raises(BackendRpcError) as caught:
            await connection.request("no/such/method", {})
    assert caught.value.code == -32601
    assert caught.value.error_object()["code"] == -32601
    stats = connection.statistics()
    assert (stats.requests, stats.errors, stats.rpc_errors) == (1, 0, 1)


async def test_attach_resumes_the_session_without_wire_traffic(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend()
    with anyio.fail_after(WAIT):
        first = await open_connection(backend)
        stored = first.state.to_json()  # what the session metadata keeps
        traffic_before = len(backend.seen.seen)

        # Another replica: its own HTTP client, only the stored state.
        async with httpx2.AsyncClient() as other_http:
            target = BackendTarget("test", backend.url)
            second = await attach(
                target,
                other_http,
                BackendState.from_json(stored),
                client_info=CLIENT,
                capabilities={},
                timeout=5,
            )
            assert isinstance(second, StreamableHttpBackend)
            assert len(backend.seen.seen) == traffic_before
            assert second.state == first.state

            result = await second.request("tools/call", add(20, 22))
            assert result["structuredContent"] == {"result": 42}
            # Both objects drive the one backend session, with distinct request ids.
            assert (await first.request("tools/call", add(1, 2)))["structuredContent"] == {
                "result": 3
            }

    assert backend.seen.count("initialize") == 1
    assert {seen.session_id for seen in backend.seen.seen[1:]} == {first.state.session_id}


async def test_backend_restart_reinitializes_once_for_concurrent_calls(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend()
    hook_calls: list[BackendState] = []

    async def on_reinitialized(replaced: BackendState, state: BackendState) -> bool:
        hook_calls.append(state)
        return True

    with anyio.fail_after(WAIT):
        connection = await open_connection(backend, on_reinitialized=on_reinitialized)
        old_session = connection.state.session_id
        await backend.restart()  # the new process knows no session: 404

        results: dict[int, dict[str, Any]] = {}

        async def call(i: int) -> None:
            results[i] = await connection.request("tools/call", add(i, 100))

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(call, i)

    assert {i: r["structuredContent"]["result"] for i, r in results.items()} == {
        i: i + 100 for i in range(10)
    }
    assert backend.seen.count("initialize") == 1
    assert backend.seen.count("notifications/initialized") == 1
    assert len(hook_calls) == 1
    assert hook_calls[0] == connection.state
    assert connection.state.session_id not in (None, old_session)
    assert connection.statistics().reinitializations == 1


async def test_second_404_after_reinitialization_raises_session_expired(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend(forget=frozenset({"tools/call"}))
    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        with pytest.raises(BackendSessionExpired):
            await connection.request("tools/call", add(1, 2))
    assert backend.seen.count("initialize") == 2
    assert backend.seen.count("tools/call") == 2
    assert connection.statistics().errors == 1


async def test_aclose_deletes_the_session_and_is_idempotent(
    start_backend: Any, open_connection: Any, http: httpx2.AsyncClient
) -> None:
    backend = start_backend()
    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        session_id = connection.state.session_id
        await connection.aclose()
        await connection.aclose()

        deletes = backend.seen.http("DELETE")
        assert [seen.session_id for seen in deletes] == [session_id]
        # The backend has really forgotten the session.
        response = await http.post(
            backend.url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={
                "mcp-session-id": str(session_id),
                "mcp-protocol-version": "2025-11-25",
                "accept": "application/json, text/event-stream",
            },
        )
        assert response.status_code == 404

        with pytest.raises(SessionClosed):
            await connection.request("tools/list", None)
        with pytest.raises(SessionClosed):
            await connection.notify("notifications/roots/list_changed", None)


async def test_aclose_lets_in_flight_calls_finish(start_backend: Any, open_connection: Any) -> None:
    backend = start_backend()
    results: list[dict[str, Any]] = []
    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)

        async def call() -> None:
            results.append(
                await connection.request(
                    "tools/call", {"name": "slow", "arguments": {"seconds": 0.3}}
                )
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await wait_for(backend.probe.slow_started)
            await connection.aclose()
            assert results, "aclose returned before the in-flight call finished"

    assert results[0]["structuredContent"] == {"result": "finished"}
    assert [seen.http_method for seen in backend.seen.seen][-1] == "DELETE"


async def test_aclose_cancels_in_flight_calls_after_its_grace(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend()
    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        failures: list[BaseException] = []

        async def call() -> None:
            try:
                await connection.request(
                    "tools/call", {"name": "slow", "arguments": {"seconds": 60}}
                )
            except SessionClosed as exc:
                failures.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await wait_for(backend.probe.slow_started)
            await connection.aclose(timeout=0.1)

    assert len(failures) == 1
    assert len(backend.seen.http("DELETE")) == 1


async def test_unreachable_backend_raises_unavailable(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend()
    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        await anyio.to_thread.run_sync(backend.stop)
        with pytest.raises(BackendUnavailable):
            await connection.request("tools/list", None)
        assert connection.statistics().errors == 1

        with pytest.raises(BackendUnavailable):
            await open_connection(backend)  # nothing listens on the port any more


async def test_slow_tool_beyond_timeout_raises_timeout_and_cancels_upstream(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend()
    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        with pytest.raises(BackendTimeout):
            await connection.request(
                "tools/call", {"name": "slow", "arguments": {"seconds": 60}}, timeout=0.3
            )
        await wait_for(backend.probe.cancel_received)  # sent after the answer, not before
        assert backend.seen.count("notifications/cancelled") == 1
        # The connection is still good for the next call.
        assert (await connection.request("tools/call", add(1, 1)))["structuredContent"] == {
            "result": 2
        }
    assert connection.statistics().errors == 1


async def test_cancelled_caller_sends_notifications_cancelled(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend()
    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                connection.request, "tools/call", {"name": "slow", "arguments": {"seconds": 60}}
            )
            await wait_for(backend.probe.slow_started)
            tg.cancel_scope.cancel()
    # The notice follows in the background, shielded.
    await wait_for(backend.probe.cancel_received)
    assert backend.seen.count("notifications/cancelled") == 1
    assert connection.statistics().errors == 0


async def test_listen_yields_server_notifications_until_closed(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend()
    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        received = await first_heard(
            connection,
            lambda: wait_for(backend.probe.get_stream_opened),
            lambda: connection.request("tools/call", {"name": "announce", "arguments": {}}))

    assert [message["method"] for message in received] == ["notifications/tools/list_changed"]


async def test_listen_reinitializes_after_backend_restart(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend()
    hook_calls: list[BackendState] = []

    async def on_reinitialized(replaced: BackendState, state: BackendState) -> bool:
        hook_calls.append(state)
        return True

    with anyio.fail_after(WAIT):
        connection = await open_connection(backend, on_reinitialized=on_reinitialized)
        received = await first_heard(
            connection,
            lambda: wait_for(backend.probe.get_stream_opened),
            backend.restart,
            # The listener finds the stream gone, meets the 404, re-initializes and
            # opens the new session's stream.
            lambda: wait_for(backend.probe.get_stream_opened),
            lambda: connection.request("tools/call", {"name": "announce", "arguments": {}}))

    assert [message["method"] for message in received] == ["notifications/tools/list_changed"]
    assert len(hook_calls) == 1
    assert backend.seen.count("initialize") == 1


async def test_listen_ends_when_backend_has_no_get_stream(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend(refuse_get=True)
    with anyio.fail_after(WAIT):
        connection: BackendConnection = await open_connection(backend)
        async with aclosing(connection.listen()) as messages:
            assert [message async for message in messages] == []
    assert len(backend.seen.http("GET")) == 1


async def test_response_stream_closed_by_backend_is_resumed(
    start_backend: Any, open_connection: Any
) -> None:
    backend = start_backend(resumable=True)
    received: list[dict[str, Any]] = []

    async def on_message(message: dict[str, Any]) -> dict[str, Any] | None:
        received.append(message)
        return None

    with anyio.fail_after(WAIT):
        connection = await open_connection(backend)
        params = {"name": "poll", "arguments": {}, "_meta": {"progressToken": 7}}
        result = await connection.request("tools/call", params, on_message=on_message)

    assert result["structuredContent"] == {"result": "resumed"}
    pauses = [m for m in received if m["method"] == STREAM_PAUSED]
    assert len(pauses) == 1  # the caller is told once that the stream paused...
    assert pauses[0]["params"]["retryMs"] > 0  # ...and when the call resumes
    assert [m["params"]["message"] for m in received if m["method"] != STREAM_PAUSED] == [
        "before the break",
        "after the break",
    ]
    assert len(backend.seen.http("GET")) == 1  # the one reconnection
