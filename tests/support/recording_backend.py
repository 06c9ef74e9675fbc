"""A backend MCP server that writes down the headers of every HTTP request it gets.

An SDK ``MCPServer`` served by uvicorn on a thread of the test process, on a loopback
port bound before the thread starts (so a gateway can connect at once). Tests start real
``vmcp serve`` processes in front of it and then read :attr:`RecordingBackend.seen` to
learn which credentials each backend request carried. ``require`` makes it refuse (401)
requests whose headers it does not like, as a backend behind an API gateway would.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MCP_PATH = "/mcp"


@dataclass(frozen=True)
class SeenRequest:
    """One HTTP request as the backend received it; header names are lower case."""

    http_method: str
    rpc_method: str | None
    headers: Mapping[str, str]
    params: object = None
    rpc_id: object = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def build_server(*, stress: bool = False) -> MCPServer:
    """The recorder's tools; with ``stress``, also ``flood`` and ``big`` (for tests of
    what slow clients cost)."""
    server = MCPServer("recorder", version="0.0.1", log_level="WARNING")

    @server.tool()
    async def echo(text: str) -> str:
        """Return ``text``."""
        return text

    @server.tool()
    async def sleep(seconds: float) -> str:
        """Sleep, then say so (for timeouts and cancellation)."""
        await anyio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool()
    async def report_then_sleep(seconds: float, ctx: Context) -> str:
        """Report progress at once, then sleep (a call whose answer streams)."""
        await ctx.report_progress(0, 1, "started")
        await anyio.sleep(seconds)
        return f"slept {seconds}"

    if stress:
        _add_stress_tools(server)
    return server


def _add_stress_tools(server: MCPServer) -> None:
    @server.tool()
    async def flood(count: int, size: int, ctx: Context) -> str:
        """Send ``count`` progress notifications with ``size``-character messages (the
        call must carry a progress token), then answer: a tool that outpaces a slow
        reader."""
        text = "x" * size
        for step in range(count):
            await ctx.report_progress(step, count, text)
        return f"sent {count}"

    @server.tool()
    async def big(size: int) -> str:
        """A result of ``size`` characters."""
        return "y" * size


class _Recorder:
    """ASGI wrapper: notes every request, refuses those ``require`` rejects."""

    def __init__(self, app: ASGIApp, require: Callable[[Mapping[str, str]], bool] | None
                 ) -> None:
        self.app = app
        self.require = require
        self.seen: list[SeenRequest] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        body = bytearray()
        if scope["method"] == "POST":
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        rpc_method = parsed.get("method") if isinstance(parsed, dict) else None
        params = parsed.get("params") if isinstance(parsed, dict) else None
        rpc_id = parsed.get("id") if isinstance(parsed, dict) else None
        with self.lock:
            self.seen.append(SeenRequest(scope["method"], rpc_method, headers, params, rpc_id))
        if self.require is not None and not self.require(headers):
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"error": "unauthorized"}'})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed or scope["method"] != "POST":
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


class RecordingBackend:
    """The recorder on ``127.0.0.1:<port>/mcp`` (``/sse`` for the legacy transport); use
    as a context manager."""

    def __init__(self, require: Callable[[Mapping[str, str]], bool] | None = None, *,
                 transport: Literal["streamable-http", "sse"] = "streamable-http",
                 stress: bool = False) -> None:
        self.require = require
        self.transport = transport
        self.stress = stress
        self.port = 0
        self._recorder: _Recorder | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        path = "/sse" if self.transport == "sse" else MCP_PATH
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def seen(self) -> list[SeenRequest]:
        assert self._recorder is not None
        with self._recorder.lock:
            return list(self._recorder.seen)

    def calls(self, rpc_method: str) -> list[SeenRequest]:
        return [seen for seen in self.seen if seen.rpc_method == rpc_method]

    def clear(self) -> None:
        assert self._recorder is not None
        with self._recorder.lock:
            self._recorder.seen.clear()

    def wait_for(self, rpc_method: str, timeout: float = 10.0) -> SeenRequest:
        """The first request for ``rpc_method``, waiting up to ``timeout`` for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.calls(rpc_method)
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"the backend never saw {rpc_method}: {self.seen}")

    def wait_for_http(self, http_method: str, timeout: float = 10.0,
                      where: Callable[[SeenRequest], bool] = lambda seen: True
                      ) -> SeenRequest:
        """The first request with ``http_method`` (a DELETE arrives after the client's)
        that matches ``where``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [seen for seen in self.seen
                     if seen.http_method == http_method and where(seen)]
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"the backend never saw a {http_method}: {self.seen}")

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        server = build_server(stress=self.stress)
        app = (server.sse_app() if self.transport == "sse"
               else server.streamable_http_app(streamable_http_path=MCP_PATH, host="127.0.0.1"))
        self._recorder = _Recorder(app, self.require)
        config = uvicorn.Config(self._recorder, log_level="warning", lifespan="on",
                                loop="asyncio", http="h11", ws="none",
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        daemon=True, name="recording-backend")
        self._thread.start()

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> RecordingBackend:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextmanager
def recording_backend(require: Callable[[Mapping[str, str]], bool] | None = None
                      ) -> Iterator[RecordingBackend]:
    with RecordingBackend(require) as backend:
        yield backend
