"""Opening a backend connection over the transport its configuration names.

The two entry points the layers above use: :func:`connect` opens a new backend session,
:func:`attach` resumes one whose :class:`~vmcp.backend.BackendState` was stored, on any
replica; :func:`target_of` says where a configured backend is.
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
from vmcp.backend.stdio import StdioBackend, StdioProcesses, stdio_command
from vmcp.backend.streamable_http import StreamableHttpBackend
from vmcp.config import BackendConfig
from vmcp.errors import BackendUnavailable


def target_of(backend: BackendConfig, headers: Mapping[str, str] | None = None
              ) -> BackendTarget:
    """Where and how to reach ``backend`` (``headers``: its static ones, auth's included)."""
    if backend.transport == "stdio":
        return BackendTarget(backend.name, "", "stdio", {}, stdio_command(backend))
    return BackendTarget(backend.name, backend.url, backend.transport,
                         backend.headers if headers is None else headers)


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
    stdio: StdioProcesses | None = None,
) -> BackendConnection:
    """Open a new backend session, offering ``protocol_version``, within ``timeout``.

    ``headers`` are the credentials of the request that opens it. See
    :meth:`~vmcp.backend.base.BaseBackend.open_session` for what is checked.
    """
    connection = _open(target, http, stdio, client_info=client_info,
                       capabilities=capabilities, timeout=timeout,
                       on_reinitialized=on_reinitialized,
                       state=BackendState(None, protocol_version, {}))
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
    stdio: StdioProcesses | None = None,
) -> BackendConnection:
    """Resume the backend session ``state`` records (Streamable HTTP: no wire traffic).

    If the backend has forgotten it, the first call re-initializes with ``client_info``
    and ``capabilities``, offering ``state.protocol_version``. A legacy SSE backend cannot
    be resumed across processes; for it this opens a fresh session, see
    :meth:`SseBackend.resume_session`.
    """
    connection = _open(target, http, stdio, client_info=client_info,
                       capabilities=capabilities, timeout=timeout,
                       on_reinitialized=on_reinitialized, state=state)
    await connection.resume_session(headers)
    return connection


def _open(target: BackendTarget, http: httpx2.AsyncClient, stdio: StdioProcesses | None,
          **options: Any) -> SseBackend | StreamableHttpBackend | StdioBackend:
    """A connection object of the target's transport, with no session yet.

    A stdio target's connection is a virtual session on this replica's process for it
    (``stdio``, the lifespan's), which is started here if it is not running yet.
    """
    if target.transport == "stdio":
        if stdio is None:
            raise BackendUnavailable(target.name, "stdio backends are not run here")
        return StdioBackend(target, http, process=stdio.process(target), **options)
    if target.transport == "sse":
        return SseBackend(target, http, **options)
    return StreamableHttpBackend(target, http, **options)
