"""Clients for the backend MCP servers vmcp aggregates; the contract is in
:mod:`vmcp.backend.connection`, one implementation per transport beside it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx2

from vmcp.backend.connection import (
    DEFAULT_PROTOCOL_VERSION,
    STREAM_PAUSED,
    BackendConnection,
    BackendRpcError,
    BackendState,
    BackendStatistics,
    BackendTarget,
    MessageHandler,
    ReinitializedHook,
)
from vmcp.backend.sse import SseBackend
from vmcp.backend.streamable_http import StreamableHttpBackend

__all__ = [
    "DEFAULT_PROTOCOL_VERSION",
    "STREAM_PAUSED",
    "BackendConnection",
    "BackendRpcError",
    "BackendState",
    "BackendStatistics",
    "BackendTarget",
    "MessageHandler",
    "ReinitializedHook",
    "SseBackend",
    "StreamableHttpBackend",
    "attach",
    "connect",
]


async def connect(
    target: BackendTarget,
    http: httpx2.AsyncClient,
    *,
    client_info: Mapping[str, Any],
    capabilities: Mapping[str, Any],
    protocol_version: str = DEFAULT_PROTOCOL_VERSION,
    timeout: float,  # noqa: ASYNC109 - bounds the handshake, then every call
    on_reinitialized: ReinitializedHook | None = None,
    headers: Mapping[str, str] | None = None,
) -> BackendConnection:
    """Open a new backend session over the transport ``target`` names; ``headers`` are the
    credentials of the request that opens it."""
    backend = SseBackend if target.transport == "sse" else StreamableHttpBackend
    return await backend.connect(
        target,
        http,
        client_info=client_info,
        capabilities=capabilities,
        protocol_version=protocol_version,
        timeout=timeout,
        on_reinitialized=on_reinitialized,
        headers=headers,
    )


async def attach(
    target: BackendTarget,
    http: httpx2.AsyncClient,
    state: BackendState,
    *,
    client_info: Mapping[str, Any],
    capabilities: Mapping[str, Any],
    timeout: float,  # noqa: ASYNC109 - the default deadline of every call
    on_reinitialized: ReinitializedHook | None = None,
    headers: Mapping[str, str] | None = None,
) -> BackendConnection:
    """Resume the backend session ``state`` records (Streamable HTTP: no wire traffic).

    A legacy SSE backend cannot be resumed across processes; for it this opens a fresh
    session, see :meth:`SseBackend.attach`.
    """
    backend = SseBackend if target.transport == "sse" else StreamableHttpBackend
    return await backend.attach(
        target,
        http,
        state,
        client_info=client_info,
        capabilities=capabilities,
        timeout=timeout,
        on_reinitialized=on_reinitialized,
        headers=headers,
    )
