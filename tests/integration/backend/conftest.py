"""Real SDK backends for the backend-client tests.

Each backend is an ``MCPServer`` served by uvicorn on a thread. The listening socket is
bound before the thread starts, so a client can connect at once: the kernel queues the
connection until uvicorn accepts it, and no test waits for start-up. ``restart`` serves a
fresh app on the same port, which forgets every session the way a redeployed backend
does.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import httpx2
import pytest
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventMessage, EventStore
from mcp.shared.message import ServerMessageMetadata
from mcp_types import (
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    JSONRPCMessage,
    SamplingMessage,
    TextContent,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmcp.backend import BackendConnection, BackendTarget, connect

CLIENT_INFO = {"name": "vmcp-test", "version": "0.0.1"}
CAPABILITIES: dict[str, Any] = {"sampling": {}}
INSTRUCTIONS = "Test backend for vmcp."


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Seen:
    """One HTTP request as the backend received it."""

    http_method: str
    rpc_method: str | None
    session_id: str | None
    client_port: int = 0


@dataclass
class Probe:
    """Signals the backend's tools raise, for tests to wait on without sleeping."""

    slow_started: threading.Event = field(default_factory=threading.Event)
    get_stream_opened: threading.Event = field(default_factory=threading.Event)
    cancel_received: threading.Event = field(default_factory=threading.Event)


