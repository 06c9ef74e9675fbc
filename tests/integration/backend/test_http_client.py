"""The backend HTTP client: httpx2's transport with vmcp's pooled-stream shortcut."""

from __future__ import annotations

import asyncio
from typing import Any

import httpcore2
import httpx2
import pytest

from tests.support.processes import ManagedProcess
from vmcp.backend.http_client import (
    BulkheadTransport,
    _CachedSocketStream,
    _Transport,
    backend_http_client,
)
from vmcp.config import BackendConfig, BackendConnectionsConfig

pytestmark = pytest.mark.anyio


def test_the_private_attributes_it_relies_on_still_exist() -> None:
    transport = _Transport(limits=httpx2.Limits(max_connections=4))
    assert isinstance(transport._pool, httpcore2.AsyncConnectionPool)
    assert isinstance(backend_http_client()._transport, BulkheadTransport)


async def test_pooled_connections_use_the_cached_socket_stream(
    demo_backends: dict[str, ManagedProcess],
) -> None:
    async with backend_http_client() as http:
        for _ in range(3):
            response = await http.get(demo_backends["notes"].url,
                                      headers={"Accept": "text/event-stream"})
            assert response.status_code < 500
        pools = http._transport._pools.values()  # type: ignore[attr-defined]
        streams = [c._connection._network_stream for pool in pools
                   for c in pool._pool.connections if c._connection is not None]
        assert streams
        assert all(isinstance(s, _CachedSocketStream) for s in streams)
        assert all(s.get_extra_info("is_readable") is False for s in streams)


async def test_a_request_leaves_in_one_write_head_and_body_together(
    demo_backends: dict[str, ManagedProcess],
) -> None:
    url = demo_backends["notes"].url
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    headers = {"Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}
    # Calls to plain-http backends take the lean transport (tests/.../test_lean_http.py);
    # httpcore2's pools (https calls, streams, probes) are the ones under test here.
    async with httpx2.AsyncClient(transport=BulkheadTransport(lean_calls=False)) as http:
        # One connection in the calls' pool and one in the streams' pool, then every
        # socket write they make is recorded.
        await http.post(url, content=body, headers=headers)
        await http.get(url, headers={"Accept": "text/event-stream"})
        sent: list[bytes] = []
        pools = http._transport._pools.values()  # type: ignore[attr-defined]
        for pool in pools:
            for connection in pool._pool.connections:
                inner = connection._connection._network_stream._stream
                inner.send = _recording(inner.send, sent)

        response = await http.post(url, content=body, headers=headers)
        assert response.status_code < 500
        assert len(sent) == 1
        assert sent[0].startswith(b"POST ")
        assert sent[0].endswith(body)
        sent.clear()
        response = await http.get(url, headers={"Accept": "text/event-stream"})
        assert response.status_code < 500
        assert len(sent) == 1
        assert sent[0].startswith(b"GET ")


def _recording(send: Any, sent: list[bytes]) -> Any:
    async def recording(item: bytes) -> None:
        sent.append(item)
        await send(item)
    return recording

def test_a_request_is_budgeted_to_the_backend_its_url_falls_under() -> None:
    a = BackendConfig(name="a", url="http://127.0.0.1:9000/mcp",
                      connections=BackendConnectionsConfig(calls=3))
    b = BackendConfig(name="b", url="http://127.0.0.1:9000/mcp/b")
    c = BackendConfig(name="c", url="http://127.0.0.1:9001/sse", transport="sse")
    transport = BulkheadTransport([a, b, c])
    url = httpx2.URL
    assert transport.budget_of(url("http://127.0.0.1:9000/mcp"))[0] == "a"
    assert transport.budget_of(url("http://127.0.0.1:9000/mcp/b?x=1"))[0] == "b"
    # The SSE transport posts to an endpoint the server names: same origin, same backend.
    assert transport.budget_of(url("http://127.0.0.1:9001/messages?session=1"))[0] == "c"
    assert transport.budget_of(url("http://127.0.0.1:9002/mcp"))[0] == ""
    assert transport.budget_of(url("http://127.0.0.1:9000/mcp"))[1].calls == 3


class _CookieSettingServer:
    """A loopback HTTP/1.1 server that answers every request with a ``Set-Cookie`` and
    notes the ``cookie`` header each request carried."""

    def __init__(self) -> None:
        self.cookies_seen: list[str | None] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> _CookieSettingServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                lines = head.decode("latin-1").split("\r\n")[1:]
                headers = dict(line.lower().split(": ", 1) for line in lines if ": " in line)
                await reader.readexactly(int(headers.get("content-length", "0")))
                self.cookies_seen.append(headers.get("cookie"))
                writer.write(b"HTTP/1.1 200 OK\r\nset-cookie: sid=first-session; Path=/\r\n"
                             b"content-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("lean_calls", [False, True], ids=["httpcore2", "lean"])
async def test_a_cookie_one_session_got_is_never_sent_for_another(lean_calls: bool) -> None:
    # Every client session's backend requests share this client: a cookie kept from one
    # answer would go out with everybody's next request.
    async with _CookieSettingServer() as server:
        http = backend_http_client()
        http._transport = BulkheadTransport(lean_calls=lean_calls)
        async with http:
            url = f"http://127.0.0.1:{server.port}/mcp"
            for _ in range(3):
                response = await http.post(url, content=b"{}")
                assert response.headers["set-cookie"].startswith("sid=")
    assert server.cookies_seen == [None, None, None]
