"""The lean HTTP/1.1 transport of backend calls: connections are reused only after a complete
answer, budgets hold with the busy error naming the backend, and a cancelled read closes
its connection instead of handing a half-read one to the next call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import httpx2
import pytest

from tests.support.processes import ManagedProcess
from vmcp.backend import wire
from vmcp.backend.http11 import LeanHttpTransport, _Slots, connection_count
from vmcp.backend.http_client import BulkheadTransport, backend_http_client
from vmcp.config import BackendConfig, BackendConnectionsConfig
from vmcp.errors import BackendBusy, BackendUnavailable

pytestmark = pytest.mark.anyio

PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
TIMEOUT = httpx2.Timeout(None, connect=5.0)

Handler = Callable[[anyio.abc.SocketStream], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A loopback server that runs ``handler`` on each accepted connection."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await handler(stream)

    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, serve)
        yield f"http://127.0.0.1:{port}/mcp"
        group.cancel_scope.cancel()


async def read_request(stream: anyio.abc.SocketStream) -> bytes:
    data = b""
    while not data.endswith(PING):
        data += await stream.receive()
    return data


async def test_calls_reuse_one_kept_alive_connection(
    demo_backends: dict[str, ManagedProcess],
) -> None:
    transport = BulkheadTransport(lean_calls=True)
    async with httpx2.AsyncClient(transport=transport) as http:
        for _ in range(3):
            async with wire.posted("notes", http, demo_backends["notes"].url, PING, HEADERS,
                                   TIMEOUT) as response:
                assert response.status_code < 500
                await wire.read_body("notes", response)
        (pool,) = transport._pools.values()
        assert isinstance(pool, LeanHttpTransport)
        assert connection_count(pool) == 1


async def test_a_backend_can_be_kept_off_the_lean_pool(
    demo_backends: dict[str, ManagedProcess],
) -> None:
    url = demo_backends["notes"].url
    backends = [BackendConfig(name="notes", url=url, connections=BackendConnectionsConfig(
        lean_calls=False))]
    transport = BulkheadTransport(backends)
    async with httpx2.AsyncClient(transport=transport) as http:
        async with wire.posted("notes", http, url, PING, HEADERS, TIMEOUT) as response:
            assert response.status_code < 500
            await wire.read_body("notes", response)
        (pool,) = transport._pools.values()
        assert not isinstance(pool, LeanHttpTransport)


async def test_https_calls_stay_on_httpcore2() -> None:
    transport = BulkheadTransport(lean_calls=True)
    with pytest.raises(httpx2.ConnectError):  # nothing listens there; the pool kind counts
        await transport.handle_async_request(httpx2.Request("POST", "https://127.0.0.1:1/mcp"))
    (pool,) = transport._pools.values()
    assert not isinstance(pool, LeanHttpTransport)


async def test_a_full_budget_is_busy_naming_the_backend() -> None:
    answered = anyio.Event()

    async def slow(stream: anyio.abc.SocketStream) -> None:
        await read_request(stream)
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                          b"transfer-encoding: chunked\r\n\r\n")
        answered.set()
        await anyio.sleep_forever()

    async with raw_server(slow) as url:
        backend = BackendConfig(name="slowpoke", url=url, connections=BackendConnectionsConfig(
            calls=1, acquire_timeout_seconds=0.2))
        async with backend_http_client([backend]) as http, \
                wire.posted("slowpoke", http, url, PING, HEADERS, TIMEOUT):
            await answered.wait()
            with pytest.raises(BackendBusy, match=r"slowpoke.*busy.*1 connections"):
                async with wire.posted("slowpoke", http, url, PING, HEADERS, TIMEOUT):
                    pass


async def test_a_cancelled_read_closes_its_connection() -> None:
    closed = anyio.Event()
    connections = 0

    async def half(stream: anyio.abc.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await read_request(stream)
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                          b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        try:
            while await stream.receive():
                pass
        except anyio.EndOfStream:
            closed.set()

    transport = LeanHttpTransport(4)
    async with raw_server(half) as url, httpx2.AsyncClient(transport=transport) as http:
        with anyio.move_on_after(0.3):
            async with wire.posted("half", http, url, PING, HEADERS, TIMEOUT) as response:
                async for chunk in response.aiter_bytes():
                    assert chunk == b"hello"
        with anyio.fail_after(5):
            await closed.wait()
        assert connection_count(transport) == 0
        with anyio.move_on_after(0.3):  # the next call opens a fresh connection
            async with wire.posted("half", http, url, PING, HEADERS, TIMEOUT):
                pass
        assert connections == 2


@pytest.mark.parametrize("answer", [
    # the server says it closes: not reused
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
    b"connection: close\r\n\r\n{}",
    # no length: the body ends where the connection does
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{}",
])
async def test_an_answer_that_ends_the_connection_is_not_reused(answer: bytes) -> None:
    connections = 0

    async def once(stream: anyio.abc.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await read_request(stream)
        await stream.send(answer)
        await stream.aclose()

    transport = LeanHttpTransport(4)
    async with raw_server(once) as url, httpx2.AsyncClient(transport=transport) as http:
        for _ in range(2):
            async with wire.posted("once", http, url, PING, HEADERS, TIMEOUT) as response:
                assert await wire.read_body("once", response) == b"{}"
        assert connections == 2
        assert connection_count(transport) == 0


OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


@pytest.mark.parametrize("replay", [True, False], ids=["replayable", "tool-call"])
async def test_a_request_on_a_connection_closed_under_it_is_resent_only_if_replayable(
    replay: bool,
) -> None:
    # The first connection answers one request, then takes the next and closes unanswered,
    # as a backend does when its idle timeout or an application error ends a connection
    # just as a request goes out on it.
    requests = 0
    connections = 0

    async def closes_under_the_second(stream: anyio.abc.SocketStream) -> None:
        nonlocal requests, connections
        connections += 1
        first_connection = connections == 1
        while True:
            await read_request(stream)
            requests += 1
            if first_connection and requests == 2:
                return
            await stream.send(OK)

    transport = LeanHttpTransport(4)
    async with raw_server(closes_under_the_second) as url, \
            httpx2.AsyncClient(transport=transport) as http:
        async with wire.posted("edge", http, url, PING, HEADERS, TIMEOUT) as response:
            assert await wire.read_body("edge", response) == b"{}"
        if replay:
            async with wire.posted("edge", http, url, PING, HEADERS, TIMEOUT,
                                   replay=True) as response:
                assert await wire.read_body("edge", response) == b"{}"
            assert (requests, connections) == (3, 2)  # sent again, on a new connection
        else:
            with pytest.raises(BackendUnavailable, match=r"edge.*closed"):
                async with wire.posted("edge", http, url, PING, HEADERS, TIMEOUT):
                    pass
            assert (requests, connections) == (2, 1)  # never sent twice: it may have run
        assert connection_count(transport) == (1 if replay else 0)


async def test_a_new_connection_closed_unanswered_is_not_resent() -> None:
    # Only a reused connection can have been closed by the backend before the request
    # reached it; a new one closed unanswered is the backend failing on the request.
    requests = 0

    async def hangs_up(stream: anyio.abc.SocketStream) -> None:
        nonlocal requests
        await read_request(stream)
        requests += 1

    async with raw_server(hangs_up) as url, \
            httpx2.AsyncClient(transport=LeanHttpTransport(4)) as http:
        with pytest.raises(BackendUnavailable, match="closed"):
            async with wire.posted("edge", http, url, PING, HEADERS, TIMEOUT, replay=True):
                pass
    assert requests == 1


ACCEPTED = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"


@pytest.mark.parametrize("replay", [True, False], ids=["replayable", "tool-call"])
async def test_after_a_202_a_connection_carries_only_replayable_requests(replay: bool) -> None:
    # A backend answering 202 is still at work behind the answer; when that work fails,
    # uvicorn closes the connection under the next request (the MCP SDK's server does
    # this for a notification to a closing session). This one closes under whatever
    # comes after its 202, so a tool call sent on it would be lost.
    connections = 0

    async def accepts_then_fails(stream: anyio.abc.SocketStream) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:  # the first request gets 202, the next one a hang-up
            await read_request(stream)
            await stream.send(ACCEPTED)
            await read_request(stream)
            return
        while True:  # a fresh connection answers everything
            await read_request(stream)
            await stream.send(OK)

    transport = LeanHttpTransport(4)
    async with raw_server(accepts_then_fails) as url, \
            httpx2.AsyncClient(transport=transport) as http:
        async with wire.posted("edge", http, url, PING, HEADERS, TIMEOUT,
                               replay=True) as response:
            assert response.status_code == 202
            await wire.read_body("edge", response)
        async with wire.posted("edge", http, url, PING, HEADERS, TIMEOUT,
                               replay=replay) as response:
            assert await wire.read_body("edge", response) == b"{}"
    # replayable: sent on the 202's connection, lost there, sent again on a new one;
    # a tool call: straight to a new connection, the 202's left alone
    assert connections == 2


async def test_idle_connections_past_the_expiry_are_closed_not_kept() -> None:
    closed = anyio.Event()

    async def answers_once(stream: anyio.abc.SocketStream) -> None:
        await read_request(stream)
        await stream.send(OK)
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
        closed.set()

    transport = LeanHttpTransport(4, keepalive_expiry=0.0)
    async with raw_server(answers_once) as url, httpx2.AsyncClient(transport=transport) as http:
        async with wire.posted("edge", http, url, PING, HEADERS, TIMEOUT) as response:
            assert await wire.read_body("edge", response) == b"{}"
        assert connection_count(transport) == 0
        with anyio.fail_after(5):
            await closed.wait()


async def test_connection_slots_go_to_waiters_in_order_and_survive_a_waiter_giving_up() -> None:
    slots = _Slots(1)
    assert slots.take()
    assert not slots.take()
    with anyio.CancelScope() as gives_up_at_once:
        gives_up_at_once.cancel()
        await slots.wait()  # leaves nothing behind in the queue
    first = asyncio.create_task(slots.wait())
    second = asyncio.create_task(slots.wait())
    await anyio.wait_all_tasks_blocked()
    slots.release()  # handed to the first waiter...
    first.cancel()  # ...which gives up before it runs: passed on to the second
    with pytest.raises(asyncio.CancelledError):
        await first
    with anyio.fail_after(5):
        await second
    assert not slots.take()  # the second holds it
    slots.release()
    assert slots.take()  # and gave it back
