"""A live session's routing table, and keeping it in line with its backends' catalogs."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import anyio

from vmcp.aggregate import BackendCatalog, RoutingTable
from vmcp.backend import BackendConnection
from vmcp.errors import BackendError, SessionClosed

logger = logging.getLogger(__name__)

REFRESH_INTERVAL = 5.0
"""A session re-lists all its backends at most this often (see ``refresh_all``)."""

Rebuild = Callable[[Mapping[str, BackendCatalog]], RoutingTable]
Discover = Callable[[str, BackendConnection], Awaitable[BackendCatalog]]
ConnectionOf = Callable[[str], Awaitable[BackendConnection | None]]
"""The session's connection to a backend for re-listing it (None: there is none)."""


class SessionRoutes:
    """Each backend's catalog, and the routing table built over them."""

    def __init__(self, session_id: str, catalogs: Mapping[str, BackendCatalog], *,
                 rebuild: Rebuild, discover: Discover, connection_of: ConnectionOf) -> None:
        self._session_id = session_id
        self._catalogs = dict(catalogs)
        self._rebuild = rebuild
        self._discover = discover
        self._connection_of = connection_of
        self.table = rebuild(self._catalogs)
        self._last_full_refresh = -REFRESH_INTERVAL

    async def refresh_all(self, names: Sequence[str]) -> None:
        """Re-discover the backends ``names``: a name the routing table lacks may be new
        (its ``list_changed`` went to another replica, or to no listener at all).

        At most once per ``REFRESH_INTERVAL`` per session, so that calls naming unknown
        tools cannot turn into a stream of listings sent to every backend.
        """
        now = time.monotonic()
        if now - self._last_full_refresh < REFRESH_INTERVAL:
            return
        self._last_full_refresh = now
        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(self.refresh, name)

    async def refresh(self, name: str) -> None:
        """Re-discover one backend's catalog (after its ``list_changed``) and re-route."""
        connection = await self._connection_of(name)
        if connection is None:
            return
        try:
            self._catalogs[name] = await self._discover(name, connection)
        except SessionClosed:
            return  # the session is closing: there is nothing left to route
        except BackendError as exc:
            logger.warning("re-discovering backend %s failed, keeping its old catalog: %s",
                           name, exc, extra={"session_id": self._session_id, "backend": name})
            return
        self.table = self._rebuild(self._catalogs)

    def catalog(self, name: str) -> BackendCatalog | None:
        return self._catalogs.get(name)

    def update(self, catalogs: Mapping[str, BackendCatalog],
               removed: Sequence[str] = ()) -> None:
        """Take in these backends' catalogs, forget the ``removed`` ones, re-route."""
        for name in removed:
            self._catalogs.pop(name, None)
        self._catalogs.update(catalogs)
        self.table = self._rebuild(self._catalogs)
