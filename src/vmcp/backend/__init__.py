"""Clients for the backend MCP servers vmcp aggregates.

:mod:`~vmcp.backend.contract` is the seam the layers above use, :mod:`~vmcp.backend.transports`
opens a connection; one implementation per transport (:mod:`~vmcp.backend.streamable_http`,
:mod:`~vmcp.backend.sse`, :mod:`~vmcp.backend.stdio`) on the shared
:mod:`~vmcp.backend.base`, and the stateless
revision's client in :mod:`~vmcp.backend.modern`, all over :mod:`~vmcp.backend.wire`.
"""

from __future__ import annotations

from vmcp.backend.contract import (
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
from vmcp.backend.stdio import StdioBackend, StdioProcesses
from vmcp.backend.streamable_http import StreamableHttpBackend
from vmcp.backend.transports import attach, connect, target_of

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
    "StdioBackend",
    "StdioProcesses",
    "StreamableHttpBackend",
    "attach",
    "connect",
    "target_of",
]
