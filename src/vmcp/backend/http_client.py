"""The HTTP clients vmcp uses for its backends: one connection pool per backend and kind
of request (bulkheads), each without two costs of httpcore2.

One pool shared by all backends let a backend that hangs, or a flood of streams, take every
connection: calls to healthy backends and the health probes then waited for a connection
until their own timeouts, which blamed the wrong backend. Here each backend has a budget
for calls, one for long-lived streams (GET) and, in the health probes' client, one for
probes (``BackendConnectionsConfig``); a request waits at most the budget's acquire timeout
for a connection, and fails as ``httpx2.PoolTimeout`` (``BackendBusy``) after it. The
backend of a request is found from its URL (the longest configured URL it falls under,
else the configured backend on the same origin), so no caller has to say.

Before each request, httpcore2's connection pool asks every idle connection whether its
socket became readable (the server may have closed it). Its AnyIO stream answers by
looking the raw socket up through anyio's typed-attribute table, which anyio rebuilds on
every lookup; with a few dozen pooled connections that lookup alone was about a tenth of
the gateway's CPU per call (bench profile). The stream below looks the socket up once.

httpcore2 also writes a request's head and its body in two socket writes: two system
calls, and on loopback two wake-ups of the backend for one request. The stream below
holds a request head back until the body follows (or until it reads), so a call leaves
in one write, as every other HTTP client sends it.

Calls (POSTs) to plain-``http`` backends take a cheaper road (``lean_calls``, on by
default, off for a backend whose ``connections.lean_calls`` is false):
``vmcp.backend.http11``, a lean HTTP/1.1 pool under the same httpx2 client, with the same
budgets, acquire timeout and ``PoolTimeout`` (it costs a third to a fifth of httpcore2's
CPU per call; see ``bench/HTTP_CLIENTS.md``). It sends a read again when a
backend closed a kept-alive connection just as it went out, and keeps tool calls off
connections whose last answer was ``202 Accepted``: the MCP SDK's server closes such a
connection when the message it accepted fails behind the answer (see that module).
Streams, health probes and ``https`` backends stay on httpcore2, which does TLS.

Everything else is httpx2's own transport; ``tests/integration/backend/test_http_client.py``
pins the private attributes (``AsyncHTTPTransport._pool``, ``AsyncClient._transport``) this
relies on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, Literal

import anyio.abc
import httpcore2
import httpx2
from httpcore2._backends.anyio import AnyIOBackend, AnyIOStream
from httpcore2._utils import is_socket_readable

from vmcp.backend.http11 import LeanHttpTransport
from vmcp.backend.wire import USER_AGENT
from vmcp.config import BackendConfig, BackendConnectionsConfig

DEFAULT_BUDGET = BackendConnectionsConfig()
"""The budgets of a URL no configured backend matches (and of a backend's defaults)."""

Kind = Literal["calls", "streams", "health"]


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


def _origin(url: httpx2.URL) -> tuple[str, bytes]:
    return url.scheme, url.netloc


class BulkheadTransport(httpx2.AsyncBaseTransport):
    """Sends each request through the pool of its backend and kind (created on first use).

    ``kind`` fixes the budget for every request (the health probes' client); otherwise a GET
    is a stream and anything else a call. ``use_backends`` follows a reloaded configuration:
    a backend whose budget changed gets new pools, the old ones close with the transport.
    """

    def __init__(self, backends: Sequence[BackendConfig] = (), kind: Kind | None = None,
                 lean_calls: bool = True) -> None:
        self._kind = kind
        self._lean_calls = lean_calls  # True: calls over the lean pool (see the module)
        self._pools: dict[tuple[str, Kind, int, bool], httpx2.AsyncBaseTransport] = {}
        self._origins: tuple[tuple[BackendConfig, tuple[str, bytes]], ...] = ()
        self.use_backends(backends)

    def use_backends(self, backends: Sequence[BackendConfig]) -> None:
        # Longest URL first: a request falls under the most specific backend. Origins are
        # parsed here, once, not on every request.
        ordered = sorted(backends, key=lambda b: len(b.url), reverse=True)
        self._origins = tuple((backend, _origin(httpx2.URL(backend.url))) for backend in ordered)

    def budget_of(self, url: httpx2.URL) -> tuple[str, BackendConnectionsConfig]:
        """The backend a request to ``url`` is for (``""`` for none) and its budgets."""
        text = str(url)
        origin = _origin(url)
        same_origin: BackendConfig | None = None
        for backend, backend_origin in self._origins:
            if text.startswith(backend.url):
                return backend.name, backend.connections
            if same_origin is None and backend_origin == origin:
                same_origin = backend
        if same_origin is not None:
            return same_origin.name, same_origin.connections
        return "", DEFAULT_BUDGET

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        name, budget = self.budget_of(request.url)
        kind: Kind = self._kind or ("streams" if request.method == "GET" else "calls")
        size: int = getattr(budget, kind)
        lean = (self._lean_calls and budget.lean_calls and kind == "calls"
                and request.url.scheme == "http")
        pool = self._pools.get((name, kind, size, lean))
        if pool is None:
            keep = size if kind != "streams" else min(size, 16)
            pool = self._pools[(name, kind, size, lean)] = LeanHttpTransport(size) if lean \
                else _Transport(httpx2.Limits(max_connections=size, max_keepalive_connections=keep))
        timeouts = dict(request.extensions.get("timeout") or {})
        pool_timeout = timeouts.get("pool")
        if pool_timeout is None or pool_timeout > budget.acquire_timeout_seconds:
            timeouts["pool"] = budget.acquire_timeout_seconds
        request.extensions = {**request.extensions, "timeout": timeouts}
        try:
            return await pool.handle_async_request(request)
        except httpx2.PoolTimeout as exc:
            raise httpx2.PoolTimeout(f"all {size} connections for {kind} in use for "
                                     f"{timeouts['pool']:g}s", request=request) from exc

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


def backend_http_client(backends: Sequence[BackendConfig] = (),
                        kind: Kind | None = None) -> httpx2.AsyncClient:
    """A client whose requests go through per-backend pools (``BulkheadTransport``); its
    transport's ``use_backends`` follows configuration reloads.

    It keeps no cookies. One client carries every client session's backend requests, and
    httpx2 would store a cookie a backend set in one session's answer and send it with
    every other session's requests (a login or an affinity cookie leaking across
    sessions and identities).
    """
    http = httpx2.AsyncClient(transport=BulkheadTransport(backends, kind), timeout=None,
                              headers={"user-agent": USER_AGENT})
    http.cookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
    return http


def follow_backends(http: httpx2.AsyncClient, backends: Sequence[BackendConfig]) -> None:
    """Point a client made by ``backend_http_client`` at a reloaded list of backends."""
    transport = http._transport
    if isinstance(transport, BulkheadTransport):
        transport.use_backends(backends)