class MemoryEventStore(EventStore):
    """Keeps every event, so a client can resume a response stream the server closed."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str, JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        event_id = str(len(self._events) + 1)
        self._events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: Any) -> str | None:
        index = next((i for i, event in enumerate(self._events) if event[0] == last_event_id), None)
        if index is None:
            return None
        stream_id = self._events[index][1]
        for event_id, stream, message in self._events[index + 1 :]:
            if stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


def build_mcp(probe: Probe) -> MCPServer:
    mcp = MCPServer("test-backend", instructions=INSTRUCTIONS, version="1.2.3", log_level="WARNING")

    @mcp.tool()
    async def echo(text: str) -> str:
        return text

    @mcp.tool()
    async def add(a: int, b: int) -> int:
        return a + b

    @mcp.tool()
    async def slow(seconds: float) -> str:
        probe.slow_started.set()
        await anyio.sleep(seconds)
        return "finished"

    @mcp.tool()
    async def progress(steps: int, ctx: Context) -> str:
        for step in range(steps):
            await ctx.report_progress(step + 1, steps, f"step {step + 1}")
        return "done"

    @mcp.tool()
    async def ask(question: str, ctx: Context) -> str:
        request = CreateMessageRequest(
            params=CreateMessageRequestParams(
                messages=[
                    SamplingMessage(role="user", content=TextContent(type="text", text=question))
                ],
                max_tokens=20,
            )
        )
        result = await ctx.session.send_request(
            request,
            CreateMessageResult,
            metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
        )
        content = result.content
        assert isinstance(content, TextContent)
        return f"the model said: {content.text}"

    @mcp.tool()
    async def announce(ctx: Context) -> str:
        await ctx.session.send_tool_list_changed()
        return "announced"

    @mcp.tool()
    async def poll(ctx: Context) -> str:
        await ctx.report_progress(1, 2, "before the break")
        await ctx.close_sse_stream()
        await ctx.report_progress(2, 2, "after the break")
        return "resumed"

    return mcp


class Recorder:
    """ASGI wrapper that notes every request and can misbehave on purpose."""

    def __init__(
        self,
        app: ASGIApp,
        probe: Probe,
        *,
        forget: frozenset[str] = frozenset(),
        refuse_get: bool = False,
    ) -> None:
        self.app = app
        self.probe = probe
        self.forget = forget
        self.refuse_get = refuse_get
        self.seen: list[Seen] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: anyio.Event | None = None

    def count(self, rpc_method: str) -> int:
        return sum(1 for seen in self.seen if seen.rpc_method == rpc_method)

    def http(self, http_method: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.http_method == http_method]

    def close_streams(self) -> None:
        """End every open GET stream the way a server does when it shuts down.

        Left open, uvicorn would cancel them after its grace period, and the SDK's
        legacy SSE transport leaves memory streams unclosed when cancelled like that.
        """
        if self._loop is not None and self._closing is not None:
            self._loop.call_soon_threadsafe(self._closing.set)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self._loop = asyncio.get_running_loop()
            self._closing = anyio.Event()
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw_session = headers.get(b"mcp-session-id")
        session_id = raw_session.decode() if raw_session is not None else None
        method = scope["method"]
        if method != "POST":
            self.seen.append(Seen(method, None, session_id, scope["client"][1]))
            if method == "GET" and self.refuse_get:
                await _respond(send, 405)
                return
            if method == "GET":
                await self.app(scope, self._until_closing(receive), self._watch_get(send))
                return
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        parsed = json.loads(body) if body else {}
        rpc_method = parsed.get("method") if isinstance(parsed, dict) else None
        self.seen.append(Seen(method, rpc_method, session_id, scope["client"][1]))
        if rpc_method == "notifications/cancelled":
            self.probe.cancel_received.set()
        if session_id is not None and rpc_method in self.forget:
            await _respond(send, 404)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def _until_closing(self, receive: Receive) -> Receive:
        """``receive`` that reports a disconnect once :meth:`close_streams` was called."""
        closing = self._closing
        assert closing is not None

        async def receive_until_closing() -> Message:
            message: Message = {"type": "http.disconnect"}
            async with anyio.create_task_group() as tg:

                async def real() -> None:
                    nonlocal message
                    message = await receive()
                    tg.cancel_scope.cancel()

                async def stop() -> None:
                    await closing.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(real)
                tg.start_soon(stop)
            return message

        return receive_until_closing

    def _watch_get(self, send: Send) -> Send:
        async def watching(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.start" and message["status"] == 200:
                self.probe.get_stream_opened.set()

        return watching


async def _respond(send: Send, status: int) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


class Backend:
    """One SDK backend on 127.0.0.1, restartable on the same port."""

    def __init__(
        self,
        transport: Literal["streamable-http", "sse"] = "streamable-http",
        *,
        json_response: bool = False,
        stateless: bool = False,
        resumable: bool = False,
        forget: frozenset[str] = frozenset(),
        refuse_get: bool = False,
    ) -> None:
        self.transport = transport
        self.json_response = json_response
        self.stateless = stateless
        self.resumable = resumable
        self.forget = forget
        self.refuse_get = refuse_get
        self.port = 0
        self.probe = Probe()
        self.recorder: Recorder | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        path = "/sse" if self.transport == "sse" else "/mcp"
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def seen(self) -> Recorder:
        assert self.recorder is not None
        return self.recorder

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self.probe = Probe()
        mcp = build_mcp(self.probe)
        if self.transport == "sse":
            app = mcp.sse_app()
        else:
            app = mcp.streamable_http_app(
                json_response=self.json_response,
                stateless_http=self.stateless,
                event_store=MemoryEventStore() if self.resumable else None,
                retry_interval=50 if self.resumable else None,
            )
        self.recorder = Recorder(app, self.probe, forget=self.forget, refuse_get=self.refuse_get)
        config = uvicorn.Config(
            self.recorder,
            log_level="warning",
            lifespan="on",
            loop="asyncio",
            http="h11",
            ws="none",
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self.seen.close_streams()
        self._server.should_exit = True
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "backend did not stop"
        self._server = None
        self._thread = None

    async def restart(self) -> None:
        await anyio.to_thread.run_sync(self.stop)
        self.start()


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    """Every backend a test starts; all stopped at teardown."""
    started: list[Backend] = []
    yield started
    for backend in started:
        backend.stop()


@pytest.fixture
def start_backend(backends: list[Backend]) -> Any:
    def start(*args: Any, **kwargs: Any) -> Backend:
        backend = Backend(*args, **kwargs)
        backend.start()
        backends.append(backend)
        return backend

    return start


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient() as client:
        yield client


OpenConnection = Callable[..., Awaitable[BackendConnection]]


@pytest.fixture
async def open_connection(http: httpx2.AsyncClient) -> AsyncIterator[OpenConnection]:
    """Connects to a test backend with the test client's identity; closes at teardown."""
    opened: list[BackendConnection] = []

    async def open_(backend: Backend, **kwargs: Any) -> BackendConnection:
        target = BackendTarget("test", backend.url, transport=backend.transport)
        kwargs.setdefault("timeout", 5.0)
        connection = await connect(
            target,
            kwargs.pop("http", http),
            client_info=CLIENT_INFO,
            capabilities=CAPABILITIES,
            **kwargs,
        )
        opened.append(connection)
        return connection

    yield open_
    for connection in opened:
        await connection.aclose()
