"""Opening one backend connection for the request being served, whichever revision.

A session's backends and the stateless revision's pooled upstream sessions are reached
the same way: the backend's configured address and static headers, the credentials
outgoing auth gives for the current caller, the handshake bounded by the backend's
connect timeout and every later call by its call timeout (never longer than the
gateway's own).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import httpx2

from vmcp.auth.outgoing import OutgoingAuth, current_caller
from vmcp.backend import (
    BackendConnection,
    BackendState,
    BackendTarget,
    ReinitializedHook,
    StdioProcesses,
    attach,
    connect,
    target_of,
)
from vmcp.config import BackendConfig, VmcpConfig
from vmcp.errors import BackendError, BackendTimeout
from vmcp.upstream.discovery import CLIENT_CAPABILITIES, CLIENT_INFO


class BackendDialer:
    """Connects backends as configured now (``config`` is read on every use, so that a
    reload reaches new connections)."""

    def __init__(self, config: Callable[[], VmcpConfig], http: httpx2.AsyncClient,
                 outgoing: OutgoingAuth, stdio: StdioProcesses | None = None) -> None:
        self._config = config
        self._http = http
        self.outgoing = outgoing
        self._stdio = stdio

    def backend(self, name: str) -> BackendConfig:
        """The backend's configuration; ``BackendError`` once a reload removed it."""
        backend = self._config().backend(name)
        if backend is None:
            raise BackendError(name, "backend is no longer configured")
        return backend

    def target(self, backend: BackendConfig) -> BackendTarget:
        """Where and how to reach ``backend``, with its static headers."""
        return target_of(backend, {**backend.headers,
                                   **self.outgoing.static_headers(backend.name)})

    def call_timeout(self, backend: BackendConfig) -> float:
        return min(backend.call_timeout_seconds, self._config().limits.call_timeout_seconds)

    async def dial(self, backend: BackendConfig, *, stored: str | None = None,
                   on_reinitialized: ReinitializedHook | None = None) -> BackendConnection:
        """A new upstream session with ``backend``, or the one ``stored`` records
        (re-attached without wire traffic where the transport allows).

        Raises ``BackendTimeout`` if the handshake outlasts the connect timeout, and the
        other ``BackendError`` kinds (``BackendRpcError`` for a refusal) as they come.
        """
        target = self.target(backend)
        timeout = self.call_timeout(backend)
        try:
            with anyio.fail_after(backend.connect_timeout_seconds):
                headers = await self.outgoing.headers_for(backend.name, current_caller())
                if stored is not None:
                    state = BackendState.from_json(stored, backend=backend.name)
                    connection = await attach(
                        target, self._http, state, client_info=CLIENT_INFO,
                        capabilities=CLIENT_CAPABILITIES, timeout=timeout,
                        on_reinitialized=on_reinitialized, headers=headers, stdio=self._stdio)
                else:
                    connection = await connect(
                        target, self._http, client_info=CLIENT_INFO,
                        capabilities=CLIENT_CAPABILITIES, timeout=timeout,
                        on_reinitialized=on_reinitialized, headers=headers, stdio=self._stdio)
        except TimeoutError:
            raise BackendTimeout(backend.name, "initialize not answered in time") from None
        return self.outgoing.wrap(connection)
