"""A client session's upstream sessions, opened when the client first needs each backend.

A session may use every backend it was given at ``initialize`` (its backend list), but
holds an upstream session only on those it used: a call, a resource read, a prompt, a
subscription, a completion. Opening goes through the ``Opener`` the connector gives,
which re-attaches to an upstream session another replica already recorded for this
client session, or opens a new one and records it; so the whole cluster holds at most
one upstream session per (client session, backend).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

import anyio

from vmcp.backend import BackendConnection
from vmcp.concurrency import SingleFlight
from vmcp.errors import BackendError, SessionClosed
from vmcp.upstream.ledger import UpstreamLedger

logger = logging.getLogger(__name__)

Opener = Callable[[str], Awaitable[BackendConnection]]
"""Open (or re-attach) the named backend for this client session and record it; raises
``SessionNotFound`` once the client session ended, a ``BackendError`` if the backend
cannot be reached."""
Opened = Callable[[str, BackendConnection], Awaitable[None]]


class SessionUpstreams:
    """The backends a session may use, and the connections of those it opened.

    ``connections`` is one mapping, changed in place, that the session's other parts
    (routes, server messages) read: a backend opened later is seen by all of them.
    Concurrent first uses of one backend share one opening (``SingleFlight``); a failed
    opening is shared with the callers waiting on it, and the next use tries again.
    """

    def __init__(self, session_id: str, names: Sequence[str],
                 connections: Mapping[str, BackendConnection], *, opener: Opener | None,
                 ledger: UpstreamLedger | None, on_opened: Opened | None = None) -> None:
        self._session_id = session_id
        self._names = set(names) | set(connections)
        self.connections = dict(connections)
        self._opener = opener
        self._ledger = ledger
        self.on_opened = on_opened
        self._flights: SingleFlight[str, BackendConnection] = SingleFlight(share_errors=True)
        self._closed = False
        self._end_upstream = True

    def names(self) -> list[str]:
        return sorted(self._names)

    def unopened(self) -> list[str]:
        return sorted(self._names - set(self.connections))

    async def ensure(self, name: str) -> BackendConnection:
        """The connection to ``name``, opening the upstream session on first use."""
        if self._closed:
            raise SessionClosed(self._session_id)
        connection = self.connections.get(name)
        if connection is not None:
            return connection
        if name not in self._names or self._opener is None:
            raise BackendError(name, "not a backend of this session")
        return await self._flights.run(name, lambda: self._open(name))

    async def _open(self, name: str) -> BackendConnection:
        assert self._opener is not None
        # Shielded: an upstream session the backend opened must reach the record (or be
        # ended) even if the client cancels the request that needed it; the opener is
        # bounded by the backend's connect timeout and the store's deadlines.
        with anyio.CancelScope(shield=True):
            connection = await self._opener(name)
            if self._ledger is not None:
                self._ledger.record_opened(name)
            if self._closed or name not in self._names:
                await self.close(name, connection, self._end_upstream)
                raise SessionClosed(self._session_id)
            self.connections[name] = connection
        if self.on_opened is not None:
            await self.on_opened(name, connection)
        return connection

    def add(self, names: Sequence[str]) -> None:
        """More backends the session may use (a reload, a recovery)."""
        self._names.update(names)

    def remove(self, names: Sequence[str]) -> dict[str, BackendConnection]:
        """Backends the session may no longer use; returns the connections to close."""
        self._names.difference_update(names)
        return {name: self.connections.pop(name) for name in names if name in self.connections}

    async def aclose(self, *, end_upstream: bool) -> None:
        """Close every connection (ending its upstream session if ``end_upstream``); an
        opening still under way closes its connection the same way when it lands."""
        self._closed = True
        self._end_upstream = end_upstream
        closing = dict(self.connections)
        self.connections.clear()
        async with anyio.create_task_group() as tg:
            for name, connection in closing.items():
                tg.start_soon(self.close, name, connection, end_upstream)

    async def close(self, name: str, connection: BackendConnection,
                    end_upstream: bool = True) -> None:
        """Close one connection (logged, never raised), ending its upstream session if
        ``end_upstream``."""
        try:
            await connection.aclose(end_session=end_upstream)
        except Exception:
            logger.warning("closing backend %s failed", name, exc_info=True,
                           extra={"session_id": self._session_id, "backend": name})
        finally:
            if self._ledger is not None:
                self._ledger.record_ended(name)
