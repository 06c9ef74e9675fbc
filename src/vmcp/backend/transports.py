"""Opening a backend connection over the transport its configuration names.

The two entry points the layers above use: :func:`connect` opens a new backend session,
:func:`attach` resumes one whose :class:`~vmcp.backend.BackendState` was stored, on any
replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx2

from vmcp.backend.contract import (
    DEFAULT_PROTOCOL_VERSION,
    BackendConnection,
    BackendState,
    BackendTarget,
    ReinitializedHook,
)
from vmcp.backend.sse import SseBackend
from vmcp.backend.streamable_http import StreamableHttpBackend


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
    """Open a new backend session, offering ``protocol_version``, within ``timeout``.

    ``headers`` are the credentials of the request that opens it. See
    :meth:`~vmcp.backend.base.BaseBackend.open_session` for what is checked.
    """
    connection = _transport(target)(
        target, http, client_info=client_info, capabilities=capabilities, timeout=timeout,
        on_reinitialized=on_reinitialized, state=BackendState(None, protocol_version, {}))
    await connection.open_session(headers)
    return connection


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

    If the backend has forgotten it, the first call re-initializes with ``client_info``
    and ``capabilities``, offering ``state.protocol_version``. A legacy SSE backend cannot
    be resumed across processes; for it this opens a fresh session, see
    :meth:`SseBackend.resume_session`.
    """
    connection = _transport(target)(
        target, http, client_info=client_info, capabilities=capabilities, timeout=timeout,
        on_reinitialized=on_reinitialized, state=state)
    await connection.resume_session(headers)
    return connection


def _transport(target: BackendTarget) -> type[SseBackend | StreamableHttpBackend]:
    return SseBackend if target.transport == "sse" else StreamableHttpBackend
