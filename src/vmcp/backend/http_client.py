"""The HTTP client vmcp uses for every backend, with two costs of httpcore2 removed.

Before each request, httpcore2's connection pool asks every idle connection whether its
socket became readable (the server may have closed it). Its AnyIO stream answers by
looking the raw socket up through anyio's typed-attribute table, which anyio rebuilds on
every lookup; with a few dozen pooled connections that lookup alone was about a tenth of
the gateway's CPU per call (bench profile). The stream below looks the socket up once.

httpcore2 also writes a request's head and its body in two socket writes: two system
calls, and on loopback two wake-ups of the backend for one request. The stream below
holds a request head back until the body follows (or until it reads), so a call leaves
in one write, as every other HTTP client sends it.

Everything else is httpx2's own transport; ``tests/integration/backend/test_http_client.py``
pins the private attribute (``AsyncHTTPTransport._pool``) this relies on.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio.abc
import httpcore2
import httpx2
from httpcore2._backends.anyio import AnyIOBackend, AnyIOStream
from httpcore2._utils import is_socket_readable

POOL_LIMITS = httpx2.Limits(max_connections=512, max_keepalive_connections=128)


_HEAD_END = b"\r\n\r\n"
_METHODS = (b"POST ", b"GET ", b"DELETE ", b"PUT ", b"PATCH ", b"HEAD ", b"OPTIONS ")


class _CachedSocketStream(AnyIOStream):
    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        super().__init__(stream)
        self._socket = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        self._head = b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 - httpcore2 signature
        # h11 hands over a request's head as one buffer: keep it until the body comes.
        if not self._head and buffer.startswith(_METHODS) and buffer.endswith(_HEAD_END):
            self._head = buffer
            return
        if self._head:
            buffer, self._head = self._head + buffer, b""
        await super().write(buffer, timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 - httpcore2 signature
        if self._head:  # a request without a body: its head alone is the request
            await self.write(b"", timeout)
        return await super().read(max_bytes, timeout)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return is_socket_readable(self._socket)
        if info == "socket":
            return self._socket
        return super().get_extra_info(info)


class _Backend(AnyIOBackend):
    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109 - httpcore2 signature
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> AnyIOStream:
        stream = await super().connect_tcp(host, port, timeout, local_address, socket_options)
        assert isinstance(stream, AnyIOStream)
        return _CachedSocketStream(stream._stream)


class _Transport(httpx2.AsyncHTTPTransport):
    def __init__(self, limits: httpx2.Limits) -> None:
        super().__init__(limits=limits)
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=self._pool._ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_Backend(),
        )


def backend_http_client(limits: httpx2.Limits = POOL_LIMITS) -> httpx2.AsyncClient:
    """One shared client for all backend connections of this process."""
    return httpx2.AsyncClient(transport=_Transport(limits), timeout=None)
