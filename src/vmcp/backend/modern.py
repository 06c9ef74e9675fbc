"""Client for backends that speak the stateless revision (MCP 2026-07-28).

Such a backend keeps no session for us: every call is one self-contained POST that
carries its own envelope (``params._meta`` with the protocol version, client info and
client capabilities) and the routing headers ``MCP-Protocol-Version``, ``Mcp-Method``
and ``Mcp-Name``. The answer is one ``application/json`` response, or an event stream
of request-scoped notifications (progress, logs) ending with the response. The backend
never sends requests of its own: what it needs from the client comes back as an
``input_required`` result, which is relayed like any other result.

So a :class:`ModernBackend` is nothing but a target and the shared HTTP client; any
replica can use it for any caller, and closing the response stream is how a call is
cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Final

import httpx2
from mcp.shared.inbound import NAME_BEARING_METHODS, encode_header_value
from mcp_types import PROTOCOL_VERSION_META_KEY, UNSUPPORTED_PROTOCOL_VERSION
from mcp_types.version import LATEST_MODERN_VERSION, MODERN_PROTOCOL_VERSIONS

from vmcp.backend import wire
from vmcp.backend.contract import BackendRpcError, BackendTarget, MessageHandler
from vmcp.errors import BackendError, BackendProtocolError, BackendTimeout

logger = logging.getLogger(__name__)

VERSION_HEADER: Final = "mcp-protocol-version"
METHOD_HEADER: Final = "mcp-method"
NAME_HEADER: Final = "mcp-name"


class NotModern(BackendError):
    """The backend refused a stateless-revision request as a version it does not speak.

    Raised for an HTTP 4xx without a JSON-RPC answer to the request (how servers of the
    handshake era refuse an unknown ``MCP-Protocol-Version``) and for an
    ``UnsupportedProtocolVersion`` error (-32022). The caller's classification of the
    backend was wrong: it should be served through a session instead.
    """


class ModernBackend:
    """Calls to one stateless-revision backend; safe to share between tasks and callers."""

    def __init__(self, target: BackendTarget, http: httpx2.AsyncClient, *,
                 timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.target = target
        self._http = http
        self._timeout = timeout
        self._ids = wire.request_ids()
        # Reads are bounded by each call's own deadline, connects by the default one.
        self._http_timeout = httpx2.Timeout(None, connect=timeout)

    async def request(
        self,
        method: str,
        params: dict[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        on_message: MessageHandler | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the per-call deadline is the contract
    ) -> dict[str, Any]:
        """Send one request and return its ``result`` (which may be ``input_required``).

        ``params`` must carry the envelope in ``_meta``; its protocol version names the
        ``MCP-Protocol-Version`` header. ``headers`` are sent as well (the ``Mcp-Param-*``
        headers of a ``tools/call``); the routing headers are derived from the request
        and always win. Notifications that arrive on the response stream go to
        ``on_message``. Raises :class:`BackendRpcError` for the backend's JSON-RPC
        error, :class:`NotModern` if it does not speak this revision, and the other
        ``BackendError`` kinds for transport failures.
        """
        seconds = self._timeout if timeout is None else timeout
        try:
            # asyncio's own timeout, not anyio's cancel scope: a scope per call is a
            # measurable share of a relayed call's CPU.
            async with asyncio.timeout(seconds):
                return await self._post(method, params, headers or {}, on_message)
        except TimeoutError:
            raise BackendTimeout(self.target.name, f"no answer within {seconds:g}s") from None

    async def listen(
        self,
        params: dict[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        on_message: MessageHandler,
    ) -> dict[str, Any]:
        """Hold one ``subscriptions/listen`` stream open for as long as the backend keeps it.

        Every notification on it (the acknowledgement first, then the changes) goes to
        ``on_message``; the return value is the result the backend ends it with when it
        closes the stream gracefully (for instance while it drains). There is no deadline:
        cancelling is how the caller ends it. Raises like :meth:`request`.
        """
        return await self._post("subscriptions/listen", params, headers or {}, on_message)

    async def _post(self, method: str, params: dict[str, Any], extra: Mapping[str, str],
                    on_message: MessageHandler | None) -> dict[str, Any]:
        name = self.target.name
        request_id = next(self._ids)
        body = wire.encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        headers = {**self.target.headers, **extra, **routing_headers(method, params),
                   "accept": f"{wire.JSON}, {wire.EVENT_STREAM}", "content-type": wire.JSON}

        async def read_stream(response: httpx2.Response) -> dict[str, Any]:
            return await self._pump(response, request_id, on_message)

        async with wire.posted(name, self._http, self.target.url, body, headers,
                               self._http_timeout, replay=wire.replayable(method)) as response:
            if response.status_code >= 300 or response.status_code == 202:
                await self._refuse(response, request_id)
            return _result(name, await wire.response_in(name, response, request_id, read_stream))

    async def _refuse(self, response: httpx2.Response, request_id: int) -> None:
        name = self.target.name
        body, rpc_error = await wire.refusal(name, response, request_id)
        if rpc_error is not None:
            if rpc_error.code == UNSUPPORTED_PROTOCOL_VERSION:
                raise NotModern(name, f"refused the revision: {rpc_error.message}")
            raise rpc_error
        error = wire.status_error(name, response, body)
        if 400 <= response.status_code < 500 and response.status_code not in (401, 403, 429):
            raise NotModern(name, f"refused the revision with HTTP {response.status_code}")
        raise error

    async def _pump(self, response: httpx2.Response, request_id: int,
                    on_message: MessageHandler | None) -> dict[str, Any]:
        name = self.target.name
        events = wire.event_stream(response)
        try:
            async for event in events:
                if not event.data or event.event != "message":
                    continue
                for message in wire.decode(name, event.data):
                    if "method" not in message:
                        if wire.is_response_to(message, request_id):
                            return message
                    elif "id" in message:
                        # Not allowed at this revision; there is no way to answer it.
                        logger.warning("backend %r sent a request on a response stream: %s",
                                       name, message.get("method"))
                    elif on_message is not None:
                        await on_message(message)
        finally:
            await events.aclose()
        raise BackendProtocolError(name, "response stream ended before the response")


def routing_headers(method: str, params: Mapping[str, Any]) -> dict[str, str]:
    """``MCP-Protocol-Version``, ``Mcp-Method`` and, where the method names one, ``Mcp-Name``."""
    meta = params.get("_meta")
    version = meta.get(PROTOCOL_VERSION_META_KEY) if isinstance(meta, Mapping) else None
    headers = {VERSION_HEADER: version if isinstance(version, str) else LATEST_MODERN_VERSION,
               METHOD_HEADER: method}
    name_key = NAME_BEARING_METHODS.get(method)
    if name_key is not None and isinstance(value := params.get(name_key), str):
        headers[NAME_HEADER] = encode_header_value(value)
    return headers


def speaks_modern(discover_result: Mapping[str, Any]) -> bool:
    """Whether a ``server/discover`` result lists a stateless revision this client speaks."""
    versions = discover_result.get("supportedVersions")
    return isinstance(versions, list) and any(v in versions for v in MODERN_PROTOCOL_VERSIONS)


def _result(backend: str, message: dict[str, Any]) -> dict[str, Any]:
    try:
        return wire.result_of(backend, message)
    except BackendRpcError as exc:
        if exc.code == UNSUPPORTED_PROTOCOL_VERSION:
            raise NotModern(backend, f"refused the revision: {exc.message}") from None
        raise
